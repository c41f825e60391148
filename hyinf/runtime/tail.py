"""A model's classifier tail: the nodes without spatial axes at its end, such as vgg16's three linear
layers, run for the positions of many chunks and blocks at once; and, where the tail starts with a
linear layer on flattened maps whose changed windows are small, that layer from the windows alone.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from hyinf.graph.ir import Graph, Node, Op
from hyinf.kept import Kept
from hyinf.runtime.program import TorchProgram


@dataclass(frozen=True)
class Tail:
    """A classifier such as vgg16's three linear layers: the nodes after `cut` (a value without spatial
    axes, such as the flattened maps), which read only the cut and each other and have no spatial axes
    either. `bytes_per_position` counts the cut's and the nodes' values."""

    cut: str
    nodes: tuple[Node, ...]
    bytes_per_position: int


# Positions of all chunks and blocks meet in the tail in batches up to this size: vgg16's 25088x4096
# linear layer ran at 89 GFLOP/s in chunks of at most 64 (less at the end of each block) and about
# 150 GFLOP/s at 512-729 on a 2-core EPYC, where its weights are streamed once per batch.
TAIL_BATCH = 512


def graph_tail(graph: Graph, element_size: int = 4) -> Tail | None:
    """The graph's longest tail: nodes without spatial axes, after a node without them, that read only
    that node and each other; None when there is none (the output has spatial axes)."""
    nodes, index = graph.nodes, {n.name: k for k, n in enumerate(graph.nodes)}
    if nodes[-1].name != graph.output:
        return None
    start, first_read = None, len(nodes)
    for k in range(len(nodes) - 1, 0, -1):
        node = nodes[k]
        if node.spatial is not None or not node.inputs:
            break
        first_read = min(first_read, *(index[i] for i in node.inputs))
        if first_read >= k - 1 and nodes[k - 1].spatial is None and nodes[k - 1].inputs:
            start = k
    if start is None:
        return None
    kept = nodes[start - 1 :]
    return Tail(nodes[start - 1].name, nodes[start:], element_size * sum(math.prod(n.shape[1:]) for n in kept))


def batches(parts: Iterable[tuple[torch.Tensor, ...]], limit: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """Consecutive parts (tuples of tensors, one row per position) concatenated into batches of at
    least `limit` rows (the last may hold fewer; empty parts are dropped): where chunks meet to run a
    model's tail together."""
    pending: list[tuple[torch.Tensor, ...]] = []
    rows = 0
    for part in parts:
        if len(part[0]) == 0:  # a block without positions in this run
            continue
        pending.append(part)
        rows += len(part[0])
        if rows >= limit:
            yield tuple(torch.cat(column) for column in zip(*pending))
            pending, rows = [], 0
    if pending:
        yield tuple(torch.cat(column) for column in zip(*pending))


class Cells(NamedTuple):
    """What changed in a map for a batch of positions, cell by cell: row r of `delta` (channels) is
    the change at cell `cell[r]` (row * cols + col of the map); the first counts[0] rows are the
    first position's, and so on."""

    delta: torch.Tensor  # (changed cells, channels)
    cell: torch.Tensor  # (changed cells,)
    counts: torch.Tensor  # (positions,)


# The windowed layer replaces the dense one where the changed cells are at most this share of all
# cells. vgg16's first layer for 729 positions on a 2-core EPYC: windows of 4x4 of 7x7 0.42 s
# against 0.90 s dense, 5x5 0.50 s, 6x6 (73%) 0.83 against 0.89 s, 7x7 1.04 against 0.88 s: the
# per-cell products run at 85-90% of the dense one's rate and write the output once per cell.
WINDOWED_SHARE = 0.75


@dataclass(frozen=True)
class WindowedLinear:
    """The tail's first node, a linear layer on the flattened maps of `source` (C, H, W), computed
    from the changed cells alone: clean output + the sum over changed cells of W[:, :, cell] @ delta.

    Where the changed windows are small, as in vgg16 under a projective-field threshold (4x4 of pool5's
    7x7), this does a third of the dense layer's work. The weights are used in cell-major order,
    (H*W, out, C), so that each cell's block is one contiguous matrix: a copy of the layer's weights,
    made once and kept while the weights live and are not modified.
    """

    source: str
    node: Node
    weight: torch.Tensor
    cells: int  # H * W

    @staticmethod
    def find(program: TorchProgram, tail: Tail) -> WindowedLinear | None:
        """The windowed form of the tail's first node, where it is a linear layer of flattened NCHW maps."""
        graph, first = program.graph, tail.nodes[0]
        cut = graph[tail.cut]
        if first.inputs != (cut.name,) or first.name not in program.linear or cut.op is not Op.RESHAPE:
            return None
        source = graph[cut.inputs[0]]
        if source.spatial != (2, 3) or len(source.shape) != 4 or cut.shape != (source.shape[0], math.prod(source.shape[1:])):
            return None
        weight = program.linear[first.name][0]
        if weight.dim() != 2 or weight.shape[1] != cut.shape[1]:
            return None
        return WindowedLinear(source.name, first, weight, math.prod(source.shape[2:]))

    def __call__(self, clean_out: torch.Tensor, changed: Cells) -> torch.Tensor:
        """The layer's output per position, from `clean_out` (positions, out), its clean value there."""
        blocks = cell_major(self.weight, self.cells)
        owner = torch.repeat_interleave(torch.arange(len(changed.counts), device=changed.cell.device), changed.counts)
        order = torch.argsort(changed.cell, stable=True)
        delta, owner = changed.delta.index_select(0, order), owner.index_select(0, order)
        out = clean_out.clone()
        start = 0
        for cell, count in enumerate(torch.bincount(changed.cell, minlength=self.cells).tolist()):
            if count:
                out.index_add_(0, owner[start : start + count], F.linear(delta[start : start + count], blocks[cell]))
            start += count
        return out


# Cell-major copies of linear layers' weights; each is as large as the layer (vgg16: 411 MB).
_CELL_MAJOR: Kept[tuple[weakref.ref[torch.Tensor], torch.Tensor]] = Kept(2)


def cell_major(weight: torch.Tensor, cells: int) -> torch.Tensor:
    """`weight` (out, C * cells) as (cells, out, C), kept while the weight lives unmodified."""
    key = (id(weight), weight._version, tuple(weight.shape), weight.dtype, weight.device, cells)

    def build() -> tuple[weakref.ref[torch.Tensor], torch.Tensor]:
        weakref.finalize(weight, _CELL_MAJOR.entries.pop, key, None)  # the copy goes with the weights
        return weakref.ref(weight), _permute(weight, cells)

    return _CELL_MAJOR.get(key, build, valid=lambda entry: entry[0]() is weight)[1]


def _permute(weight: torch.Tensor, cells: int) -> torch.Tensor:
    out, inputs = weight.shape
    src = weight.detach().view(out, inputs // cells, cells)
    blocks = torch.empty(cells, out, inputs // cells, dtype=weight.dtype, device=weight.device)
    # In slices of 16 output rows: twice as fast as one whole permuted copy on a 2-core CPU (0.21 s
    # against 0.48 s for vgg16's first layer), the slices' strided reads staying in cache.
    for start in range(0, out, 16):
        blocks[:, start : start + 16].copy_(src[start : start + 16].permute(2, 0, 1))
    return blocks
