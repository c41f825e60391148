"""Exact or refused: models whose meaning hyinf's graph could miss are computed right or refused with
their real cause, and every import is checked on the real image against the model's own runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import hyinf
from conftest import assert_close_to, assert_matches_naive
from hyinf.errors import ModelError

PATCH, STRIDE = 4, 4


class ClampsItsInput(nn.Module):
    """Clamps the (normalised) image in place before reading it: the clamp matters only outside [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.head = nn.Conv2d(3, 4, 3), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.clamp_(-1, 1)
        y = self.conv(x)
        y.relu_()
        y += 0.5
        return self.head(y.mean((2, 3)))


def test_an_in_place_clamp_of_the_input_is_computed_as_eager_pytorch_does() -> None:
    image = (
        torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(1)) * 3
    )  # most pixels outside [-1, 1]
    before = image.clone()
    reference = assert_matches_naive(ClampsItsInput(), image, plans=2, patch=PATCH, stride=STRIDE)
    assert torch.equal(image, before), "the caller's image was written into"
    with torch.no_grad():
        eager = ClampsItsInput()(image.clone()[None])[0, reference.target]
    assert abs(float(eager) - reference.base_score) < 1e-5


class WritesIntoAView(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y[:, :2].mul_(2.0)  # seen through y
        return y.mean((2, 3))


class AssignsIntoPart(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x[:, 0] = 0.0
        return x.mean((2, 3))


class ChangesItsWeights(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("seen", torch.zeros(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.add_(1.0)
        return x.mean((2, 3)) + self.seen


class ChangesItsParameter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.bias.add_(1.0)
        return x.mean((2, 3)) + self.bias


class Random(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3)) + torch.rand(1, 3)


class NaNWeights(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 2)
        with torch.no_grad():
            self.head.weight[0, 0] = float("nan")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean((2, 3)))


class DiffersWhenTraced(nn.Module):
    """Computes something else under torch.fx: the check on the real image must catch it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = 0.5 if torch.fx._symbolic_trace.is_fx_tracing() else 1.0
        return x.mean((2, 3)) * scale


class MixesTheBatch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3)) - x.mean((0, 2, 3))


@pytest.mark.parametrize(
    ("model", "words"),
    [
        (WritesIntoAView(), "shares memory"),
        (AssignsIntoPart(), "assigns into part of a tensor"),
        (ChangesItsWeights(), "state it changes on every call"),
        (ChangesItsParameter(), "changes its own weights"),  # fx runs the buffer's add_ while tracing
        (Random(), "different outputs for the same image"),
        (NaNWeights(), "NaN or infinite"),
        (DiffersWhenTraced(), "differs from the model run eagerly"),
    ],
)
@pytest.mark.parametrize("mode", ["hybrid", "incremental", "full"])
def test_models_hyinf_cannot_reproduce_are_refused_with_their_cause(model, words, mode) -> None:
    with pytest.raises(ModelError, match=words):
        hyinf.explain(model, torch.rand(3, 16, 16), patch=PATCH, stride=STRIDE, mode=mode)


@pytest.mark.parametrize("mode", ["naive", "hybrid"])
def test_a_model_that_mixes_the_batch_is_refused(mode) -> None:
    with pytest.raises(ModelError, match="mixes the images of a batch"):
        hyinf.explain(MixesTheBatch(), torch.rand(3, 16, 16), patch=PATCH, stride=STRIDE, mode=mode)


def test_a_model_returning_a_tuple_is_refused_in_naive_mode() -> None:
    class Pair(nn.Module):
        def forward(self, x):
            return x.mean((2, 3)), x.amax((2, 3))

    with pytest.raises(ModelError, match="returns tuple"):
        hyinf.explain(Pair(), torch.rand(3, 16, 16), patch=PATCH, stride=STRIDE, mode="naive")


# ---- ONNX ----------------------------------------------------------------------------------------


def _conv_relu(
    opset: int,
    tail: list[onnx.NodeProto],
    out_shape: list[int],
    input_type: int = TensorProto.FLOAT,
    head: list[onnx.NodeProto] | None = None,
    first: str = "x",
) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "W")
    nodes = [
        *(head or []),
        helper.make_node("Conv", [first, "W"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        *tail,
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", input_type, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        [weights],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _ort(proto: onnx.ModelProto, image: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": image})[0]


def _ort_scores(proto: onnx.ModelProto, image: np.ndarray, target: int, fill: float = 0.0) -> torch.Tensor:
    scores = []
    for top in range(0, 13, STRIDE):
        for left in range(0, 13, STRIDE):
            occluded = image.copy()
            occluded[..., top : top + PATCH, left : left + PATCH] = fill
            scores.append(float(_ort(proto, occluded).reshape(-1)[target]))
    return torch.tensor(scores).reshape(4, 4)


OLD_OPSETS = {
    # before opset 13, Softmax flattens everything from axis 1 on: one distribution over the whole map
    "softmax-11": (
        11,
        [
            helper.make_node("Softmax", ["r"], ["s"]),
            helper.make_node("ReduceSum", ["s"], ["y"], axes=[2, 3], keepdims=0),
        ],
    ),
    "log-softmax-12": (
        12,
        [
            helper.make_node("LogSoftmax", ["r"], ["s"]),
            helper.make_node("ReduceMean", ["s"], ["y"], axes=[2, 3], keepdims=0),
        ],
    ),
    # axes as attributes (opset 9), which the reference fallback once read with opset-13 meaning and crashed on
    "unsqueeze-9": (
        9,
        [
            helper.make_node("Unsqueeze", ["r"], ["u"], axes=[1]),
            helper.make_node("ReduceMean", ["u"], ["m"], axes=[3, 4], keepdims=0),
            helper.make_node("Squeeze", ["m"], ["y"], axes=[1]),
        ],
    ),
    "clip-pad-10": (
        10,
        [
            helper.make_node("Pad", ["r"], ["p"], pads=[0, 0, 1, 1, 0, 0, 1, 1], value=0.25),
            helper.make_node("Clip", ["p"], ["cl"], min=0.1, max=0.9),
            helper.make_node("GlobalAveragePool", ["cl"], ["g"]),
            helper.make_node("Flatten", ["g"], ["y"]),
        ],
    ),
}


@pytest.mark.parametrize("case", list(OLD_OPSETS))
@pytest.mark.parametrize("mode", ["naive", "hybrid"])
def test_older_opsets_keep_their_meaning(case, mode) -> None:
    opset, tail = OLD_OPSETS[case]
    proto = _conv_relu(opset, tail, [1, 4])
    onnx.checker.check_model(proto)
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(2))
    expected = _ort_scores(proto, image[None].numpy(), 1)
    result = hyinf.explain(proto, image, patch=PATCH, stride=STRIDE, target=1, mode=mode)
    assert_close_to(expected, result.scores, f"{case} {mode}")


def test_a_uint8_input_is_fed_pixels_0_to_255(tmp_path) -> None:
    head = [
        helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["xf", "mid"], ["centred"]),
    ]
    tail = [helper.make_node("GlobalAveragePool", ["r"], ["g"]), helper.make_node("Flatten", ["g"], ["y"])]
    proto = _conv_relu(13, tail, [1, 4], TensorProto.UINT8, head, first="centred")
    proto.graph.initializer.append(numpy_helper.from_array(np.array(127.5, dtype=np.float32), "mid"))
    onnx.checker.check_model(proto)
    path = tmp_path / "uint8.onnx"
    path.write_bytes(proto.SerializeToString())
    from hyinf.models import load_model

    loaded = load_model(str(path))
    pixels = torch.from_numpy(np.random.default_rng(3).integers(0, 256, (3, 16, 16)).astype(np.float32) / 255)
    image = loaded.normalise(pixels)
    torch.testing.assert_close(image, pixels * 255)
    expected = _ort_scores(proto, np.round(image.numpy()[None]).astype(np.uint8), 2)
    result = hyinf.explain(str(path), image, patch=PATCH, stride=STRIDE, target=2)
    assert_close_to(expected, result.scores, "uint8 input")


def test_a_uint8_input_read_without_a_cast_is_refused() -> None:
    proto = _conv_relu(
        13,
        [helper.make_node("GlobalAveragePool", ["r"], ["g"]), helper.make_node("Flatten", ["g"], ["y"])],
        [1, 4],
        TensorProto.UINT8,
        [helper.make_node("Identity", ["x"], ["xi"])],
        first="xi",
    )
    with pytest.raises(ModelError, match="uint8 input 'x' is read by Identity"):
        hyinf.explain(proto, torch.rand(3, 16, 16), patch=PATCH, stride=STRIDE)


def test_a_custom_domain_operator_is_refused_in_one_line() -> None:
    proto = _conv_relu(
        13,
        [
            helper.make_node("Wobble", ["r"], ["w"], domain="org.example"),
            helper.make_node("GlobalAveragePool", ["w"], ["g"]),
            helper.make_node("Flatten", ["g"], ["y"]),
        ],
        [1, 4],
    )
    proto.opset_import.append(helper.make_opsetid("org.example", 1))
    with pytest.raises(
        ModelError, match=r"operator org.example.Wobble \(node 'w'\) is one hyinf, ONNX's reference"
    ):
        hyinf.explain(proto, torch.rand(3, 16, 16), patch=PATCH, stride=STRIDE)


def test_an_operator_only_onnx_runtime_knows_runs_there() -> None:
    """com.microsoft.Gelu has no torch form and no reference implementation: ONNX Runtime runs the node."""
    proto = _conv_relu(
        13,
        [
            helper.make_node("Gelu", ["r"], ["w"], domain="com.microsoft"),
            helper.make_node("GlobalAveragePool", ["w"], ["g"]),
            helper.make_node("Flatten", ["g"], ["y"]),
        ],
        [1, 4],
    )
    proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(4))
    expected = _ort_scores(proto, image[None].numpy(), 0)
    for mode in ("naive", "hybrid"):
        assert_close_to(
            expected,
            hyinf.explain(proto, image, patch=PATCH, stride=STRIDE, target=0, mode=mode).scores,
            mode,
        )


def test_nhwc_input_is_refused() -> None:
    proto = _conv_relu(
        13,
        [helper.make_node("GlobalAveragePool", ["r"], ["g"]), helper.make_node("Flatten", ["g"], ["y"])],
        [1, 4],
    )
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    for dim, size in zip(dims, (1, 16, 16, 3)):
        dim.dim_value = size
    with pytest.raises(ModelError, match="channels last"):
        hyinf.explain(proto, torch.rand(3, 16, 16), patch=PATCH, stride=STRIDE)


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/hostname", "link.bin"])
def test_external_data_outside_the_models_folder_is_refused(tmp_path, location) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "outside.bin").write_bytes(np.zeros(108, np.float32).tobytes())
    (folder / "link.bin").symlink_to(tmp_path / "outside.bin")
    proto = _conv_relu(
        13,
        [helper.make_node("GlobalAveragePool", ["r"], ["g"]), helper.make_node("Flatten", ["g"], ["y"])],
        [1, 4],
    )
    weight = proto.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value=location)
    path = folder / "m.onnx"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(ModelError, match="points outside the model's folder"):
        hyinf.explain(str(path), torch.rand(3, 16, 16), patch=PATCH, stride=STRIDE)


def test_external_data_beside_the_model_loads(tmp_path) -> None:
    proto = _conv_relu(
        13,
        [helper.make_node("GlobalAveragePool", ["r"], ["g"]), helper.make_node("Flatten", ["g"], ["y"])],
        [1, 4],
    )
    image = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(5))
    expected = _ort_scores(proto, image[None].numpy(), 3)
    path = tmp_path / "m.onnx"
    onnx.save_model(proto, str(path), save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    assert (tmp_path / "m.onnx.data").exists()
    assert_close_to(
        expected,
        hyinf.explain(str(path), image, patch=PATCH, stride=STRIDE, target=3).scores,
        "external data",
    )


# ---- bounded work --------------------------------------------------------------------------------


def test_an_image_too_large_for_the_machine_is_refused_before_tracing() -> None:
    import time

    import torchvision

    model = torchvision.models.resnet18(weights=None).eval()
    start = time.perf_counter()
    with pytest.raises(
        hyinf.HyinfError,
        match=r"8000x8000 image needs about .* GiB .* GiB free; 998,001 positions.*--max-memory",
    ):
        hyinf.explain(model, torch.zeros(3, 8000, 8000), patch=16, stride=8)
    assert time.perf_counter() - start < 20  # refused from shapes alone: tracing took minutes and 15 GB


def test_an_onnx_import_too_large_for_the_machine_is_refused() -> None:
    proto = _conv_relu(
        13,
        [helper.make_node("GlobalAveragePool", ["r"], ["g"]), helper.make_node("Flatten", ["g"], ["y"])],
        [1, 4],
    )
    for dim in proto.graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.ClearField("dim_value")
        dim.dim_param = "side"
    with pytest.raises(
        hyinf.HyinfError, match=r"importing the ONNX model for 60000x60000 images needs about"
    ):
        from hyinf.graph.onnx_frontend import load_onnx

        load_onnx(proto, (60000, 60000))


# ---- API hygiene ---------------------------------------------------------------------------------


def _small() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


@pytest.mark.parametrize("mode", ["naive", "hybrid"])
def test_the_callers_model_keeps_its_train_mode(mode) -> None:
    model = _small().train()
    hyinf.explain(model, torch.rand(3, 16, 16), patch=PATCH, stride=STRIDE, mode=mode)
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    hyinf.explain(model, torch.rand(3, 16, 16), patch=PATCH, stride=STRIDE, mode=mode)
    assert not model.training


def test_integer_targets_of_every_kind_and_any_float_image() -> None:
    model, image = _small().eval(), torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(6))
    reference = hyinf.explain(model, image, patch=PATCH, stride=STRIDE, target=1)
    for target in (np.int64(1), np.int32(1), torch.tensor(1), torch.tensor([1])):
        assert torch.equal(hyinf.explain(model, image, patch=PATCH, stride=STRIDE, target=target).scores, reference.scores)
    for dtype in (torch.float64, torch.float16):
        result = hyinf.explain(model, image.to(dtype), patch=PATCH, stride=STRIDE, target=1)
        assert_close_to(
            hyinf.explain(model, image.to(dtype).float(), patch=PATCH, stride=STRIDE, target=1).scores,
            result.scores,
            f"{dtype} image",
        )
