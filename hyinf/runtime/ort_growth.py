"""Which graph an ORT run uses: the plan's blocked graph, or one block of positions until that pays.

Exporting a plan's position blocks to ONNX took 14 s (resnet18, 9 blocks), 12 s (resnet50, 4) and
8.6 s (vgg16, 9) in a first process at 224x224, patch 16, stride 8 on a 2-core Xeon (the TorchScript
exporter over thousands of nodes): more than an image's positions (5-15 s). A graph of one block
(every position with the grid's largest windows) took 1.5-2.0, 3.3-3.8 and 3.5-5.1 s to build and ran
an image's positions 15%, 4% and 17% slower. So a run that would export the blocked graph (not built,
not in the disk cache) starts with one block, and builds the blocked graph once the time one block
has lost adds up to what the blocked graph is predicted to take to build (a rent-or-buy rule,
`Growth`): whatever the number of images, the extra cost over the better choice in hindsight is at
most one predicted build.
"""

from __future__ import annotations

from dataclasses import dataclass

from hyinf.graph.flops import plan_flops
from hyinf.runtime.engine import BlockedEngine, Repr

#: Seconds per MiB of the weights that a build spends whatever its blocks (ORT copies them in and
#: pre-packs them once): resnet18's, resnet50's and vgg16's one-block and blocked builds fit 0.004,
#: 0.008 and 0.007 s per MiB plus a part per block (Intel Xeon, 2 threads).
WEIGHT_S_PER_MIB = 0.006
#: A build's seconds besides the weights' (the exporter, ORT's graph optimisation, the traced run of real
#: positions), per block of positions: a fixed part, a part per node of the model and a share of the torch
#: engine's seconds for one image's positions. Fitted to the one-block builds of resnet18, resnet50, vgg16,
#: mobilenet_v3_large, efficientnet_b0, densenet121 and squeezenet1_1 at 224x224, patch 16, stride 8 on an
#: Intel Xeon (2 threads): within 1.5 s of each (docs/ort.md, "Choosing the backend").
BUILD_S, BUILD_S_PER_NODE, BUILD_TRACE_SHARE = 0.2, 0.006, 0.2


def open_s(weight_bytes: int) -> float:
    """Predicted seconds to open graphs already built (read from the disk cache): ORT copies in and
    pre-packs the weights."""
    return WEIGHT_S_PER_MIB * weight_bytes / 2**20


def predicted_build_s(weight_bytes: int, nodes: int, torch_positions_s: float, blocks: int = 1) -> float:
    """Predicted seconds to build the graphs of `blocks` blocks of positions for a model of `nodes` nodes whose
    weights take `weight_bytes` and whose positions the torch engine evaluates in `torch_positions_s`: the
    weights' part once, the rest once per block (as `Growth.blocked_build_s`)."""
    return open_s(weight_bytes) + (BUILD_S + BUILD_S_PER_NODE * nodes + BUILD_TRACE_SHARE * torch_positions_s) * blocks


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
    weight_bytes: int = 0  # of the weights the graphs read
    lost_s: float = 0.0

    @classmethod
    def of(cls, blocked: BlockedEngine, single: BlockedEngine) -> Growth:
        return cls(len(blocked.engines), max(0.0, 1.0 - flops(blocked) / max(flops(single), 1.0)))

    def built(self, seconds: float, weight_bytes: int) -> None:
        self.build_s, self.weight_bytes = seconds, weight_bytes

    def ran(self, seconds: float) -> None:
        """The one-block graph ran an image's positions in `seconds`."""
        self.lost_s += seconds * self.saving

    @property
    def blocked_build_s(self) -> float:
        """The blocked graph's predicted build: the weights' part once, the rest once per block."""
        build = self.build_s or 0.0
        weights = min(build, open_s(self.weight_bytes))
        return weights + (build - weights) * self.blocks

    @property
    def grown(self) -> bool:
        return self.build_s is not None and self.saving > 0 and self.lost_s >= self.blocked_build_s
