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
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hyinf.graph.geometry import Change, OcclusionGrid, Region, changed_regions, read_start
from hyinf.graph.ir import LOCAL_OPS, Graph, Node, Op
from hyinf.planner.plan import Mode, Plan
from hyinf.runtime.memory import retain_freed_memory
from hyinf.runtime.occlusion import PatchSpans
from hyinf.runtime.program import TorchProgram
from hyinf.runtime.tail import TAIL_BATCH, WINDOWED_SHARE, Cells, Tail, WindowedLinear, batches, graph_tail
from hyinf.runtime.windows import each_map, from_rows, gather, middle_shape, overlay, paste, to_rows, window_index


class Repr(enum.Enum):
    BASE = "unchanged"
    WIN = "incremental"
    FULL = "full"


def _to_last(t: torch.Tensor, spatial: tuple[int, int]) -> torch.Tensor:
    """Move the spatial axes to the end (a view; no-op for NCHW)."""
    return t.movedim(spatial, (-2, -1))


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
            return [self._read(node.inputs[0], top, left, rows, cols, pad, self.program.local[node.name].pad_value)]
        reads: list[_Read | None] = []
        for name in node.inputs:
            src = self.graph[name]
            if src.spatial is None or src.spatial_size != node.spatial_size:
                reads.append(None)  # unchanged and broadcast over space (the geometry guarantees it)
            else:
                reads.append(self._read(name, region.rows.offset, region.cols.offset, region.rows.size, region.cols.size, (0, 0, 0, 0), 0.0))
        return reads

    def _read(self, src: str, top: np.ndarray, left: np.ndarray, rows: int, cols: int, pad: tuple[int, int, int, int], value: float) -> _Read:
        passthrough = fits = False
        if self.repr[src] is Repr.WIN:
            s = self.regions[src]
            assert s.rows is not None and s.cols is not None
            passthrough = (
                pad == (0, 0, 0, 0)
                and (s.rows.size, s.cols.size) == (rows, cols)
                and np.array_equal(s.rows.offset, top)
                and np.array_equal(s.cols.offset, left)
            )
            rel_top, rel_left = s.rows.offset + pad[2] - top, s.cols.offset + pad[0] - left
            fits = bool((rel_top >= 0).all() and (rel_top + s.rows.size <= rows).all() and (rel_left >= 0).all() and (rel_left + s.cols.size <= cols).all())
        return _Read(src, self._t(top), self._t(left), rows, cols, pad, value, passthrough, fits)

    def own_read(self, name: str) -> _Read:
        """Reading a node's own changed window: what converting its whole maps to windows costs."""
        r = self.regions[name]
        assert r.rows is not None and r.cols is not None
        return self._read(name, r.rows.offset, r.cols.offset, r.rows.size, r.cols.size, (0, 0, 0, 0), 0.0)

    def changed_cells(self, source: str, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The cells (row * cols + col) of `source`'s map that may change at positions `idx` of the
        grid, position after position, and how many each position has: its window's, or all."""
        (rows, cols), n = self.graph[source].spatial_size, len(idx)
        if self.repr[source] is Repr.WIN:
            region = self.regions[source]
            assert region.rows is not None and region.cols is not None
            h, w = region.rows.size, region.cols.size
            top, left = self.offsets[source]
            top, left = top[idx // self.grid.shape[1]], left[idx % self.grid.shape[1]]
            return window_index(top, left, h, w, cols), torch.full((n,), h * w, device=idx.device)
        return torch.arange(rows * cols, device=idx.device).repeat(n), torch.full((n,), rows * cols, device=idx.device)

    def prepare(self, clean: CleanImage, fill: torch.Tensor) -> ImageRun:
        return ImageRun(self, clean, fill)


class CleanImage:
    """The clean images' activations (a batch of one or more images), shared by every block of
    positions, and padded copies of them."""

    def __init__(self, program: TorchProgram, image: torch.Tensor) -> None:
        retain_freed_memory()  # chunks reuse freed buffers instead of faulting in fresh pages
        self.program, self.image = program, image
        self.base: dict[str, torch.Tensor] = {}
        for node in program.graph.nodes:
            args = [self.base[i] for i in node.inputs] if node.inputs else [image]
            self.base[node.name] = program.full[node.name](*args)
        self._rows: dict[tuple[str, tuple[int, int, int, int], float], torch.Tensor] = {}
        self.memory = {t.untyped_storage().data_ptr() for t in self.base.values()}  # never to be overwritten

    @property
    def output(self) -> torch.Tensor:
        return self.base[self.program.graph.output]

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor it holds: the images, their activations and the padded copies made so far."""
        return [self.image, *self.base.values(), *self._rows.values()]

    def rows(self, name: str, pad: tuple[int, int, int, int] = (0, 0, 0, 0), value: float = 0.0) -> torch.Tensor:
        """The clean value of `name`, padded, in pixel-major rows (computed once per image)."""
        key = (name, pad, value)
        if key not in self._rows:
            spatial = self.program.graph[name].spatial
            assert spatial is not None
            padded = F.pad(_to_last(self.base[name], spatial), pad, value=value)
            self._rows[key] = to_rows(padded, (padded.dim() - 2, padded.dim() - 1)).contiguous()
        return self._rows[key]


class ImageRun:
    """Clean images through one engine: evaluates chunks of (image, position) pairs.

    `fill` is the patch value, (1 or images, C, 1, 1). Positions of different images share chunks,
    so a batch of small images still makes large chunks.
    """

    def __init__(self, engine: Engine, clean: CleanImage, fill: torch.Tensor) -> None:
        self.e = engine
        self.clean, self.image, self.base, self.fill = clean, clean.image, clean.base, fill
        self.images = clean.image.shape[0]
        self.positions = torch.as_tensor(engine.grid.positions(), device=engine.device)
        # Unbound (a subclass's own where it overrides them): bound methods kept on self would make every run a
        # reference cycle, holding its activations (GBs for vgg16) until the garbage collector happens to run.
        self.kernels: dict[Repr, Callable[[ImageRun, Node], torch.Tensor]] = {Repr.WIN: type(self)._window_node,
                                                                               Repr.FULL: type(self)._full_node}

    def chunks(self, batch_size: int, only: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield (images, positions in the whole grid, model outputs (N, ...)) for chunks of pairs;
        with `only` (one boolean per position of the whole grid), for those positions alone."""
        for ex, idx in self.pairs(batch_size, only):
            yield ex, self.positions[idx], self.chunk(ex, idx)

    def pairs(self, batch_size: int, only: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, positions in this engine's grid) of each chunk."""
        per_image = len(self.e.grid)
        pairs = torch.arange(self.images * per_image, device=self.e.device)
        if only is not None:
            pairs = pairs[only[self.positions[pairs % per_image]]]
        for start in range(0, len(pairs), batch_size):
            chosen = pairs[start : start + batch_size]
            yield chosen // per_image, chosen % per_image

    def _each(self, t: torch.Tensor) -> torch.Tensor:
        """A per-image tensor (batch 1 broadcasts) picked for every position of the chunk."""
        return t.index_select(0, self.ex) if t.shape[0] > 1 else t

    def _maps(self, pixels: int) -> torch.Tensor | None:
        """First rows of each position's image in a pixel-major batch of clean maps."""
        return self.ex * pixels if self.images > 1 else None

    def chunk(self, ex: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The model's outputs for (image, position) pairs."""
        return self._run(ex, idx, self.e.graph.nodes, {}, self.e.graph.output)

    def head(self, ex: torch.Tensor, idx: torch.Tensor, tail: Tail) -> torch.Tensor:
        """The value of the tail's cut node for (image, position) pairs: the model up to its tail."""
        return self._run(ex, idx, self.e.graph.nodes[: -len(tail.nodes)], {}, tail.cut)

    def tail(self, ex: torch.Tensor, idx: torch.Tensor, tail: Tail, cut: torch.Tensor) -> torch.Tensor:
        """The model's outputs from the cut node's values of (image, position) pairs."""
        return self._run(ex, idx, tail.nodes, {tail.cut: cut}, self.e.graph.output)

    def changed_cells(self, ex: torch.Tensor, idx: torch.Tensor, tail: Tail, source: str) -> Cells:
        """What changed in the map of `source` (a node before the tail's cut) for (image, position)
        pairs, cell by cell: the input of a windowed tail."""
        return Cells(self.changed_delta(ex, idx, tail, source), *self.e.changed_cells(source, idx))

    def changed_delta(self, ex: torch.Tensor, idx: torch.Tensor, tail: Tail, source: str) -> torch.Tensor:
        """The change of `source`'s map at the cells `Engine.changed_cells` lists, in rows (cells, channels)."""
        self._interpret(ex, idx, self.e.graph.nodes[: -len(tail.nodes) - 1], {}, source)
        if self.e.repr[source] is Repr.WIN:
            return self._window_delta(source)[0]
        spatial, _ = self._layout(source)  # full maps (never the clean value: the source reads the image)
        pixels = math.prod(self.e.graph[source].spatial_size)
        new = to_rows(self.env[source], spatial).view(self.n, pixels, -1)
        old = self._each(self.clean.rows(source).view(self.images, pixels, -1))
        return (new - old).reshape(self.n * pixels, -1)

    def clean_value(self, name: str, ex: torch.Tensor) -> torch.Tensor:
        """A node's clean value for each of the images `ex`."""
        base = self.base[name]
        return base.index_select(0, ex) if base.shape[0] > 1 else base.expand(len(ex), *base.shape[1:])

    def _run(self, ex: torch.Tensor, idx: torch.Tensor, nodes: tuple[Node, ...], env: dict[str, torch.Tensor], result: str) -> torch.Tensor:
        self._interpret(ex, idx, nodes, env, result)
        return self.full_value(result)

    def _interpret(self, ex: torch.Tensor, idx: torch.Tensor, nodes: tuple[Node, ...], env: dict[str, torch.Tensor], result: str) -> None:
        """Evaluate `nodes` for (image, position) pairs into `self.env`, starting from `env`, keeping
        `result` and dropping other values once nothing more reads them."""
        e = self.e
        cols = e.grid.shape[1]
        self.ex, self.i, self.j, self.n = ex, idx // cols, idx % cols, len(idx)
        self.env = env
        self.remaining = {name: len(c) for name, c in e.graph.consumers.items()}
        for node in nodes:
            rep = e.repr[node.name]
            if rep is not Repr.BASE:
                self.env[node.name] = self.evaluate(node, rep)
            for name in dict.fromkeys(node.inputs):
                self.remaining[name] -= 1
                if self.remaining[name] == 0 and name not in (e.graph.output, result):
                    self.env.pop(name, None)

    def evaluate(self, node: Node, rep: Repr) -> torch.Tensor:
        """One node's value for the chunk (the profiler overrides this to time it)."""
        return self.kernels[rep](self, node)

    # ---- reading inputs ----------------------------------------------------------------------

    def _layout(self, name: str) -> tuple[tuple[int, int], tuple[int, ...]]:
        node = self.e.graph[name]
        assert node.spatial is not None
        return node.spatial, middle_shape(node.shape, node.spatial)

    def _window_size(self, name: str) -> tuple[int, int]:
        region = self.e.regions[name]
        assert region.rows is not None and region.cols is not None
        return region.rows.size, region.cols.size

    def full_value(self, name: str) -> torch.Tensor:
        """Whole maps of node `name` for every position of the chunk."""
        rep = self.e.repr[name]
        if rep is Repr.FULL:
            return self.env[name]
        if rep is Repr.BASE:
            return self.clean_value(name, self.ex)
        spatial, middle = self._layout(name)
        size = self.e.graph[name].spatial_size
        top, left = self.e.offsets[name]
        pixels = size[0] * size[1]
        maps = self._maps(pixels)
        read = None if maps is None else (maps[:, None] + torch.arange(pixels, device=maps.device)).reshape(-1)
        win = to_rows(self.env[name], spatial)
        out = self.place(self.clean.rows(name), read, size, win, self._window_size(name), top[self.i], left[self.j], True)
        return from_rows(out, self.n, size, middle, spatial)

    def window_value(self, read: _Read) -> torch.Tensor:
        """Each position's read window of an input, in the input's own layout."""
        if read.passthrough:
            return self.env[read.src]
        spatial, middle = self._layout(read.src)
        rows, cols = self.e.graph[read.src].spatial_size
        prows, pcols = rows + read.pad[2] + read.pad[3], cols + read.pad[0] + read.pad[1]
        top, left = read.top[self.i], read.left[self.j]
        rep = self.e.repr[read.src]
        if rep is Repr.FULL:
            padded = F.pad(_to_last(self.env[read.src], spatial), read.pad, value=read.pad_value)
            src = to_rows(padded, (padded.dim() - 2, padded.dim() - 1))
            out = gather(src, window_index(top, left, read.rows, read.cols, pcols, each_map(self.n, prows * pcols, top.device)))
        else:
            src = self.clean.rows(read.src, read.pad, read.pad_value)
            index = window_index(top, left, read.rows, read.cols, pcols, self._maps(prows * pcols))
            if rep is Repr.WIN:
                stop, sleft = self.e.offsets[read.src]
                rel_top, rel_left = stop[self.i] + read.pad[2] - top, sleft[self.j] + read.pad[0] - left
                win, size = to_rows(self.env[read.src], spatial), self._window_size(read.src)
                out = self.place(src, index, (read.rows, read.cols), win, size, rel_top, rel_left, read.fits)
            else:
                out = gather(src, index)
        return from_rows(out, self.n, (read.rows, read.cols), middle, spatial)

    def place(self, src: torch.Tensor, read: torch.Tensor | None, dst_size: tuple[int, int], win: torch.Tensor,
              win_size: tuple[int, int], top: torch.Tensor, left: torch.Tensor, fits: bool) -> torch.Tensor:
        """Maps of `dst_size` made of rows `read` of `src` (None: `src` whole for every position), with
        window n written over map n at (top[n], left[n]): pasted where every window fits, else overlaid.
        Here a gather and an in-place paste; the ONNX Runtime lowering makes one gather of both."""
        out = src.repeat(self.n, 1) if read is None else gather(src, read)
        return (paste if fits else overlay)(out, dst_size, win, win_size, top, left)

    # ---- evaluating nodes --------------------------------------------------------------------

    def _full_node(self, node: Node) -> torch.Tensor:
        e = self.e
        if node.op is Op.INPUT:
            images = e.spans.occlude(self._each(self.image), self.i, self.j, self._each(self.fill))
            return images.contiguous(memory_format=torch.channels_last)  # the layout CPU convolutions prefer
        if node.name in e.gap_incremental:
            return self._gap_update(node)
        return self._kernel(node, [self.full_value(i) for i in node.inputs])

    def _kernel(self, node: Node, args: list[torch.Tensor]) -> torch.Tensor:
        """The node's kernel; its in-place form when the first argument is a value nothing else will read."""
        inplace = self.e.program.inplace.get(node.name)
        if inplace is not None and self._disposable(node.inputs[0], args[0]):
            return inplace(*args)
        return self.e.program.full[node.name](*args)

    def _disposable(self, name: str, value: torch.Tensor) -> bool:
        """Whether `value` may be overwritten: a fresh tensor (not the clean image's), or the last read of
        an input no other live value shares memory with."""
        stored = self.env.get(name)
        if stored is None or stored is not value:  # a gathered window or pasted map made for this call
            return self.e.repr[name] is not Repr.BASE
        if self.remaining[name] != 1 or name == self.e.graph.output:
            return False
        memory = value.untyped_storage().data_ptr()
        if memory in self.clean.memory:
            return False
        return not any(k != name and v.untyped_storage().data_ptr() == memory for k, v in self.env.items())

    def _window_node(self, node: Node) -> torch.Tensor:
        e = self.e
        size = self._window_size(node.name)
        top, left = e.offsets[node.name]
        top, left = top[self.i], left[self.j]
        if node.op is Op.INPUT:
            rows, cols = node.spatial_size
            win = gather(self.clean.rows(node.name), window_index(top, left, *size, cols, self._maps(rows * cols)))
            mask = e.spans.mask(self.i, self.j, top, left, *size).reshape(-1, 1)
            fill = self._each(self.fill).reshape(-1, 1, node.shape[1]).expand(self.n, size[0] * size[1], -1)
            win = torch.where(mask, fill.reshape(-1, node.shape[1]), win)
            return from_rows(win, self.n, size, (node.shape[1],), (2, 3))
        reads = e.reads[node.name]
        if node.op in LOCAL_OPS:
            kernel = e.program.local[node.name]
            out = kernel.fn(self.window_value(reads[0]))  # type: ignore[arg-type]
            if kernel.divisor is not None:
                divisor = to_rows(kernel.divisor, (2, 3))
                index = window_index(top, left, *size, node.spatial_size[1])
                out = out / from_rows(gather(divisor, index), self.n, size, (1,), (2, 3))
            return out
        args = [self._each(self.base[name]) if read is None else self.window_value(read) for name, read in zip(node.inputs, reads)]
        return self._kernel(node, args)

    def _gap_update(self, node: Node) -> torch.Tensor:
        """Exact global average pooling from the changed window alone: base mean + window delta / area."""
        src = node.inputs[0]
        rows, cols = self.e.graph[src].spatial_size
        delta, _, _, size = self._window_delta(src)
        mean = delta.view(self.n, size[0] * size[1], -1).sum(1) / (rows * cols)
        return self._each(self.base[node.name]) + mean.reshape(self.n, *node.shape[1:])

    def _window_delta(self, src: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]]:
        """An incremental node's window minus the clean values there, in rows, with each position's
        window top and left and the window's size."""
        spatial, _ = self._layout(src)
        rows, cols = self.e.graph[src].spatial_size
        size = self._window_size(src)
        top, left = self.e.offsets[src]
        top, left = top[self.i], left[self.j]
        old = gather(self.clean.rows(src), window_index(top, left, *size, cols, self._maps(rows * cols)))
        return to_rows(self.env[src], spatial) - old, top, left, size


class BlockedEngine:
    """The whole grid as blocks of positions with similar changed regions, each with its own engine
    (and plan: a node may be worth evaluating incrementally in one block and fully in another).

    Where the model ends in a tail that every block evaluates fully, the positions of all blocks
    run it together, in larger batches than the chunks that fit in memory before it."""

    def __init__(self, program: TorchProgram, grid: OcclusionGrid, blocks: list[tuple[OcclusionGrid, Plan]], source: str = "") -> None:
        self.program, self.grid, self.source = program, grid, source  # source: where the plans came from
        self.engines = [Engine(program, block, plan) for block, plan in blocks]
        tail = graph_tail(program.graph)
        shared = tail is not None and all(e.repr[n.name] is Repr.FULL for e in self.engines for n in (program.graph[tail.cut], *tail.nodes))
        self.tail = tail if shared else None
        self.windowed = self._windowed()

    def _windowed(self) -> WindowedLinear | None:
        """The tail's first layer from changed cells, where that saves work over the dense layer."""
        if self.tail is None:
            return None
        windowed = WindowedLinear.find(self.program, self.tail)
        if windowed is None:
            return None
        changed = 0
        for engine in self.engines:
            rep = engine.repr[windowed.source]
            area = engine.regions[windowed.source].window_area if rep is Repr.WIN else windowed.cells if rep is Repr.FULL else 0
            changed += area * len(engine.grid)
        return windowed if changed <= WINDOWED_SHARE * windowed.cells * len(self.grid) else None

    @property
    def strategy(self) -> str:
        return self.engines[0].plan.strategy

    @property
    def node_modes(self) -> dict[str, str]:
        """How each node is evaluated at most of the grid's positions."""
        votes: dict[str, dict[str, int]] = {n.name: {} for n in self.program.graph.nodes}
        for engine in self.engines:
            for name, rep in engine.repr.items():
                votes[name][rep.value] = votes[name].get(rep.value, 0) + len(engine.grid)
        return {name: max(v, key=v.__getitem__) for name, v in votes.items()}

    def chunks(self, clean: CleanImage, fill: torch.Tensor, batch_size: int, only: torch.Tensor | None = None,
               prepare: Callable[[Engine, CleanImage, torch.Tensor], ImageRun] = Engine.prepare,
               ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield (images, positions in the grid, model outputs) for every image and position (or the
        positions `only` marks), block by block; `prepare` makes each block's run (CUDA graphs replace it)."""
        if self.tail is None:
            for engine in self.engines:
                yield from prepare(engine, clean, fill).chunks(batch_size, only)
            return
        tail, runs = self.tail, [prepare(engine, clean, fill) for engine in self.engines]
        limit = self.tail_batch(batch_size)
        if self.windowed is None:
            heads = ((ex, run.positions[idx], run.head(ex, idx, tail)) for run in runs for ex, idx in run.pairs(batch_size, only))
            for ex, positions, cut in batches(heads, limit):
                yield ex, positions, runs[0].tail(ex, torch.zeros_like(positions), tail, cut)  # tail nodes are full: positions unused
            return
        first, source, after = self.windowed.node.name, self.windowed.source, self.dense_tail()
        parts = ((ex, run.positions[idx], *run.changed_cells(ex, idx, tail, source)) for run in runs for ex, idx in run.pairs(batch_size, only))
        for ex, positions, delta, cell, counts in batches(parts, limit):
            value = self.windowed(runs[0].clean_value(first, ex), Cells(delta, cell, counts))
            yield ex, positions, runs[0].tail(ex, torch.zeros_like(positions), after, value)

    def dense_tail(self) -> Tail:
        """The tail's dense part, run on the values the heads give: the whole tail, or the part after its
        windowed first layer."""
        assert self.tail is not None
        if self.windowed is None:
            return self.tail
        return Tail(self.windowed.node.name, self.tail.nodes[1:], self.tail.bytes_per_position)

    def tail_batch(self, batch_size: int) -> int:
        """How many positions run the tail together, given the chunk size before it."""
        from hyinf.runtime.budget import bytes_per_position  # it sizes engines: a cycle at import time

        assert self.tail is not None
        # Pending tail values take at most a quarter of the memory one chunk is allowed.
        return max(batch_size, min(TAIL_BATCH, batch_size * bytes_per_position(self) // (4 * self.tail.bytes_per_position)))
