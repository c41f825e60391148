"""Approximate OBE: the projective-field threshold and adaptive drill-down.

The threshold's meaning is checked against an independent reference: every node evaluated in full
from its inputs, then (where the engine evaluates it incrementally) set back to the clean value
outside its changed window. Exactness at TAU = 1 and RATIO = 1 is checked against naive re-inference.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torchvision import models

from conftest import assert_close_to, random_plan, seeded
from random_cnn import random_cnns

import hyinf
from hyinf import drilldown
from hyinf.demo import SAMPLE, asset, load_demo, normalise
from hyinf.errors import SettingsError
from hyinf.graph.flops import plan_flops
from hyinf.graph.geometry import Change, OcclusionGrid, changed_regions, position_blocks
from hyinf.graph.torch_frontend import trace_torch
from hyinf.images import load_image
from hyinf.planner.plan import Plan
from hyinf.quality import compare
from hyinf.runtime.engine import Engine, Repr
from hyinf.runtime.occlusion import PatchSpans, patch_fill


def approximate_reference(model: nn.Module, image: torch.Tensor, grid: OcclusionGrid, plan: Plan) -> torch.Tensor:
    """Target-independent model outputs (positions, classes) under the threshold's definition."""
    program = trace_torch(model, (1, *image.shape))
    graph = program.graph
    batch = image[None]
    base: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for node in graph.nodes:
            base[node.name] = program.full[node.name](*(base[k] for k in node.inputs)) if node.inputs else batch
        outputs = torch.empty(len(grid), *base[graph.output].shape[1:])
        for block in position_blocks(graph, grid):
            engine = Engine(program, block, plan)
            idx = torch.arange(len(block))
            i, j = idx // block.shape[1], idx % block.shape[1]
            fill = patch_fill(0.5, image.shape[0], image.device, image.dtype)
            value: dict[str, torch.Tensor] = {}
            for node in graph.nodes:
                rep = engine.repr[node.name]
                if rep is Repr.BASE:
                    value[node.name] = base[node.name].expand(len(block), *base[node.name].shape[1:])
                    continue
                if not node.inputs:
                    v = PatchSpans(block, image.device).occlude(batch, i, j, fill)
                else:
                    v = program.full[node.name](*(value[k] for k in node.inputs))
                if rep is Repr.WIN:  # the engine keeps only the window: the clean value elsewhere
                    r = engine.regions[node.name]
                    rows = torch.arange(node.spatial_size[0])[None] - torch.as_tensor(r.rows.offset)[i][:, None]
                    cols = torch.arange(node.spatial_size[1])[None] - torch.as_tensor(r.cols.offset)[j][:, None]
                    inside = ((rows >= 0) & (rows < r.rows.size))[:, :, None] & ((cols >= 0) & (cols < r.cols.size))[:, None, :]
                    shape = [len(block)] + [1] * (v.dim() - 1)
                    shape[node.spatial[0]], shape[node.spatial[1]] = node.spatial_size
                    v = torch.where(inside.reshape(shape), v, base[node.name])
                value[node.name] = v
            outputs[torch.as_tensor(block.positions())] = value[graph.output]
    return outputs


def _scores_of(outputs: torch.Tensor, target: int, grid: OcclusionGrid) -> torch.Tensor:
    return outputs.reshape(len(outputs), -1)[:, target].reshape(grid.shape)


@pytest.mark.parametrize("name", ["resnet18", "squeezenet1_1", "vgg11"])
@pytest.mark.parametrize("threshold", [0.3, 0.6])
def test_threshold_follows_its_definition_on_torchvision_models(name: str, threshold: float) -> None:
    seeded(0)
    model = getattr(models, name)(weights=None).eval()
    image = torch.randn(3, 64, 64)
    grid = OcclusionGrid.make((64, 64), 12, 8, threshold)
    for plan in (Plan.uniform("incremental"), random_plan(model, (1, 3, 64, 64), seed=3)):
        result = hyinf.explain(model, image, patch=12, stride=8, patch_value=0.5, plan=plan, approx_threshold=threshold)
        expected = _scores_of(approximate_reference(model, image, grid, plan), result.target, grid)
        assert_close_to(expected, result.scores, f"{name} threshold {threshold} {plan.strategy}")
    exact = hyinf.explain(model, image, patch=12, stride=8, patch_value=0.5, mode="naive")
    approx = hyinf.explain(model, image, patch=12, stride=8, patch_value=0.5, mode="incremental", approx_threshold=threshold)
    assert float((approx.scores - exact.scores).abs().max()) > 1e-3 * float(exact.scores.abs().max()), "the threshold cut nothing"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(random_cnns(), st.floats(0.05, 1.0))
