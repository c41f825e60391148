"""The ONNX Runtime backend: every plan it runs equals naive re-inference (torch and ORT) and the
torch backend, to 1e-4 of the score scale."""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from torch import nn

import hyinf
from conftest import assert_close_to, random_plan, seeded
from random_cnn import random_cnns
from test_onnx import PATCH, STRIDE, _export, opset9_graph, ort_scores, shuffle_graph
from hyinf import drilldown
from hyinf.cli import main
from hyinf.errors import PlanWarning
from hyinf.runtime import ort_backend
from hyinf.runtime.ort_backend import RUN_CHUNKS, run_sizes


def assert_ort_matches(model: nn.Module, image: torch.Tensor, *, plans: int = 1, **kw) -> None:
    """Naive, full, incremental, hybrid and random plans on ORT equal naive torch and the torch backend."""
    reference = hyinf.explain(model, image, mode="naive", **kw)
    assert float(reference.heatmap.abs().max()) > 0, "the patch never changes the output"
    for mode in ("naive", "full", "incremental", "hybrid"):
        on_ort = hyinf.explain(model, image, mode=mode, backend="ort", **kw)
        assert_close_to(reference.scores, on_ort.scores, f"ort {mode}")
        if mode != "naive":
            assert_close_to(hyinf.explain(model, image, mode=mode, **kw).scores, on_ort.scores, f"ort vs torch {mode}")
    for seed in range(plans):
        plan = random_plan(model, (1, *image.shape[-3:]), seed)
        assert_close_to(reference.scores, hyinf.explain(model, image, plan=plan, backend="ort", **kw).scores, f"ort random plan {seed}")


@pytest.mark.parametrize(("name", "size"), [("resnet18", 48), ("mobilenet_v3_small", 48), ("squeezenet1_1", 48), ("efficientnet_b0", 32),
                                             pytest.param("densenet121", 32, marks=pytest.mark.slow)])  # 26 s; concatenations: squeezenet
def test_torchvision_families(name: str, size: int) -> None:
    seeded()
    model = getattr(torchvision.models, name)(weights=None).eval()
    assert_ort_matches(model, torch.rand(3, size, size), patch=8, stride=8, plans=1)


def test_what_the_torchscript_exporter_lacks_goes_through_torch_export() -> None:
    """Adaptive pooling that upsamples 1x1 maps to 7x7 (vgg's head at 32 px), which only torch.export lowers."""
    seeded()
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(8), nn.Conv2d(8, 8, 3, padding=1), nn.MaxPool2d(4),
                          nn.AdaptiveAvgPool2d(7), nn.Flatten(), nn.Linear(8 * 49, 10)).eval()
    image = torch.rand(3, 32, 32)
    reference = hyinf.explain(model, image, patch=8, stride=8, mode="naive")
    on_ort = hyinf.explain(model, image, patch=8, stride=8, mode="incremental", backend="ort")
    assert_close_to(reference.scores, on_ort.scores, "adaptive pooling upsampling")


@pytest.mark.parametrize(("name", "dynamo", "dynamic_batch"), [("resnet18", False, True), ("mobilenet_v3_small", True, False)])
def test_exported_models_match_ort_reinference(name: str, dynamo: bool, dynamic_batch: bool) -> None:
    seeded()
    proto = _export(getattr(torchvision.models, name)(weights=None).eval(), 32, dynamo, dynamic_batch)
    image = torch.randn(3, 32, 32)
    first = hyinf.explain(proto, image, patch=PATCH, stride=STRIDE, mode="naive", backend="ort")
    reference = ort_scores(proto, image, first.target)
    assert_close_to(reference, first.scores, f"{name} naive on ort")
    for mode in ("incremental", "hybrid"):
        result = hyinf.explain(proto, image, patch=PATCH, stride=STRIDE, target=first.target, mode=mode, backend="ort")
        assert_close_to(reference, result.scores, f"{name} {mode} on ort")


