"""CUDA graphs for the torch backend: each block's chunk program captured once per chunk shape and
replayed, so a chunk costs one launch instead of one per kernel (on a GPU, launches and Python set
the pace of hyinf's small window kernels, not FLOPs).

A graph reads and writes fixed addresses. The clean image's activations therefore live in buffers
kept per image-batch shape, and each new image is copied into them (its padded copies too) before
any replay; a chunk's (image, position) pairs are copied into the graph's own index buffers. Graphs
of one engine share one memory pool: they run one at a time and each output is copied out at once.
The switch is `Explainer(cuda_graphs=True)` (`hyinf explain --cuda-graphs`); where capture fails
(an operation that synchronises with the host), the engine runs eagerly and says why once.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hyinf.errors import SettingsError
from hyinf.runtime.engine import BlockedEngine, CleanImage, Engine, ImageRun, _to_last
from hyinf.runtime.tail import Tail
from hyinf.runtime.windows import to_rows

WARMUP = 2  # eager runs on a side stream before a capture, as CUDA graphs require


def check_cuda_graphs(enabled: bool, device: torch.device, backend: str, mode: str) -> bool:
    """CUDA graphs where they apply, else one line saying what they need."""
    if enabled and (device.type != "cuda" or backend == "ort" or mode == "naive"):  # `auto` runs torch then
        raise SettingsError("CUDA graphs replay hyinf's engine on a CUDA GPU: they need device cuda, backend torch and a "
                            f"mode other than naive (got device {device}, backend {backend}, mode {mode})")
    return enabled


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    ex: torch.Tensor  # the chunk's images and positions, copied in before each replay
    idx: torch.Tensor
    out: torch.Tensor  # overwritten by each replay: copied out at once


class _StaticClean:
    """The clean activations of one image-batch shape at fixed addresses: the first batch's, then
    each later batch copied into them."""

    def __init__(self, clean: CleanImage, fill: torch.Tensor) -> None:
        self.clean, self.fill = clean, fill.clone()

    def load(self, clean: CleanImage, fill: torch.Tensor) -> None:
        static = self.clean
        if clean is static:
            return
        static.image.copy_(clean.image)
        for name, value in clean.base.items():
            static.base[name].copy_(value)
        for (name, pad, value), rows in static._rows.items():  # padded copies made for earlier captures
            spatial = static.program.graph[name].spatial
            assert spatial is not None
            padded = F.pad(_to_last(static.base[name], spatial), pad, value=value)
            rows.copy_(to_rows(padded, (padded.dim() - 2, padded.dim() - 1)))
        self.fill.copy_(fill)


class GraphedRun(ImageRun):
    """An ImageRun whose chunks (and heads before a shared tail) replay captured graphs."""

    def __init__(self, engine: Engine, static: _StaticClean, graphs: dict[tuple[str, int], _Graph],
                 pool: tuple[int, int], broken: list[str]) -> None:
        super().__init__(engine, static.clean, static.fill)
        self.graphs, self.pool, self.broken = graphs, pool, broken

    def chunk(self, ex: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return self._replay("chunk", ex, idx, lambda e, i: ImageRun.chunk(self, e, i))

    def head(self, ex: torch.Tensor, idx: torch.Tensor, tail: Tail) -> torch.Tensor:
        return self._replay("head", ex, idx, lambda e, i: ImageRun.head(self, e, i, tail))

    def _replay(self, kind: str, ex: torch.Tensor, idx: torch.Tensor,
                eager: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if self.broken:
            return eager(ex, idx)
        key = (kind, len(idx))
        if key not in self.graphs:
            try:
                self.graphs[key] = _capture(eager, ex, idx, self.pool)
            except RuntimeError as e:  # an operation the capture cannot hold: this engine runs eagerly
                self.broken.append(str(e).splitlines()[0])
                warnings.warn(f"CUDA graph capture failed ({self.broken[0]}); running without CUDA graphs", RuntimeWarning, stacklevel=2)
                return eager(ex, idx)
        found = self.graphs[key]
        found.ex.copy_(ex)
        found.idx.copy_(idx)
        found.graph.replay()
        return found.out.clone()


def _capture(eager: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], ex: torch.Tensor, idx: torch.Tensor,
             pool: tuple[int, int]) -> _Graph:
    static_ex, static_idx = ex.clone(), idx.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # the warm-up also makes, eagerly, the padded clean copies a capture reads
        for _ in range(WARMUP):
            eager(static_ex, static_idx)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = eager(static_ex, static_idx)
    return _Graph(graph, static_ex, static_idx, out)


class GraphedEngine:
    """A BlockedEngine run through CUDA graphs: one per (block, kind of call, chunk size), captured on
    first use and replayed for every later chunk and image of the same batch shape."""

    def __init__(self, blocked: BlockedEngine) -> None:
        self.blocked = blocked
        self.pool = torch.cuda.graph_pool_handle()
        self.statics: dict[tuple[int, ...], _StaticClean] = {}
        self.graphs: dict[tuple[tuple[int, ...], int], dict[tuple[str, int], _Graph]] = {}
        self.broken: list[str] = []  # why capture failed, if it did

    def chunks(self, clean: CleanImage, fill: torch.Tensor, batch_size: int,
               only: torch.Tensor | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """`BlockedEngine.chunks`, each chunk replayed from its graph."""
        shape = tuple(clean.image.shape)
        if shape not in self.statics:
            self.statics[shape] = _StaticClean(clean, fill)
        static = self.statics[shape]
        static.load(clean, fill)
        index = {id(e): k for k, e in enumerate(self.blocked.engines)}

        def prepare(engine: Engine, _: CleanImage, __: torch.Tensor) -> ImageRun:
            graphs = self.graphs.setdefault((shape, index[id(engine)]), {})
            return GraphedRun(engine, static, graphs, self.pool, self.broken)

        yield from self.blocked.chunks(static.clean, static.fill, batch_size, only, prepare=prepare)