def test_threshold_follows_its_definition_on_random_cnns(case, threshold: float) -> None:
    model, image, patch, stride = case
    grid = OcclusionGrid.make(tuple(image.shape[-2:]), patch, stride, threshold)
    plan = random_plan(model, (1, *image.shape), seed=int(threshold * 1000))
    result = hyinf.explain(model, image, patch=patch, stride=stride, patch_value=0.5, plan=plan, approx_threshold=threshold, batch_size=6)
    expected = _scores_of(approximate_reference(model, image, grid, plan), result.target, grid)
    assert_close_to(expected, result.scores, f"threshold {threshold}")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(random_cnns())
def test_smaller_thresholds_give_windows_no_larger(case) -> None:
    """Every node's changed window (and so the incremental work) shrinks or stays as TAU falls,
    respects its cap, and TAU = 1 is the exact geometry."""
    model, image, patch, stride = case
    graph = trace_torch(model, (1, *image.shape)).graph
    size = tuple(image.shape[-2:])
    exact = changed_regions(graph, OcclusionGrid.make(size, patch, stride))
    same = changed_regions(graph, OcclusionGrid.make(size, patch, stride, 1.0))
    every = frozenset(n.name for n in graph.nodes)
    previous, work = exact, plan_flops(graph, exact, every)
    for threshold in (0.8, 0.5, 0.3, 0.1):
        regions = changed_regions(graph, OcclusionGrid.make(size, patch, stride, threshold))
        for node in graph.nodes:
            r, p, e = regions[node.name], previous[node.name], same[node.name]
            assert (e.change, exact[node.name].change) == (exact[node.name].change, e.change)
            if r.change is not Change.LOCAL or p.change is not Change.LOCAL:
                assert r.change is p.change or r.change is Change.UNCHANGED
                continue
            assert r.rows.size <= p.rows.size and r.cols.size <= p.cols.size, node.name
            if node.name != graph.input:
                rows, cols = node.spatial_size
                assert (r.rows.hi - r.rows.lo).max() <= max(1, np.ceil(threshold * rows))
                assert (r.cols.hi - r.cols.lo).max() <= max(1, np.ceil(threshold * cols))
        now = plan_flops(graph, regions, every)
        assert now <= work * (1 + 1e-9)
        previous, work = regions, now


def test_threshold_one_and_ratio_one_are_exact() -> None:
    seeded(1)
    model = models.resnet18(weights=None).eval()
    image = torch.randn(3, 48, 48)
    reference = hyinf.explain(model, image, patch=8, stride=4, mode="naive")
    for backend in ("torch", "ort"):
        result = hyinf.explain(model, image, patch=8, stride=4, mode="incremental", approx_threshold=1.0, drill_down=1.0, backend=backend)
        assert result.approximation is None
        assert_close_to(reference.scores, result.scores, backend)


def test_drill_down_ratio_one_with_a_coarse_pass_is_exact_and_less_work_below_one() -> None:
    seeded(2)
    model = models.resnet18(weights=None).eval()
    image = torch.randn(3, 48, 48)
    reference = hyinf.explain(model, image, patch=8, stride=4, mode="naive")
    counts = []
    for ratio in (0.999, 0.6, 0.3, 0.1):  # 0.999 rounds up to every coarse cell: every fine position evaluated
        result = hyinf.explain(model, image, patch=8, stride=4, mode="hybrid", drill_down=ratio, coarse_stride=8)
        counts.append(result.approximation.positions)
        if ratio == 0.999:
            assert_close_to(reference.scores, result.scores, "drill-down over every cell")
    assert counts == sorted(counts, reverse=True) and counts[-1] < counts[0]
    assert counts[0] == len(reference.grid), "coarse positions are reused, not evaluated twice"