@pytest.mark.parametrize("make", [opset9_graph, shuffle_graph], ids=["opset9", "shuffle"])
def test_hand_built_graphs(make) -> None:
    """opset9_graph holds an operator hyinf has no torch form for: ORT must run it, not a traced constant."""
    seeded()
    proto, image = make(), torch.rand(3, 16, 16)
    target = hyinf.explain(proto, image, patch=PATCH, stride=STRIDE, mode="naive").target
    reference = ort_scores(proto, image, target)
    for mode in ("naive", "full", "incremental", "hybrid"):
        result = hyinf.explain(proto, image, patch=PATCH, stride=STRIDE, target=target, mode=mode, backend="ort")
        assert_close_to(reference, result.scores, f"{make.__name__} {mode} on ort")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(random_cnns())
def test_random_cnns(case) -> None:
    model, image, patch, stride = case
    reference = hyinf.explain(model, image, patch=patch, stride=stride, mode="naive")
    plan = random_plan(model, (1, *image.shape), seed=int(image.abs().sum() * 1000) % 97)
    for kw in ({"mode": "incremental"}, {"plan": plan}):
        result = hyinf.explain(model, image, patch=patch, stride=stride, backend="ort", batch_size=5, **kw)
        assert_close_to(reference.scores, result.scores, f"ort {kw}")


