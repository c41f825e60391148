"""FLOP counts that bound what exact evaluation can save: per-position windows against block windows."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from random_cnn import random_cnns

from hyinf.graph.flops import exact_window_flops, full_flops, plan_flops
from hyinf.graph.geometry import Change, OcclusionGrid, changed_regions, position_blocks
from hyinf.graph.torch_frontend import trace_torch


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(random_cnns())
def test_exact_window_flops_sum_each_position_alone(case) -> None:
    """The separable sum equals the sum over one-position grids (where no position's interval is empty:
    a one-position window holds at least one row), and block windows never compute less."""
    model, image, patch, stride = case
    graph = trace_torch(model, (1, *image.shape)).graph
    grid = OcclusionGrid.make(tuple(image.shape[-2:]), patch, stride)
    every = frozenset(n.name for n in graph.nodes)
    exact = exact_window_flops(graph, grid)

    rows, cols = grid.shape
    alone = sum(plan_flops(graph, changed_regions(graph, grid.block([i], [j])), every) for i in range(rows) for j in range(cols))
    regions = changed_regions(graph, grid)
    local = [r for r in regions.values() if r.change is Change.LOCAL]
    if all((r.rows.hi > r.rows.lo).all() and (r.cols.hi > r.cols.lo).all() for r in local):
        assert abs(alone - exact) <= 1e-9 * max(exact, 1.0)
    else:
        assert alone >= exact * (1 - 1e-9)

    blocked = sum(plan_flops(graph, changed_regions(graph, b), every) * len(b) for b in position_blocks(graph, grid))
    uniform = plan_flops(graph, regions, every) * len(grid)
    assert exact * (1 - 1e-9) <= blocked <= uniform * (1 + 1e-9) <= full_flops(graph) * len(grid) * (1 + 1e-9)
