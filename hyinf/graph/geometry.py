"""Changed-region geometry: which part of every node's output can differ from the clean image's.

Everything here is a pure function of the graph and the occlusion grid. Rows and columns are
independent: the changed region of a node for the patch at grid position (i, j) is the rectangle
rows[i] x cols[j], so each axis is one vector per node over the grid's rows or columns.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np

from hyinf.errors import SettingsError
from hyinf.graph.ir import LOCAL_OPS, Graph, Node, Op


def _pair(value: int | tuple[int, int] | list[int], what: str) -> tuple[int, int]:
    if isinstance(value, int):
        value = (value, value)
    if len(value) != 2 or not all(isinstance(v, int) for v in value):
        raise SettingsError(f"{what} must be an int or a (height, width) pair, got {value!r}")
    return int(value[0]), int(value[1])


@dataclass(frozen=True)
class OcclusionGrid:
    """Where the patch goes: captum.attr.Occlusion's positions for one image.

    Along each axis the patch starts at 0, s, 2s, ... for ceil((size - p) / s) + 1 positions, so the
    last patch may be cut off by the border, exactly as captum does.
    """

    image_size: tuple[int, int]
    patch: tuple[int, int]
    stride: tuple[int, int]

    @classmethod
    def make(cls, image_size: tuple[int, int], patch: int | tuple[int, int], stride: int | tuple[int, int]) -> OcclusionGrid:
        patch, stride = _pair(patch, "patch"), _pair(stride, "stride")
        for axis, name in enumerate(("height", "width")):
            if patch[axis] < 1 or stride[axis] < 1:
                raise SettingsError(f"patch and stride must be at least 1 pixel, got patch {patch} and stride {stride}")
            if patch[axis] > image_size[axis]:
                raise SettingsError(
                    f"patch {name} {patch[axis]} is larger than the image {name} {image_size[axis]}; use a smaller --patch"
                )
        return cls(tuple(image_size), patch, stride)  # type: ignore[arg-type]

    def starts(self, axis: int) -> np.ndarray:
        size, p, s = self.image_size[axis], self.patch[axis], self.stride[axis]
        return np.arange(math.ceil((size - p) / s) + 1, dtype=np.int64) * s

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.starts(0)), len(self.starts(1))

    def __len__(self) -> int:
        rows, cols = self.shape
        return rows * cols


class Change(enum.StrEnum):
    UNCHANGED = "unchanged"  # equal to the clean image's value at every position
    LOCAL = "local"  # differs only inside a rectangle per position
    EVERYWHERE = "everywhere"  # may differ anywhere


@dataclass(frozen=True, eq=False)
class AxisSpan:
    """Changed interval [lo, hi) along one axis per grid index, and the fixed-size window holding it.

    `offset[k] <= lo[k]` and `offset[k] + size >= hi[k]`, with the window inside the map, so one dense
    tensor of `size` rows holds every position's changed rows. Empty intervals have lo >= hi.
    """

    lo: np.ndarray
    hi: np.ndarray
    size: int
    offset: np.ndarray

    @classmethod
    def fit(cls, lo: np.ndarray, hi: np.ndarray, extent: int) -> AxisSpan:
        lo, hi = np.clip(lo, 0, extent), np.clip(hi, 0, extent)
        empty = hi <= lo
        size = int(max(1, (hi - lo)[~empty].max(initial=1)))
        offset = np.clip(np.where(empty, 0, np.minimum(lo, extent - size)), 0, extent - size)
        return cls(lo, hi, size, offset)

    @property
    def empty(self) -> np.ndarray:
        return self.hi <= self.lo


@dataclass(frozen=True, eq=False)
class Region:
    change: Change
    rows: AxisSpan | None = None
    cols: AxisSpan | None = None

    @property
    def window_area(self) -> int:
        assert self.rows is not None and self.cols is not None
        return self.rows.size * self.cols.size


UNCHANGED = Region(Change.UNCHANGED)
EVERYWHERE = Region(Change.EVERYWHERE)


def _local_span(span: AxisSpan, node: Node, axis: int, extent: int) -> AxisSpan:
    """Output rows of a sliding-window op that read any changed input row."""
    w = node.window
    assert w is not None
    s, pb = w.stride[axis], w.pad_before[axis]
    lo = -((-(span.lo + pb - (w.extent(axis) - 1))) // s)  # ceil division
    hi = (span.hi - 1 + pb) // s + 1
    hi = np.where(span.empty, lo, hi)
    return AxisSpan.fit(lo, hi, extent)


def _union(spans: list[AxisSpan], extent: int) -> AxisSpan:
    big = np.iinfo(np.int64).max
    lo = np.min([np.where(s.empty, big, s.lo) for s in spans], axis=0)
    hi = np.max([np.where(s.empty, -1, s.hi) for s in spans], axis=0)
    return AxisSpan.fit(np.where(lo == big, 0, lo), np.where(hi < 0, 0, hi), extent)


def _region(node: Node, graph: Graph, regions: dict[str, Region], grid: OcclusionGrid) -> Region:
    if node.name == graph.input:
        rows_ext, cols_ext = node.spatial_size
        r0, c0 = grid.starts(0), grid.starts(1)
        return Region(
            Change.LOCAL,
            AxisSpan.fit(r0, r0 + grid.patch[0], rows_ext),
            AxisSpan.fit(c0, c0 + grid.patch[1], cols_ext),
        )
    changed = [i for i in node.inputs if regions[i].change is not Change.UNCHANGED]
    if not changed:
        return UNCHANGED
    if any(regions[i].change is Change.EVERYWHERE for i in changed) or node.spatial is None:
        return EVERYWHERE
    size = node.spatial_size
    if node.op in LOCAL_OPS:
        src = regions[node.inputs[0]]
        assert src.rows is not None and src.cols is not None
        rows, cols = _local_span(src.rows, node, 0, size[0]), _local_span(src.cols, node, 1, size[1])
    elif node.op in (Op.POINTWISE, Op.RESHAPE):
        # An input that is changed but broadcast over space (e.g. a per-image channel scale) changes everything.
        if any(graph[i].spatial is None or graph[i].spatial_size != size for i in changed):
            return EVERYWHERE
        rows = _union([regions[i].rows for i in changed], size[0])  # type: ignore[misc]
        cols = _union([regions[i].cols for i in changed], size[1])  # type: ignore[misc]
    else:
        return EVERYWHERE
    if rows.empty.all() or cols.empty.all():
        return UNCHANGED
    return Region(Change.LOCAL, rows, cols)


def changed_regions(graph: Graph, grid: OcclusionGrid) -> dict[str, Region]:
    """The changed region of every node's output for every grid position."""
    if graph.input_node.spatial_size != grid.image_size:
        raise SettingsError(
            f"occlusion grid is for a {grid.image_size} image but the graph was traced at {graph.input_node.spatial_size}"
        )
    regions: dict[str, Region] = {}
    for node in graph.nodes:
        regions[node.name] = _region(node, graph, regions, grid)
    return regions


def read_start(node: Node, out: AxisSpan, axis: int) -> tuple[np.ndarray, int]:
    """Start (in the input's padded coordinates) and length of the input rows a local op reads."""
    w = node.window
    assert w is not None
    s = w.stride[axis]
    return out.offset * s, (out.size - 1) * s + w.extent(axis)