@pytest.mark.parametrize("size, nested", [(64, False), (60, True)])
def test_drill_down_evaluates_exactly_the_selected_positions(size: int, nested: bool) -> None:
    """Computed fine positions equal naive re-inference there; the rest are the coarse pass's scores.
    At 60x60 every coarse position (stride 12) is a fine one (stride 4) and the fine engine runs the
    coarse pass; at 64x64 the last coarse start (60) is not a fine one and the coarse grid has its own."""
    seeded(3)
    model = models.squeezenet1_1(weights=None).eval()
    image = torch.randn(3, size, size)
    assert drilldown.nested(OcclusionGrid.make((size, size), 12, 4), OcclusionGrid.make((size, size), 12, 12)) is nested
    fine = hyinf.explain(model, image, patch=12, stride=4, mode="naive")
    coarse = hyinf.explain(model, image, patch=12, stride=12, mode="naive")
    for backend, mode in (("torch", "naive"), ("torch", "hybrid"), ("ort", "hybrid")):
        result = hyinf.explain(model, image, patch=12, stride=4, mode=mode, drill_down=0.3, coarse_stride=12, backend=backend)
        chosen = torch.as_tensor(drilldown.selected(coarse.heatmap, fine.grid, coarse.grid, 0.3)).reshape(fine.grid.shape)
        assert 0 < int(chosen.sum()) < chosen.numel()
        assert_close_to(fine.scores[chosen], result.scores[chosen], f"{backend} {mode} drilled positions")
        filled = drilldown.combine(torch.zeros(len(fine.grid)), torch.zeros(len(fine.grid), dtype=torch.bool), coarse.scores.reshape(-1), fine.grid, coarse.grid)
        assert_close_to(filled.reshape(fine.grid.shape)[~chosen].float(), result.scores[~chosen], f"{backend} {mode} filled positions")


def test_drill_down_at_the_fine_stride_is_the_coarse_pass() -> None:
    model = load_demo()
    image = normalise(load_image(asset(SAMPLE), (64, 64)))
    exact = hyinf.explain(model, image, patch=8, stride=8, mode="naive")
    result = hyinf.explain(model, image, patch=8, stride=8, drill_down=0.5, coarse_stride=8)
    assert result.approximation.positions == len(exact.grid)
    assert_close_to(exact.scores, result.scores, "coarse stride = fine stride")


def test_drill_down_selection_on_constructed_heatmaps() -> None:
    fine = OcclusionGrid.make((40, 40), 8, 4)  # starts 0, 4, ..., 32: 9 per axis
    coarse = fine.with_stride(16)  # starts 0, 16, 32: 3 per axis
    cells = drilldown.cells(fine, coarse)
    assert cells[0, 0] == 0 and cells[8, 8] == 8 and cells[2, 6] == 0 * 3 + 1 and cells[3, 3] == 4  # ties (start 8, 24) go to the first
    heat = torch.zeros(3, 3)
    heat[1, 2] = 5.0  # the most important cell
    heat[0, 0] = 2.0
    one = drilldown.selected(heat, fine, coarse, 1 / 9).reshape(9, 9)
    assert one.sum() == (cells == 5).sum() and one[cells == 5].all()
    two = drilldown.selected(heat, fine, coarse, 2 / 9).reshape(9, 9)
    assert two[(cells == 5) | (cells == 0)].all() and two.sum() == ((cells == 5) | (cells == 0)).sum()
    assert drilldown.selected(heat, fine, coarse, 1.0).all()
    assert drilldown.shared(fine, coarse).reshape(9, 9)[::4, ::4].all() and drilldown.shared(fine, coarse).sum() == 9
    coarse_scores = torch.arange(9.0)
    combined = drilldown.combine(torch.full((81,), -1.0), torch.zeros(81, dtype=torch.bool), coarse_scores, fine, coarse).reshape(9, 9)
    assert torch.equal(combined[::4, ::4], coarse_scores.reshape(3, 3).double().to(combined.dtype))
    assert combined[0, 2] == pytest.approx(0.5)  # halfway between coarse columns 0 and 1


