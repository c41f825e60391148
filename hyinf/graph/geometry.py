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
    """Where the patch goes: captum.attr.Occlusion's positions for one image, or a block of them.

    Along each axis the patch starts at 0, s, 2s, ... for ceil((size - p) / s) + 1 positions, so the
    last patch may be cut off by the border, exactly as captum does. A block (`rows`, `cols` set)
    keeps only those grid rows and columns; its positions are numbered within the block.

    `threshold` < 1 asks for the projective-field approximation: every node's changed window may
    span at most that fraction of its map's side (see `changed_regions`); 1 is exact.
    """

    image_size: tuple[int, int]
    patch: tuple[int, int]
    stride: tuple[int, int]
    rows: tuple[int, ...] | None = None
    cols: tuple[int, ...] | None = None
    threshold: float = 1.0

    @classmethod
    def make(cls, image_size: tuple[int, int], patch: int | tuple[int, int], stride: int | tuple[int, int],
             threshold: float = 1.0) -> OcclusionGrid:
        patch, stride = _pair(patch, "patch"), _pair(stride, "stride")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            raise SettingsError(f"the projective-field threshold must be in (0, 1] (1 = exact), got {threshold!r}")
        for axis, name in enumerate(("height", "width")):
            if patch[axis] < 1 or stride[axis] < 1:
                raise SettingsError(f"patch and stride must be at least 1 pixel, got patch {patch} and stride {stride}")
            if patch[axis] > image_size[axis]:
                raise SettingsError(
                    f"patch {name} {patch[axis]} is larger than the image {name} {image_size[axis]}; use a smaller --patch"
                )
        return cls(tuple(image_size), patch, stride, threshold=float(threshold))  # type: ignore[arg-type]

    def all_starts(self, axis: int) -> np.ndarray:
        """Patch starts along `axis` of the whole grid."""
        size, p, s = self.image_size[axis], self.patch[axis], self.stride[axis]
        return np.arange(math.ceil((size - p) / s) + 1, dtype=np.int64) * s

    def starts(self, axis: int) -> np.ndarray:
        """Patch starts along `axis` of this grid or block."""
        chosen = self.rows if axis == 0 else self.cols
        every = self.all_starts(axis)
        return every if chosen is None else every[list(chosen)]

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.starts(0)), len(self.starts(1))

    def __len__(self) -> int:
        rows, cols = self.shape
        return rows * cols

    def block(self, rows: list[int], cols: list[int]) -> OcclusionGrid:
        return OcclusionGrid(self.image_size, self.patch, self.stride, tuple(rows), tuple(cols), self.threshold)

    def with_stride(self, stride: int | tuple[int, int]) -> OcclusionGrid:
        """The whole grid of the same patch at another stride (drill-down's coarse pass)."""
        return OcclusionGrid.make(self.image_size, self.patch, stride, self.threshold)

    def positions(self) -> np.ndarray:
        """Row-major numbers, in the whole grid, of this block's positions."""
        whole_cols = len(self.all_starts(1))
        rows = np.asarray(self.rows if self.rows is not None else range(len(self.all_starts(0))))
        cols = np.asarray(self.cols if self.cols is not None else range(whole_cols))
        return (rows[:, None] * whole_cols + cols[None, :]).reshape(-1)


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


Centres = tuple[np.ndarray, np.ndarray]  # the patch centre's continuous row and column in a node's map, per grid index


def _centres(node: Node, graph: Graph, regions: dict[str, Region], centres: dict[str, Centres], grid: OcclusionGrid) -> Centres:
    """Where the patch centre projects in the map of `node`, a node with a local change."""
    if node.name == graph.input:
        return grid.starts(0) + grid.patch[0] / 2, grid.starts(1) + grid.patch[1] / 2
    if node.op in LOCAL_OPS:
        w = node.window
        assert w is not None
        src = centres[node.inputs[0]]
        # output pixel o reads input [o*s - pad, o*s - pad + extent): its centre is at o + 1/2
        return tuple((src[a] + w.pad_before[a] - w.extent(a) / 2) / w.stride[a] + 0.5 for a in (0, 1))  # type: ignore[return-value]
    changed = [centres[i] for i in node.inputs if regions[i].change is Change.LOCAL]
    return np.mean([c[0] for c in changed], axis=0), np.mean([c[1] for c in changed], axis=0)