@pytest.mark.parametrize("ratio", [0.0, float("inf")], ids=["gather-and-scatter", "merged"])
def test_both_paste_lowerings(ratio: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pastes lower to a gather and a scatter, or to one gather from the source and windows together."""
    monkeypatch.setattr(ort_backend, "MERGE_SOURCE_RATIO", ratio)
    seeded()
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    image = torch.rand(3, 48, 48)
    reference = hyinf.explain(model, image, patch=8, stride=8, mode="naive")  # each call lowers its own sessions
    assert_close_to(reference.scores, hyinf.explain(model, image, patch=8, stride=8, mode="incremental", backend="ort").scores, f"ratio {ratio}")


def test_ceil_mode_pooling_whose_last_window_torch_drops() -> None:
    """MaxPool2d(1, 2, ceil_mode=True) on 6 columns: torch drops the window that would start in the
    padding (3 outputs), ONNX's shape inference keeps it (4); exported as is, ORT failed on it."""
    seeded()
    model = nn.Sequential(nn.MaxPool2d(1, 2, ceil_mode=True), nn.Conv2d(3, 3, 3, padding="same"), nn.ReLU(),
                          nn.AvgPool2d(2, 2, ceil_mode=True), nn.Flatten(), nn.Linear(12, 5)).eval()
    image = torch.randn(3, 6, 6)
    reference = hyinf.explain(model, image, patch=1, stride=1, mode="naive")
    for plan in (None, random_plan(model, (1, 3, 6, 6), seed=0)):
        result = hyinf.explain(model, image, patch=1, stride=1, mode="full" if plan is None else "hybrid", plan=plan, backend="ort")
        assert_close_to(reference.scores, result.scores, f"ceil_mode pooling, plan {plan is not None}")


def test_sessions_are_reused_until_the_weights_change() -> None:
    seeded()
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    image = torch.rand(3, 32, 32)
    explainer = hyinf.Explainer(model, patch=8, stride=8, mode="incremental", backend="ort")
    first = explainer.explain(image)
    engines = {id(e) for _, e in explainer._ort.kept.entries.values()}
    again = explainer.explain(torch.rand(3, 32, 32))
    assert {id(e) for _, e in explainer._ort.kept.entries.values()} == engines  # found, not rebuilt
    assert not torch.equal(first.scores, again.scores)
    with torch.no_grad():
        model.fc.weight.mul_(-2.0)  # an in-place update, as a training step makes
    changed = explainer.explain(image)
    assert {id(e) for _, e in explainer._ort.kept.entries.values()} != engines
    assert_close_to(hyinf.explain(model, image, patch=8, stride=8, mode="naive").scores, changed.scores, "after the weights changed")


def test_index_values_are_computed_once_per_run_and_reused() -> None:
    """The chunk graph's position part runs once per run of the grid; later images reuse its values,
    and drill-down subsets (other positions per run) compute their own."""
    seeded()
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    explainer = hyinf.Explainer(model, patch=8, stride=4, mode="incremental", backend="ort", batch_size=16, drill_down=0.3,
                                coarse_stride=8)
    exact = explainer._exact()  # shares the drill-down's engines, as its fine pass uses them
    images = [torch.rand(3, 48, 48) for _ in range(2)]
    for image in images:
        reference = hyinf.explain(model, image, patch=8, stride=4, mode="naive")
        assert_close_to(reference.scores, exact.explain(image).scores, "ort with kept index values")
    (engine,) = [e for _, e in explainer._ort.kept.entries.values() if e.blocked.grid.shape == (11, 11)]
    (session,) = engine.sessions.values()
    assert session.positions is not None and len(session.kept) > 1  # several runs, each computed once
    kept = {run: dict(values) for run, values in session.kept.items()}
    drilled = explainer.explain(images[1])
    assert session.kept.keys() == kept.keys() and all(session.kept[r][k] is v for r in kept for k, v in kept[r].items())  # subsets are not kept
    fine = hyinf.explain(model, images[1], patch=8, stride=4, mode="naive")
    coarse = hyinf.explain(model, images[1], patch=8, stride=8, mode="naive")
    chosen = torch.as_tensor(drilldown.selected(coarse.heatmap, fine.grid, coarse.grid, 0.3)).reshape(fine.grid.shape)
    assert 0 < int(chosen.sum()) < chosen.numel()
    assert_close_to(fine.scores[chosen], drilled.scores[chosen], "ort drilled positions")


def test_a_torch_plan_runs_on_ort_with_a_warning(tmp_path) -> None:
    seeded()
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    image = torch.rand(3, 32, 32)
    from hyinf.graph.geometry import OcclusionGrid
    from hyinf.graph.torch_frontend import trace_torch
    from hyinf.planner.select import make_plan
    from hyinf.profiler.machine import fingerprint

    graph = trace_torch(model, (1, 3, 32, 32)).graph
    document = make_plan(graph, OcclusionGrid.make((32, 32), 8, 8), fingerprint(torch.device("cpu")), model_name="r", db=None)
    with pytest.warns(PlanWarning, match="backend torch"):
        result = hyinf.explain(model, image, patch=8, stride=8, plan=document, backend="ort")
    assert_close_to(hyinf.explain(model, image, patch=8, stride=8, mode="naive").scores, result.scores, "torch plan on ort")


def test_run_sizes_cover_every_block_within_the_budget() -> None:
    for blocks, chunk in [([729], 64), ([100, 170, 170, 289], 64), ([1, 25, 1, 25, 625, 25, 1, 25, 1], 64), ([3], 64), ([5, 7], 1)]:
        runs, sizes = run_sizes(blocks, chunk)
        assert all(runs * s >= p for s, p in zip(sizes, blocks))
        assert sum(sizes) <= max(chunk * min(len(blocks), RUN_CHUNKS), len(blocks))
    assert run_sizes([729], 64) == (12, [61])
    assert run_sizes([81] * 9, 64) == (4, [21] * 9)  # 9 blocks: three chunks' worth of positions per run



def test_cli_explain_on_ort(tmp_path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = CliRunner().invoke(main, ["explain", "demo", "--backend", "ort", "--quiet", "--out", str(tmp_path / "o")])
    assert out.exit_code == 0, out.output
    reference = CliRunner().invoke(main, ["explain", "demo", "--mode", "naive", "--quiet", "--out", str(tmp_path / "n")])
    assert reference.exit_code == 0, reference.output
    import numpy as np

    a, b = np.load(tmp_path / "o" / "heatmap.npy"), np.load(tmp_path / "n" / "heatmap.npy")
    assert np.abs(a - b).max() <= 1e-4 * max(np.abs(b).max(), 1e-6)
    bad = CliRunner().invoke(main, ["explain", "demo", "--backend", "ort", "--device", "cuda", "--quiet", "--out", str(tmp_path / "c")])
    assert bad.exit_code != 0 and "Traceback" not in bad.output and len(bad.output.strip().splitlines()) == 1
