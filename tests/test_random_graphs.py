"""Hypothesis-generated CNN DAGs: geometry is sound and every evaluation mode equals naive."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings

from conftest import assert_close_to, random_plan
from random_cnn import random_cnns

import hyinf
from hyinf.graph.geometry import Change, OcclusionGrid, changed_regions, position_blocks
from hyinf.graph.torch_frontend import trace_torch
from hyinf.runtime.occlusion import PatchSpans, patch_fill

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@SETTINGS
@given(random_cnns())
def test_random_cnn_matches_naive(case) -> None:
    model, image, patch, stride = case
    reference = hyinf.explain(model, image, patch=patch, stride=stride, mode="naive")
    for mode in ("full", "incremental", "hybrid"):
        result = hyinf.explain(model, image, patch=patch, stride=stride, mode=mode, batch_size=7)
        assert_close_to(reference.scores, result.scores, mode)
    plan = random_plan(model, (1, *image.shape), seed=int(image.abs().sum() * 1000) % 97)
    result = hyinf.explain(model, image, patch=patch, stride=stride, plan=plan, batch_size=5)
    assert_close_to(reference.scores, result.scores, "random plan")


@SETTINGS
@given(random_cnns())
def test_changed_region_contains_every_change(case) -> None:
    """Whatever an occlusion changes in any node's output lies inside the predicted region."""
    model, image, patch, stride = case
    program = trace_torch(model, (1, *image.shape))
    graph = program.graph
    grid = OcclusionGrid.make(tuple(image.shape[-2:]), patch, stride)
    regions = changed_regions(graph, grid)
    idx = torch.arange(len(grid))
    i, j = idx // grid.shape[1], idx % grid.shape[1]
    occluded = PatchSpans(grid, image.device).occlude(image[None], i, j, patch_fill(3.0, 3, image.device, image.dtype))
    base: dict[str, torch.Tensor] = {}
    new: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for node in graph.nodes:
            if node.inputs:
                base[node.name] = program.full[node.name](*(base[k] for k in node.inputs))
                new[node.name] = program.full[node.name](*(new[k] for k in node.inputs))
            else:
                base[node.name], new[node.name] = image[None], occluded
    for node in graph.nodes:
        region = regions[node.name]
        # Batched kernels may round differently from batch-1 ones: count only real changes.
        scale = float(base[node.name].abs().max()) + 1e-6
        differs = (new[node.name] - base[node.name]).abs() > 1e-5 * scale
        if region.change is Change.UNCHANGED:
            assert not differs.any(), f"{node.name} changed although predicted unchanged"
        if region.change is not Change.LOCAL:
            continue
        assert region.rows is not None and region.cols is not None
        rows_axis, cols_axis = node.spatial
        for n in range(len(grid)):
            d = differs[n].movedim((rows_axis - 1, cols_axis - 1), (0, 1))
            changed_rows = d.flatten(2).any(-1).any(-1).nonzero().flatten() if d.dim() > 2 else d.any(1).nonzero().flatten()
            changed_cols = d.transpose(0, 1).flatten(2).any(-1).any(-1).nonzero().flatten() if d.dim() > 2 else d.any(0).nonzero().flatten()
            lo, hi = region.rows.lo[i[n]], region.rows.hi[i[n]]
            assert all(lo <= r < hi for r in changed_rows.tolist()), f"{node.name} row outside [{lo}, {hi})"
            lo, hi = region.cols.lo[j[n]], region.cols.hi[j[n]]
            assert all(lo <= c < hi for c in changed_cols.tolist()), f"{node.name} column outside [{lo}, {hi})"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(random_cnns())
def test_position_blocks_partition_the_grid(case) -> None:
    """Blocks cover every grid position exactly once, and their windows are never larger than the grid-wide ones."""
    model, image, patch, stride = case
    graph = trace_torch(model, (1, *image.shape)).graph
    grid = OcclusionGrid.make(tuple(image.shape[-2:]), patch, stride)
    blocks = position_blocks(graph, grid)
    covered = sorted(p for block in blocks for p in block.positions().tolist())
    assert covered == list(range(len(grid)))
    whole = changed_regions(graph, grid)
    for block in blocks:
        for name, region in changed_regions(graph, block).items():
            if region.change is Change.LOCAL and whole[name].change is Change.LOCAL:
                assert region.window_area <= whole[name].window_area
