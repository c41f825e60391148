"""Which graph an ORT run uses: the plan's blocked graph, or one block of positions until that pays.

Exporting a plan of 9 position blocks to ONNX took 12-22 s in a first process (resnet50, resnet18,
vgg16 at 224x224, patch 16, stride 8; the TorchScript exporter over about 10,000 nodes), more than
the positions of an image (5-15 s). A graph of one block (every position with the grid's largest
windows) took 2.5-17 s to build and ran an image's positions 4-17% slower. A run that would export
the blocked graph (not built, not in the disk cache) starts with one block and builds the blocked
graph once the time the one block has lost adds up to what the blocked graph is predicted to take to
build: at most about twice the better of the two choices, whatever the number of images (a rent-or-buy
rule; `Growth`).
"""

from __future__ import annotations

from dataclasses import dataclass

from hyinf.graph.flops import plan_flops
from hyinf.runtime.engine import BlockedEngine, Repr

#: Seconds per MiB of a graph's weights that a build spends whatever its blocks (the exporter writes them
#: into the graph, the position split copies them, ORT pre-packs them): resnet18, resnet50 and vgg16's
#: one-block and 9-block builds fit 0.032 s per MiB plus a per-block part (Intel Xeon, 2 threads).
WEIGHT_S_PER_MIB = 0.032


def flops(engine: BlockedEngine) -> float:
    """The FLOPs an engine's plans compute over the whole grid."""
    graph = engine.program.graph
    total = 0.0
    for e in engine.engines:
        windows = {name for name, rep in e.repr.items() if rep is Repr.WIN}
        total += len(e.grid) * plan_flops(graph, e.regions, windows)
    return total


@dataclass
class Growth:
    """The rent-or-buy state of one model and settings: the one-block graph runs until its loss over the
    blocked graph's predicted positions time reaches the blocked graph's predicted build time."""

    blocks: int  # of the blocked graph
    saving: float  # the fraction of the one-block graph's positions time the blocked graph saves (by FLOPs)
    build_s: float | None = None  # the one-block graph's build, once it was built
    graph_bytes: int = 0  # the one-block graph's size
    lost_s: float = 0.0

    @classmethod
    def of(cls, blocked: BlockedEngine, single: BlockedEngine) -> Growth:
        return cls(len(blocked.engines), max(0.0, 1.0 - flops(blocked) / max(flops(single), 1.0)))

    def built(self, seconds: float, graph_bytes: int) -> None:
        self.build_s, self.graph_bytes = seconds, graph_bytes

    def ran(self, seconds: float) -> None:
        """The one-block graph ran an image's positions in `seconds`."""
        self.lost_s += seconds * self.saving

    @property
    def blocked_build_s(self) -> float:
        """The blocked graph's predicted build: the weights' part once, the rest once per block."""
        build = self.build_s or 0.0
        weights = min(build, WEIGHT_S_PER_MIB * self.graph_bytes / 2**20)
        return weights + (build - weights) * self.blocks

    @property
    def grown(self) -> bool:
        return self.build_s is not None and self.saving > 0 and self.lost_s >= self.blocked_build_s
