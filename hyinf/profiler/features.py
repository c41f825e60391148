"""Cost features: a pure function of an IR node, the changed regions and the batch of positions.

The profiler stores these with every measurement and the cost models predict from them, so a cost
measured for one layer transfers to any layer of any model with similar features.
"""

from __future__ import annotations

import math

from hyinf.graph.geometry import Change, Region, read_start
from hyinf.graph.ir import LOCAL_OPS, Graph, Node, Op

BYTES_PER_ELEMENT = 4  # float32


def _area(node: Node) -> int:
    rows, cols = node.spatial_size
    return rows * cols


def _channels(node: Node) -> int:
    """Elements per pixel (product of the non-spatial axes)."""
    return node.numel // _area(node) if node.spatial is not None else node.numel


def _spatial_input(graph: Graph, node: Node) -> Node | None:
    for name in node.inputs:
        src = graph[name]
        if src.spatial is not None:
            return src
    return None


def _read_area(node: Node, region: Region) -> int:
    """Input pixels an incremental node reads per position."""
    assert region.rows is not None and region.cols is not None
    if node.op in LOCAL_OPS:
        return read_start(node, region.rows, 0)[1] * read_start(node, region.cols, 1)[1]
    return region.window_area


def node_features(graph: Graph, node: Node, regions: dict[str, Region], kind: str, positions: int) -> dict[str, float]:
    """Features of evaluating `node` for `positions` positions as `kind` (see `hyinf.profiler.sample.KINDS`).

    Areas are in pixels per position: `out_area`/`in_area` are what is computed/read (windows for
    incremental work and conversions, whole maps for full evaluation).
    """
    src = _spatial_input(graph, node)
    region = regions[node.name]
    out_channels = _channels(node)
    out_map = _area(node) if node.spatial is not None else 1
    # The image input reads the clean image's window (incremental) or whole image (full).
    in_channels = _channels(src) if src is not None else out_channels
    in_map = _area(src) if src is not None else out_map
    if node.op is Op.GLOBAL_AVG_POOL and src is not None:  # its incremental form reads the input's window
        src_region = regions[src.name]
        window = src_region.window_area if src_region.change is Change.LOCAL else in_map
        out_area, in_area, fraction = 1, window if kind == "incremental" else in_map, window / in_map
    elif region.change is Change.LOCAL and node.spatial is not None:
        window = region.window_area
        fraction = window / out_map
        if kind == "full":
            out_area, in_area = out_map, in_map
        else:
            out_area, in_area = window, _read_area(node, region) if kind == "incremental" else window
    else:
        out_area, in_area, fraction = out_map, in_map, 1.0
    kernel = node.window.kernel[0] * node.window.kernel[1] if node.window is not None else 1
    stride = node.window.stride[0] * node.window.stride[1] if node.window is not None else 1
    flops = 2.0 * node.macs * out_channels * out_area * positions if kind in ("incremental", "full") else 0.0
    moved = out_channels * out_area
    if kind in ("incremental", "full"):
        moved += in_channels * in_area * max(1, sum(graph[i].spatial is not None for i in node.inputs))
    elif kind == "to_full":
        moved += out_channels * out_map  # the clean map copied before the paste
    return {
        "positions": float(positions),
        "out_channels": float(out_channels),
        "in_channels": float(in_channels),
        "out_area": float(out_area),
        "in_area": float(in_area),
        "out_map": float(out_map),
        "fraction": float(fraction),
        "macs": float(node.macs),
        "kernel": float(kernel),
        "stride": float(stride),
        "inputs": float(len(node.inputs)),
        "flops": flops,
        "bytes": float(BYTES_PER_ELEMENT * moved * positions),
    }


def choice_nodes(graph: Graph, regions: dict[str, Region]) -> list[Node]:
    """Nodes whose mode a plan can choose: changed locally (or a global average pool of such a node)."""
    out = []
    for node in graph.nodes:
        if regions[node.name].change is Change.LOCAL and node.spatial is not None:
            out.append(node)
        elif node.op is Op.GLOBAL_AVG_POOL and regions[node.inputs[0]].change is Change.LOCAL:
            out.append(node)
    return out


def log_features(f: dict[str, float]) -> list[float]:
    """Numeric features on a log scale (costs scale multiplicatively), in a fixed order."""
    return [math.log1p(f[k]) for k in NUMERIC]


NUMERIC = ("positions", "out_channels", "in_channels", "out_area", "in_area", "out_map", "fraction", "macs", "kernel", "stride", "inputs", "flops", "bytes")
