"""The graph IR shared by the frontends, the geometry, the planner and every backend.

A `Graph` is a frozen, topologically ordered DAG of tensor-valued `Node`s. It holds structure and
static shapes only (batch size 1); parameters and executable kernels live in a backend's program,
keyed by node name, so the IR stays plain data that can be fingerprinted and serialised.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import cached_property


class Op(enum.StrEnum):
    """What a node does, as far as occlusion geometry is concerned."""

    INPUT = "input"  # the image, (1, C, H, W)
    CONV = "conv"  # 2-D convolution
    MAX_POOL = "max_pool"
    AVG_POOL = "avg_pool"
    PAD = "pad"  # constant padding of the two spatial axes
    POINTWISE = "pointwise"  # each spatial location of the output depends only on the same location of the inputs
    RESHAPE = "reshape"  # a view/reshape/flatten; spatial when it keeps the two trailing spatial axes
    GLOBAL_AVG_POOL = "global_avg_pool"  # mean over both spatial axes
    OPAQUE = "opaque"  # anything else: always evaluated on whole maps


#: Ops whose output window can be computed from an input window with a sliding-window kernel.
LOCAL_OPS = frozenset({Op.CONV, Op.MAX_POOL, Op.AVG_POOL, Op.PAD})


@dataclass(frozen=True)
class Window:
    """Sliding-window geometry of a local op along the two spatial axes (rows, cols).

    `pad_before`/`pad_after` may differ (asymmetric padding); `pad_after` already includes the extra
    rows that `ceil_mode` pooling reads past the border.
    """

    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    pad_before: tuple[int, int] = (0, 0)
    pad_after: tuple[int, int] = (0, 0)

    def extent(self, axis: int) -> int:
        """Rows (axis 0) or columns (axis 1) of input one output element reads."""
        return self.dilation[axis] * (self.kernel[axis] - 1) + 1


@dataclass(frozen=True)
class Node:
    """One tensor-valued operation.

    `shape` is the output shape for a batch of one image. `spatial` names the output axes that carry
    the image's rows and columns (None when the value has no spatial layout, e.g. logits).
    `window` is set for local ops; `label` says what the node was in the source model, for reports
    and error messages; `fn` names the operation the same way in every frontend, for cost models. Values that do not depend on the image (weights, buffers) are not nodes:
    backends fold them into the kernels.
    """

    name: str
    op: Op
    inputs: tuple[str, ...]
    shape: tuple[int, ...]
    spatial: tuple[int, int] | None = None
    window: Window | None = None
    macs: int = 1  # multiply-accumulates per output element, for FLOP estimates
    label: str = ""
    fn: str = ""  # the operation, named alike by every frontend ("conv", "relu", "add", "batch_norm", ...)

    @property
    def spatial_size(self) -> tuple[int, int]:
        """(rows, cols) of the output map."""
        assert self.spatial is not None, f"{self.name} has no spatial axes"
        return self.shape[self.spatial[0]], self.shape[self.spatial[1]]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class Graph:
    """A topologically ordered DAG with one image input and one output."""

    nodes: tuple[Node, ...]
    input: str
    output: str

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for node in self.nodes:
            missing = [i for i in node.inputs if i not in seen]
            if missing:
                raise ValueError(f"graph is not topologically ordered: {node.name} reads {missing}")
            seen.add(node.name)
        if self.input not in seen or self.output not in seen:
            raise ValueError("graph input or output is not one of its nodes")

    @cached_property
    def by_name(self) -> dict[str, Node]:
        return {n.name: n for n in self.nodes}

    def __getitem__(self, name: str) -> Node:
        return self.by_name[name]

    @cached_property
    def consumers(self) -> dict[str, tuple[str, ...]]:
        """Names of the nodes reading each node, in topological order, without repeats."""
        out: dict[str, list[str]] = {n.name: [] for n in self.nodes}
        for node in self.nodes:
            for i in dict.fromkeys(node.inputs):
                out[i].append(node.name)
        return {k: tuple(v) for k, v in out.items()}

    @property
    def input_node(self) -> Node:
        return self[self.input]
