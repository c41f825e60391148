"""The PyTorch backend: evaluates a program for every occlusion position under a plan.

An interpreter over the IR whose environment starts from the clean image's activations (the
"base"). Each node's value for a chunk of positions is held in one of three representations:

* BASE: the node is unchanged at every position, so its value is the base activation;
* WIN:  a dense (N, ..., h, w) tensor holding, for position n, the window of the output map at
        the node's per-position offset; it contains every changed element, the rest equals the base;
* FULL: whole maps, (N, ...).

Incremental nodes produce WIN, full nodes FULL; conversions happen where a consumer reads an input
in the other representation (paste into the base map, or cut windows out of whole maps).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from hyinf.graph.geometry import Change, OcclusionGrid, Region, changed_regions, read_start
from hyinf.graph.ir import LOCAL_OPS, Graph, Node, Op
from hyinf.planner.plan import Mode, Plan
from hyinf.runtime.occlusion import PatchSpans
from hyinf.runtime.program import TorchProgram
from hyinf.runtime.windows import gather_each, gather_shared, overlay, paste


class Repr(enum.Enum):
    BASE = "base"
    WIN = "window"
    FULL = "full"


def _to_last(t: torch.Tensor, spatial: tuple[int, int]) -> torch.Tensor:
    """Move the spatial axes to the end (a view; no-op for NCHW)."""
    return t.movedim(spatial, (-2, -1))


def _from_last(t: torch.Tensor, spatial: tuple[int, int]) -> torch.Tensor:
    return t.movedim((-2, -1), spatial)


@dataclass(frozen=True, eq=False)
class _Read:
    """How an incremental node reads one input's window: rows [top, top + rows) of the padded map."""

    src: str
    top: torch.Tensor  # per grid row
    left: torch.Tensor  # per grid column
    rows: int
    cols: int
    pad: tuple[int, int, int, int]  # left, right, top, bottom (F.pad order)
    pad_value: float
    passthrough: bool  # the input's window is exactly this window: use its tensor as it is
    fits: bool  # the input's window lies inside the read window at every position


def windowable(node: Node) -> bool:
    """Whether an op can compute a window of its output from windows of its inputs."""
    if node.op is Op.RESHAPE:
        return node.spatial is not None
    return node.op in LOCAL_OPS or node.op in (Op.POINTWISE, Op.INPUT)


def representations(graph: Graph, regions: dict[str, Region], plan: Plan) -> dict[str, Repr]:
    """The representation each node's value takes under `plan` (the plan's effective modes)."""
    out: dict[str, Repr] = {}
    for node in graph.nodes:
        change = regions[node.name].change
        if change is Change.UNCHANGED:
            out[node.name] = Repr.BASE
        elif change is Change.LOCAL and plan.mode(node.name) is Mode.INCREMENTAL and windowable(node):
            out[node.name] = Repr.WIN
        else:
            out[node.name] = Repr.FULL
    return out


