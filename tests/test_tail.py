"""The classifier tail: found where the network's spatial part ends, and run for the positions of all
chunks and blocks together without changing any score."""

from __future__ import annotations

import gc
import io
import warnings

import onnx
import torch
from torch import fx, nn

from conftest import assert_close_to, assert_matches_naive, seeded

import hyinf
from hyinf.explain import compile_engine
from hyinf.graph.geometry import OcclusionGrid, position_blocks
from hyinf.graph.onnx_frontend import load_onnx
from hyinf.graph.torch_frontend import trace_torch
from hyinf.planner.plan import Plan
from hyinf.runtime import tail as tail_module
from hyinf.runtime.engine import BlockedEngine, CleanImage, Repr
from hyinf.runtime.naive import naive_chunks
from hyinf.runtime.occlusion import patch_fill
from hyinf.runtime.ort_backend import OrtEngine
from hyinf.runtime.tail import cell_major, graph_tail


def vgg_like() -> nn.Module:
    seeded(3)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 8 * 8, 32), nn.ReLU(), nn.Dropout(), nn.Linear(32, 5),
    ).eval()


class TwoStageHead(nn.Module):
    """Pooled features of two stages concatenated before the classifier: the tail starts after the concatenation."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.fc1, self.fc2 = nn.Linear(10, 16), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.a(x))
        b = torch.relu(self.b(a))
        features = torch.cat([a.mean((2, 3)), b.mean((2, 3))], 1)
        return self.fc2(torch.relu(self.fc1(features)))


def test_tail_is_the_classifier_after_the_last_spatial_value() -> None:
    graph = trace_torch(vgg_like(), (1, 3, 32, 32)).graph
    tail = graph_tail(graph)
    assert tail is not None
    assert graph[tail.cut].spatial is None and graph[tail.cut].shape == (1, 512)  # the flattened maps
    assert [n.name for n in tail.nodes] == [n.name for n in graph.nodes[-4:]]
    assert tail.bytes_per_position == 4 * (512 + 32 + 32 + 32 + 5)


def test_tail_starts_after_values_read_from_earlier_stages() -> None:
    seeded(4)
    graph = trace_torch(TwoStageHead().eval(), (1, 3, 20, 20)).graph
    tail = graph_tail(graph)
    assert tail is not None and graph[tail.cut].shape == (1, 10)
    assert len(tail.nodes) == 3  # fc1, relu, fc2: the concatenation reads the first stage, so it is the cut


def test_no_tail_when_the_output_has_spatial_axes() -> None:
    seeded(5)
    fully_convolutional = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    graph = trace_torch(fully_convolutional, (1, 3, 16, 16)).graph
    assert graph_tail(graph) is None


def outputs_by_position(chunks) -> dict[int, torch.Tensor]:
    return {int(p): out for _, positions, outputs in chunks for p, out in zip(positions, outputs)}


def test_tail_batches_across_blocks_and_chunks_equal_naive() -> None:
    model, image = vgg_like(), torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    program = trace_torch(model, (1, 3, 32, 32))
    grid = OcclusionGrid.make((32, 32), 6, 2)
    engine = compile_engine(program, grid, "incremental")
    assert engine.tail is not None and len(engine.engines) > 1, "the test needs several blocks sharing the tail"
    fill = patch_fill(0.0, 3, image.device, image.dtype)
    only = torch.rand(len(grid), generator=torch.Generator().manual_seed(1)) < 0.4  # as drill-down asks
    for batch_size, chosen in ((1, None), (3, only), (64, None), (5, only)):  # tails of many chunks of every block, or one
        with torch.no_grad():
            expected = outputs_by_position(naive_chunks(model, image, grid, fill, 7, chosen))
        got = outputs_by_position(engine.chunks(CleanImage(program, image), fill, batch_size, chosen))
        assert got.keys() == expected.keys()
        assert_close_to(torch.stack([expected[p] for p in sorted(expected)]), torch.stack([got[p] for p in sorted(expected)]), f"batch {batch_size}")
    assert_matches_naive(model, image[0], patch=6, stride=2, batch_size=3, plans=2)


def test_two_stage_head_equals_naive() -> None:
    seeded(7)
    assert_matches_naive(TwoStageHead().eval(), torch.randn(3, 20, 20, generator=torch.Generator().manual_seed(7)), patch=5, stride=3, batch_size=4, plans=2)


def test_ort_backend_runs_the_tail_as_its_own_session() -> None:
    model, image = vgg_like(), torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(8))
    reference = hyinf.explain(model, image, patch=6, stride=2, mode="naive")
    for batch_size in (3, 64):  # tail batches of many runs, or of one
        result = hyinf.explain(model, image, patch=6, stride=2, mode="incremental", backend="ort", batch_size=batch_size)
        assert_close_to(reference.scores, result.scores, f"ort, batch {batch_size}")


def test_linear_layers_record_their_weights_from_every_frontend() -> None:
    model = vgg_like()
    recorded = list(trace_torch(model, (1, 3, 32, 32)).linear.values())  # the program's copies of the weights
    assert [(tuple(w.shape), tuple(b.shape)) for w, b in recorded] == [((32, 512), (32,)), ((5, 32), (5,))]
    assert all(torch.equal(w, model[i].weight) and torch.equal(b, model[i].bias) for (w, b), i in zip(recorded, (7, 10)))

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.w, self.b = nn.Conv2d(3, 4, 3), nn.Parameter(torch.randn(5, 4 * 14 * 14)), nn.Parameter(torch.randn(5))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.linear(torch.flatten(self.conv(x), 1), self.w, self.b)

    seeded(9)
    functional = Functional().eval()
    weights = list(trace_torch(functional, (1, 3, 16, 16)).linear.values())
    assert len(weights) == 1 and torch.equal(weights[0][0], functional.w) and torch.equal(weights[0][1], functional.b)

    class Squared(nn.Linear):  # kept whole (a leaf) by a custom tracer: not a linear map, so not taken for one
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) ** 2

    class Leaves(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, name: str) -> bool:
            return isinstance(m, Squared) or super().is_leaf_module(m, name)

    squared = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), Squared(2 * 14 * 14, 3)).eval()
    traced = fx.GraphModule(squared, Leaves().trace(squared))
    program = trace_torch(traced, (1, 3, 16, 16))
    assert any(n.label.endswith("(Squared)") for n in program.graph.nodes) and program.linear == {}


def test_first_linear_layer_from_the_changed_windows_equals_naive() -> None:
    """vgg16's 25088x4096 layer under a threshold reads 4x4 of pool5's 7x7: the windowed layer must give
    the dense layer's outputs, across images, blocks whose source maps are windows or whole maps, and
    batches that mix them."""
    model = vgg_like()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(10))
    program = trace_torch(model, (1, 3, 32, 32))
    grid = OcclusionGrid.make((32, 32), 6, 2)
    source = program.graph.nodes[6].name  # the second max pooling, 8x8, flattened into the first linear layer
    blocks = position_blocks(program.graph, grid)
    smallest = min(range(len(blocks)), key=lambda k: len(blocks[k]))
    mixed = [(block, Plan.uniform("full" if k == smallest else "incremental")) for k, block in enumerate(blocks)]
    fill = patch_fill(0.0, 3, images.device, images.dtype)
    only = torch.rand(len(grid), generator=torch.Generator().manual_seed(2)) < 0.5
    for plans in (mixed, [(block, Plan.uniform("incremental")) for block in blocks]):
        engine = BlockedEngine(program, grid, plans)
        assert engine.windowed is not None and engine.windowed.source == source
        assert {e.repr[source] for e in engine.engines} == ({Repr.WIN, Repr.FULL} if plans is mixed else {Repr.WIN})
        for batch_size, chosen in ((1, None), (4, only), (64, None)):
            expected = {}
            for k in range(len(images)):
                with torch.no_grad():
                    expected |= {(k, p): out for p, out in outputs_by_position(naive_chunks(model, images[k : k + 1], grid, fill, 9, chosen)).items()}
            got = {(int(k), int(p)): out for ks, ps, outs in engine.chunks(CleanImage(program, images), fill, batch_size, chosen) for k, p, out in zip(ks, ps, outs)}
            assert got.keys() == expected.keys()
            assert_close_to(torch.stack([expected[key] for key in sorted(expected)]), torch.stack([got[key] for key in sorted(expected)]), f"batch {batch_size}")


def test_windowed_first_layer_on_ort_equals_naive() -> None:
    """The ORT backend's runs give the changed cells and the windowed layer runs on them, then the
    tail session: the same outputs as naive, in blocks whose source maps are windows or whole maps."""
    model = vgg_like()
    image = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(13))
    program = trace_torch(model, (1, 3, 32, 32))
    grid = OcclusionGrid.make((32, 32), 6, 2)
    blocks = position_blocks(program.graph, grid)
    smallest = min(range(len(blocks)), key=lambda k: len(blocks[k]))
    mixed = [(block, Plan.uniform("full" if k == smallest else "incremental")) for k, block in enumerate(blocks)]
    engine = OrtEngine(BlockedEngine(program, grid, mixed))
    assert engine.blocked.windowed is not None
    fill = patch_fill(0.0, 3, image.device, image.dtype)
    only = torch.rand(len(grid), generator=torch.Generator().manual_seed(3)) < 0.5
    for batch_size, chosen in ((4, only), (64, None)):
        with torch.no_grad():
            expected = outputs_by_position(naive_chunks(model, image, grid, fill, 9, chosen))
        got = {int(p): out for _, ps, outs in engine.chunks(CleanImage(program, image), fill, batch_size, chosen) for p, out in zip(ps, outs)}
        assert got.keys() == expected.keys()
        assert_close_to(torch.stack([expected[p] for p in sorted(expected)]), torch.stack([got[p] for p in sorted(expected)]), f"batch {batch_size}")


def test_dense_first_layer_where_windows_would_not_save_work() -> None:
    program = trace_torch(vgg_like(), (1, 3, 32, 32))
    assert compile_engine(program, OcclusionGrid.make((32, 32), 6, 2), "full").windowed is None  # whole maps everywhere
    assert compile_engine(program, OcclusionGrid.make((32, 32), 26, 2), "incremental").windowed is None  # windows of most of the map


def test_cell_major_weights_go_with_the_weights() -> None:
    weight = torch.randn(6, 4 * 9, generator=torch.Generator().manual_seed(11))
    blocks = cell_major(weight, 9)
    assert torch.equal(blocks[4], weight.view(6, 4, 9)[:, :, 4])  # cell 4's (out, C) block
    assert cell_major(weight, 9) is blocks  # kept
    weight.mul_(2)  # modified in place: a new copy
    assert torch.equal(cell_major(weight, 9)[4], weight.view(6, 4, 9)[:, :, 4])
    held = len(tail_module._CELL_MAJOR.entries)
    del weight, blocks
    gc.collect()
    assert len(tail_module._CELL_MAJOR.entries) < held  # dropped with the weights, not held until evicted


def test_imported_onnx_classifiers_get_the_windowed_layer_too() -> None:
    model, image = vgg_like(), torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(12))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (image[None],), buffer, dynamo=False, opset_version=13)
    proto = onnx.load_model_from_string(buffer.getvalue())  # Gemm nodes with initializer weights
    imported = load_onnx(proto)
    program = trace_torch(imported.module, imported.input_shape)
    assert compile_engine(program, OcclusionGrid.make((32, 32), 6, 2), "incremental").windowed is not None
    reference = hyinf.explain(model, image, patch=6, stride=2, mode="naive")
    for backend in ("torch", "ort"):
        result = hyinf.explain(proto, image, patch=6, stride=2, mode="incremental", backend=backend)
        assert_close_to(reference.scores, result.scores, f"onnx, windowed layer, {backend}")
