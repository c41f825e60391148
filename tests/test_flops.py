"""FLOP counts that bound what exact evaluation can save: per-position windows against block windows."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from random_cnn import random_cnns

from hyinf.graph.flops import exact_window_flops, full_flops, plan_flops
from hyinf.graph.geometry import (
    UNCHANGED,
    Change,
    OcclusionGrid,
    Region,
    changed_regions,
    position_blocks,
)
from hyinf.graph.ir import Graph
from hyinf.graph.torch_frontend import trace_torch


def _local_flops(graph: Graph, regions: dict[str, Region]) -> float:
    """FLOPs of the nodes changed locally, each over its window (one grid-wide size)."""
    return plan_flops(graph, {k: r if r.change is Change.LOCAL else UNCHANGED for k, r in regions.items()},
                      frozenset(n.name for n in graph.nodes))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(random_cnns())
def test_exact_window_flops_sum_each_position_alone(case) -> None:
    """The separable sum equals the sum over one-position grids: nodes changed everywhere at the same
    positions, locally changed ones exactly where no position's interval is empty (a one-position
    window holds at least one row). Block windows never compute less, nor more than one grid-wide window."""
    model, image, patch, stride = case
    graph = trace_torch(model, (1, *image.shape)).graph
    grid = OcclusionGrid.make(tuple(image.shape[-2:]), patch, stride)
    regions = changed_regions(graph, grid)
    exact = exact_window_flops(graph, grid)
    rows, cols = grid.shape
    singles = [changed_regions(graph, grid.block([i], [j])) for i in range(rows) for j in range(cols)]
    alone = sum(_local_flops(graph, r) for r in singles)
    # changed everywhere: each position pays the nodes its own patch changes everywhere
    global_flops = sum(2.0 * n.macs * n.numel for r in singles for n in graph.nodes if r[n.name].change is Change.EVERYWHERE)
    local = exact - global_flops
    spans = [r for r in regions.values() if r.change is Change.LOCAL]
    if all((r.rows.hi > r.rows.lo).all() and (r.cols.hi > r.cols.lo).all() for r in spans):
        assert abs(alone - local) <= 1e-9 * max(local, 1.0)
    else:
        assert alone >= local * (1 - 1e-9)

    every = frozenset(n.name for n in graph.nodes)
    blocked = sum(plan_flops(graph, changed_regions(graph, b), every) * len(b) for b in position_blocks(graph, grid))
    uniform = plan_flops(graph, regions, every) * len(grid)
    assert exact * (1 - 1e-9) <= blocked <= uniform * (1 + 1e-9) <= full_flops(graph) * len(grid) * (1 + 1e-9)