class Engine:
    """Compiled evaluation of one program over one occlusion grid under one plan; reusable across images."""

    def __init__(self, program: TorchProgram, grid: OcclusionGrid, plan: Plan) -> None:
        self.program, self.grid, self.plan = program, grid, plan
        self.graph = program.graph
        self.device = program.device
        self.regions = changed_regions(self.graph, grid)
        self.repr = representations(self.graph, self.regions, plan)
        self.spans = PatchSpans(grid, self.device)
        self.offsets = {
            name: (self._t(r.rows.offset), self._t(r.cols.offset))
            for name, r in self.regions.items()
            if self.repr[name] is Repr.WIN
        }
        self.reads = {n.name: self._reads(n) for n in self.graph.nodes if self.repr[n.name] is Repr.WIN}
        self.gap_incremental = {
            n.name
            for n in self.graph.nodes
            if n.op is Op.GLOBAL_AVG_POOL and self.repr[n.inputs[0]] is Repr.WIN and plan.mode(n.name) is Mode.INCREMENTAL
        }

    def _t(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=torch.long, device=self.device)

    def _reads(self, node: Node) -> list[_Read | None]:
        """One entry per input: how to read it as a window, or None to use its base value as it is."""
        region = self.regions[node.name]
        assert region.rows is not None and region.cols is not None
        if node.op is Op.INPUT:
            return []
        if node.op in LOCAL_OPS:
            w = node.window
            assert w is not None
            (top, rows), (left, cols) = read_start(node, region.rows, 0), read_start(node, region.cols, 1)
            pad = (w.pad_before[1], w.pad_after[1], w.pad_before[0], w.pad_after[0])
            return [self._read(node.inputs[0], top, left, rows, cols, pad, self.program.local[node.name].pad_value, region)]
        reads: list[_Read | None] = []
        for name in node.inputs:
            src = self.graph[name]
            if src.spatial is None or src.spatial_size != node.spatial_size:
                reads.append(None)  # unchanged and broadcast over space (the geometry guarantees it)
            else:
                reads.append(self._read(name, region.rows.offset, region.cols.offset, region.rows.size, region.cols.size, (0, 0, 0, 0), 0.0, region))
        return reads

    def _read(self, src: str, top: np.ndarray, left: np.ndarray, rows: int, cols: int, pad: tuple[int, int, int, int], value: float, region: Region) -> _Read:
        passthrough = fits = False
        if self.repr[src] is Repr.WIN:
            s = self.regions[src]
            assert s.rows is not None and s.cols is not None and region.rows is not None and region.cols is not None
            passthrough = (
                pad == (0, 0, 0, 0)
                and (s.rows.size, s.cols.size) == (rows, cols)
                and np.array_equal(s.rows.offset, top)
                and np.array_equal(s.cols.offset, left)
            )
            rel_top, rel_left = s.rows.offset + pad[2] - top, s.cols.offset + pad[0] - left
            fits = bool((rel_top >= 0).all() and (rel_top + s.rows.size <= rows).all() and (rel_left >= 0).all() and (rel_left + s.cols.size <= cols).all())
        return _Read(src, self._t(top), self._t(left), rows, cols, pad, value, passthrough, fits)

    # ---- per image -------------------------------------------------------------------------

    def base(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every node's value on the clean image (batch 1)."""
        values: dict[str, torch.Tensor] = {}
        for node in self.graph.nodes:
            args = [values[i] for i in node.inputs] if node.inputs else [image]
            values[node.name] = self.program.full[node.name](*args)
        return values

    def prepare(self, image: torch.Tensor, fill: torch.Tensor) -> ImageRun:
        """Start on one image: computes its base activations."""
        return ImageRun(self, image, fill)


class ImageRun:
    """State for one image: base activations and padded copies of them."""

    def __init__(self, engine: Engine, image: torch.Tensor, fill: torch.Tensor) -> None:
        self.e = engine
        self.image, self.fill = image, fill
        self.base = engine.base(image)
        self._padded: dict[tuple[str, tuple[int, int, int, int], float], torch.Tensor] = {}
        self.kernels: dict[Repr, Callable[[Node], torch.Tensor]] = {Repr.WIN: self._window_node, Repr.FULL: self._full_node}

    def chunks(self, batch_size: int) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield (first position, model outputs (N, ...)) for consecutive chunks of grid positions."""
        total = len(self.e.grid)
        for start in range(0, total, batch_size):
            yield start, self.chunk(torch.arange(start, min(start + batch_size, total), device=self.e.device))

    @property
    def base_output(self) -> torch.Tensor:
        return self.base[self.e.graph.output]

    def chunk(self, idx: torch.Tensor) -> torch.Tensor:
        e = self.e
        cols = e.grid.shape[1]
        self.i, self.j, self.n = idx // cols, idx % cols, len(idx)
        self.env: dict[str, torch.Tensor] = {}
        remaining = {name: len(c) for name, c in e.graph.consumers.items()}
        for node in e.graph.nodes:
            rep = e.repr[node.name]
            if rep is not Repr.BASE:
                self.env[node.name] = self.kernels[rep](node)
            for name in dict.fromkeys(node.inputs):
                remaining[name] -= 1
                if remaining[name] == 0 and name != e.graph.output:
                    self.env.pop(name, None)
        return self.full_value(e.graph.output)

    # ---- reading inputs ----------------------------------------------------------------------

    def full_value(self, name: str) -> torch.Tensor:
        """Whole maps of node `name` for every position of the chunk."""
        rep, base = self.e.repr[name], self.base[name]
        if rep is Repr.FULL:
            return self.env[name]
        whole = base.expand(self.n, *base.shape[1:])
        if rep is Repr.BASE:
            return whole
        spatial = self.e.graph[name].spatial
        assert spatial is not None
        top, left = self.e.offsets[name]
        dst = _to_last(whole, spatial).contiguous()
        return _from_last(paste(dst, _to_last(self.env[name], spatial), top[self.i], left[self.j]), spatial)

    def _padded_base(self, name: str, pad: tuple[int, int, int, int], value: float) -> torch.Tensor:
        key = (name, pad, value)
        if key not in self._padded:
            spatial = self.e.graph[name].spatial
            assert spatial is not None
            self._padded[key] = torch.nn.functional.pad(_to_last(self.base[name], spatial), pad, value=value).contiguous()
        return self._padded[key]

    def window_value(self, read: _Read) -> torch.Tensor:
        """Each position's read window of an input, in the input's own layout."""
        if read.passthrough:
            return self.env[read.src]
        spatial = self.e.graph[read.src].spatial
        assert spatial is not None
        top, left = read.top[self.i], read.left[self.j]
        rep = self.e.repr[read.src]
        if rep is Repr.FULL:
            src = torch.nn.functional.pad(_to_last(self.env[read.src], spatial), read.pad, value=read.pad_value)
            return _from_last(gather_each(src, top, left, read.rows, read.cols), spatial)
        out = gather_shared(self._padded_base(read.src, read.pad, read.pad_value), top, left, read.rows, read.cols)
        if rep is Repr.WIN:
            stop, sleft = self.e.offsets[read.src]
            rel_top, rel_left = stop[self.i] + read.pad[2] - top, sleft[self.j] + read.pad[0] - left
            win = _to_last(self.env[read.src], spatial)
            out = paste(out, win, rel_top, rel_left) if read.fits else overlay(out, win, rel_top, rel_left)
        return _from_last(out, spatial)

    # ---- evaluating nodes --------------------------------------------------------------------

    def _full_node(self, node: Node) -> torch.Tensor:
        e = self.e
        if node.op is Op.INPUT:
            return e.spans.occlude(self.image, self.i, self.j, self.fill)
        if node.name in e.gap_incremental:
            return self._gap_update(node)
        return e.program.full[node.name](*(self.full_value(i) for i in node.inputs))

    def _window_node(self, node: Node) -> torch.Tensor:
        e = self.e
        region = e.regions[node.name]
        assert region.rows is not None and region.cols is not None
        top, left = e.offsets[node.name]
        top, left = top[self.i], left[self.j]
        if node.op is Op.INPUT:
            win = gather_shared(self.image, top, left, region.rows.size, region.cols.size)
            return torch.where(e.spans.mask(self.i, self.j, top, left, region.rows.size, region.cols.size), self.fill, win)
        reads = e.reads[node.name]
        if node.op in LOCAL_OPS:
            kernel = e.program.local[node.name]
            out = kernel.fn(self.window_value(reads[0]))  # type: ignore[arg-type]
            if kernel.divisor is not None:
                out = out / gather_shared(kernel.divisor, top, left, region.rows.size, region.cols.size)
            return out
        args = [self.base[name] if read is None else self.window_value(read) for name, read in zip(node.inputs, reads)]
        return e.program.full[node.name](*args)

    def _gap_update(self, node: Node) -> torch.Tensor:
        """Exact global average pooling from the changed window alone: base mean + window delta / area."""
        src = self.e.graph[node.inputs[0]]
        region = self.e.regions[src.name]
        assert src.spatial is not None and region.rows is not None and region.cols is not None
        top, left = self.e.offsets[src.name]
        new = _to_last(self.env[src.name], src.spatial)
        old = gather_shared(_to_last(self.base[src.name], src.spatial), top[self.i], left[self.j], region.rows.size, region.cols.size)
        rows, cols = src.spatial_size
        delta = (new - old).sum(dim=(-2, -1)) / (rows * cols)
        return self.base[node.name] + delta.reshape(self.n, *node.shape[1:])
