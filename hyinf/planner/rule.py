"""The interim hybrid rule, until the cost-model planner lands.

A node is evaluated incrementally while its changed window covers at most `max_fraction` of its
map, and fully beyond that: deep layers whose window spans most of the map gain little from
incremental evaluation and pay for its gathers. On this project's 2-core CPU benchmark
(224x224, patch 16, stride 8) 0.9 was the fastest of 0.3, 0.5, 0.7, 0.9 and 1.0 for both vgg16 and
resnet18, by 5-10%; the cost-model planner replaces this rule.
"""

from __future__ import annotations

from hyinf.graph.geometry import Change, Region
from hyinf.graph.ir import Graph, Op
from hyinf.planner.plan import Mode, Plan

DEFAULT_MAX_FRACTION = 0.9


def window_fraction(node_size: tuple[int, int], region: Region) -> float:
    """Share of a node's map that its incremental window covers."""
    rows, cols = node_size
    return region.window_area / (rows * cols)


def threshold_plan(graph: Graph, regions: dict[str, Region], max_fraction: float = DEFAULT_MAX_FRACTION) -> Plan:
    modes: dict[str, Mode] = {}
    for node in graph.nodes:
        region = regions[node.name]
        if region.change is Change.LOCAL and window_fraction(node.spatial_size, region) > max_fraction:
            modes[node.name] = Mode.FULL
        elif region.change is Change.EVERYWHERE and node.op is not Op.GLOBAL_AVG_POOL:
            modes[node.name] = Mode.FULL
    return Plan(modes, Mode.INCREMENTAL, strategy=f"window-fraction<={max_fraction}")