def test_quality_measures() -> None:
    torch.manual_seed(0)
    exact = torch.randn(20, 20)
    same = compare(exact, exact)
    assert same.ssim == pytest.approx(1.0) and same.max_abs == 0 and same.top_agreement == 1.0 and same.top_k == 40
    noisy = compare(exact + 0.5 * torch.randn(20, 20), exact)
    assert noisy.ssim < 0.9 and noisy.max_abs > 0 and noisy.mean_abs > 0
    flipped = compare(-exact, exact)
    assert flipped.top_agreement == 0 and flipped.ssim < 0.5


def test_check_exact_reports_the_distance_on_the_trained_demo() -> None:
    model = load_demo()
    image = normalise(load_image(asset(SAMPLE), (128, 128)))
    result = hyinf.explain(model, image, stride=8, mode="incremental", approx_threshold=0.3, drill_down=0.5, check_exact=True)
    q = result.approximation.quality
    exact = hyinf.explain(model, image, stride=8, mode="naive")
    again = compare(result.heatmap, exact.heatmap)
    assert q.ssim == pytest.approx(again.ssim, abs=1e-4) and q.max_abs == pytest.approx(again.max_abs, rel=1e-3)
    assert 0 < q.ssim < 1 and "exact_s" in result.timings
    assert "approximate (projective-field threshold 0.3, drill-down 0.5 from stride 16x16" in result.mode


@pytest.mark.parametrize(("settings", "words"), [
    ({"approx_threshold": 0.0}, "threshold must be in (0, 1]"),
    ({"approx_threshold": 1.5}, "threshold must be in (0, 1]"),
    ({"approx_threshold": 0.5, "mode": "full"}, "mode 'full' has none"),
    ({"approx_threshold": 0.5, "mode": "naive"}, "mode 'naive' has none"),
    ({"drill_down": 0.0}, "drill-down ratio must be in (0, 1]"),
    ({"drill_down": 2}, "drill-down ratio must be in (0, 1]"),
    ({"drill_down": 0.5, "coarse_stride": 2}, "coarse stride (2, 2) must be at least the fine stride (4, 4)"),
])
def test_bad_approximate_settings_are_clear_errors(settings, words: str) -> None:
    model = load_demo()
    with pytest.raises(SettingsError, match=None) as info:
        hyinf.explain(model, torch.zeros(3, 32, 32), stride=4, patch=8, **settings)
    assert words in str(info.value)


def test_planner_and_cost_model_see_the_cut_windows() -> None:
    """Plans for a threshold are made from the cut windows (smaller predicted incremental cost) and say so."""
    from hyinf.planner.select import make_plan
    from hyinf.profiler.machine import fingerprint

    graph = trace_torch(models.resnet18(weights=None).eval(), (1, 3, 96, 96)).graph
    device = fingerprint(torch.device("cpu"))
    exact = make_plan(graph, OcclusionGrid.make((96, 96), 16, 8), device, model_name="r", db=None)
    cut = make_plan(graph, OcclusionGrid.make((96, 96), 16, 8, 0.3), device, model_name="r", db=None)
    assert cut.body["predicted_s"]["all-incremental"] < 0.9 * exact.body["predicted_s"]["all-incremental"]
    assert cut.settings["approx_threshold"] == 0.3 and "approx_threshold" not in exact.settings
    windows = {n["name"]: n["window"] for n in cut.body["nodes"] if n["window"]}
    maps = {n["name"]: n["map"] for n in cut.body["nodes"] if n["window"]}
    assert all(w[0] <= max(1, np.ceil(0.3 * maps[k][0])) for k, w in windows.items() if k != graph.input)
