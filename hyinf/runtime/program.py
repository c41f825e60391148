"""What the PyTorch backend executes: the IR plus one kernel per node."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from hyinf.graph.ir import Graph


@dataclass(frozen=True)
class LocalKernel:
    """A local op evaluated on windows that already hold their padding.

    `fn` runs the op with padding 0. `pad_value` fills rows outside the map (0 for convolution and
    average pooling, -inf for max pooling). For average pooling `fn` returns means over the whole
    kernel and `divisor` holds every output element's divisor over the kernel area, shape
    (1, 1, rows, cols), so count_include_pad, ceil_mode and divisor_override behave exactly as in
    the full op.
    """

    fn: Callable[[torch.Tensor], torch.Tensor]
    pad_value: float = 0.0
    divisor: torch.Tensor | None = None


@dataclass(frozen=True)
class TorchProgram:
    """The graph and the kernels that evaluate it.

    `full[name]` computes a node from its inputs' whole values exactly as the source model does,
    for any batch size, without modifying them. `local[name]` exists for local ops and evaluates
    them on windows. `inplace[name]`, where the source call has an in-place form (ReLU, +=), computes
    the same but may overwrite its first input: the runtime uses it when nothing else reads that value,
    sparing the allocation of large new maps. `linear[name]` holds (weight, bias) of nodes that are
    F.linear of their input with constant weights, for kernels that apply them to parts of it.
    """

    graph: Graph
    full: Mapping[str, Callable[..., torch.Tensor]]
    local: Mapping[str, LocalKernel]
    device: torch.device
    inplace: Mapping[str, Callable[..., torch.Tensor]]
    linear: Mapping[str, tuple[torch.Tensor, torch.Tensor | None]] = field(default_factory=dict)