def _truncate(span: AxisSpan, centre: np.ndarray, extent: int, threshold: float) -> AxisSpan:
    """`span` cut to at most ceil(threshold * extent) rows around `centre` where it is wider (shifted
    inside the map where the centre is near its border)."""
    cap = max(1, math.ceil(threshold * extent))
    start = np.clip(np.floor(centre - cap / 2).astype(np.int64), 0, extent - cap)
    wide = span.hi - span.lo > cap
    return AxisSpan.fit(np.where(wide, np.maximum(span.lo, start), span.lo), np.where(wide, np.minimum(span.hi, start + cap), span.hi), extent)


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
    """The changed region of every node's output for every grid position.

    With `grid.threshold` < 1 (the projective-field approximation), the region of every node past
    the input is cut to at most that fraction of its map's side, centred where the patch centre
    projects; changes outside it are dropped (taken as the clean image's), and the nodes after it
    grow their regions from the cut ones.
    """
    if graph.input_node.spatial_size != grid.image_size:
        raise SettingsError(
            f"occlusion grid is for a {grid.image_size} image but the graph was traced at {graph.input_node.spatial_size}"
        )
    regions: dict[str, Region] = {}
    centres: dict[str, Centres] = {}
    for node in graph.nodes:
        region = _region(node, graph, regions, grid)
        if grid.threshold < 1 and region.change is Change.LOCAL:
            centres[node.name] = centre = _centres(node, graph, regions, centres, grid)
            assert region.rows is not None and region.cols is not None
            if node.name != graph.input:  # the patch itself is never cut
                rows, cols = node.spatial_size
                region = Region(Change.LOCAL, _truncate(region.rows, centre[0], rows, grid.threshold),
                                _truncate(region.cols, centre[1], cols, grid.threshold))
        regions[node.name] = region
    return regions


def read_start(node: Node, out: AxisSpan, axis: int) -> tuple[np.ndarray, int]:
    """Start (in the input's padded coordinates) and length of the input rows a local op reads."""
    w = node.window
    assert w is not None
    s = w.stride[axis]
    return out.offset * s, (out.size - 1) * s + w.extent(axis)


# Split further only when the estimated work drops by at least 2%. At 5%, resnet18 stayed one block;
# at 2% its 9 blocks (15% fewer FLOPs) ran 12% faster and vgg16's 9 (6% fewer) 6.5% faster on a
# 2-core AVX-512 EPYC, and no slower on an AVX2 one (docs/benchmarks.md, limits).
MIN_BLOCK_SAVING = 0.98


def _axis_groups(graph: Graph, regions: dict[str, Region], axis: int, groups: int) -> list[list[int]]:
    """Split the grid rows (axis 0) or columns into at most `groups` sets whose members have similar
    changed extents, minimising the window area the sets' largest extents make every node compute."""
    local = [n for n in graph.nodes if regions[n.name].change is Change.LOCAL]  # the input always is
    spans = [regions[n.name].rows if axis == 0 else regions[n.name].cols for n in local]
    weight = np.array([2.0 * n.macs * n.numel / (n.spatial_size[0] * n.spatial_size[1]) for n in local])
    extent = np.stack([s.hi - s.lo for s in spans], axis=1).clip(min=0)  # (positions, nodes)
    order = np.argsort((extent * weight).sum(1), kind="stable")
    count = len(order)

    def cost(a: int, b: int) -> float:  # positions order[a:b] computed at their largest extents
        return float((b - a) * (extent[order[a:b]].max(0) * weight).sum())

    # best[k][j]: cheapest split of the first j sorted positions into k sets
    best = [[0.0] + [math.inf] * count]
    cut: list[list[int]] = [[0] * (count + 1)]
    for k in range(1, groups + 1):
        row, back = [math.inf] * (count + 1), [0] * (count + 1)
        for j in range(1, count + 1):
            for i in range(k - 1, j):
                c = best[k - 1][i] + cost(i, j)
                if c < row[j]:
                    row[j], back[j] = c, i
        best.append(row)
        cut.append(back)
    # Each extra block costs fixed per-chunk overhead and smaller batches: take one only for a real saving.
    k = 1
    while k < groups and best[k + 1][count] < MIN_BLOCK_SAVING * best[k][count]:
        k += 1
    bounds, j = [], count
    while k > 0:
        i = cut[k][j]
        bounds.append((i, j))
        j, k = i, k - 1
    return [sorted(order[i:j].tolist()) for i, j in reversed(bounds)]


#: Position blocks per axis: up to 9 blocks, each with its own window sizes and plan.
GROUPS_PER_AXIS = 3


def position_blocks(graph: Graph, grid: OcclusionGrid, groups_per_axis: int = GROUPS_PER_AXIS) -> list[OcclusionGrid]:
    """The grid cut into blocks of positions with similar changed regions.

    One window size serves every position of a block, so grouping positions whose regions are alike
    (border positions have smaller ones; so do positions aligned with the pooling grid) saves the
    computation a single grid-wide window would waste on them. One group per axis makes one block.
    """
    regions = changed_regions(graph, grid)
    rows = _axis_groups(graph, regions, 0, groups_per_axis)
    cols = _axis_groups(graph, regions, 1, groups_per_axis)
    return [grid.block(r, c) for r in rows for c in cols]
