"""FLOP estimates from the IR: what full re-inference and incremental evaluation must compute."""

from __future__ import annotations

import numpy as np

from hyinf.graph.geometry import Change, OcclusionGrid, Region, changed_regions
from hyinf.graph.ir import Graph


def plan_flops(graph: Graph, regions: dict[str, Region], incremental: frozenset[str] | set[str]) -> float:
    """FLOPs per occlusion position when the nodes in `incremental` compute only their windows.

    A multiply-accumulate counts as 2 FLOPs; nodes the patch never reaches cost nothing, since
    their values are the clean image's.
    """
    total = 0.0
    for node in graph.nodes:
        region = regions[node.name]
        if region.change is Change.UNCHANGED:
            continue
        elements = float(node.numel)
        if node.name in incremental and region.change is Change.LOCAL:
            rows, cols = node.spatial_size
            elements *= region.window_area / (rows * cols)
        total += 2 * node.macs * elements
    return total


def full_flops(graph: Graph) -> float:
    """FLOPs of one full inference."""
    return sum(2.0 * n.macs * n.numel for n in graph.nodes)


def exact_window_flops(graph: Graph, grid: OcclusionGrid) -> float:
    """FLOPs of the whole grid when every position computes only its own changed rows and columns:
    the least any exact evaluation computes, against which one window size per block is measured.

    A position's changed area at a node is its row interval times its column interval, so summed
    over the grid it is (sum of row interval lengths) x (sum of column interval lengths). A node
    changed everywhere counts at the positions where one of its inputs changes.
    """
    regions, total = changed_regions(graph, grid), 0.0
    changes: dict[str, np.ndarray] = {}  # node -> (grid rows, grid cols): where it changes at all
    for node in graph.nodes:
        region = regions[node.name]
        if region.change is Change.UNCHANGED:
            changes[node.name] = np.zeros(grid.shape, dtype=bool)
        elif region.change is Change.LOCAL:
            assert region.rows is not None and region.cols is not None
            changes[node.name] = np.outer(~region.rows.empty, ~region.cols.empty)
            rows, cols = node.spatial_size
            area = float((region.rows.hi - region.rows.lo).clip(min=0).sum() * (region.cols.hi - region.cols.lo).clip(min=0).sum())
            total += 2 * node.macs * node.numel * area / (rows * cols)
        else:
            changes[node.name] = np.logical_or.reduce([changes[i] for i in node.inputs])
            total += 2 * node.macs * node.numel * float(changes[node.name].sum())
    return total
