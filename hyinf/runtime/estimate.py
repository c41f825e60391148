"""How much a run will hold and compute, known before tracing: the model run once on meta tensors
(shapes only, no memory, milliseconds even for huge images) counts every activation and FLOP.
A run whose clean-image activations cannot fit the machine is refused with the numbers."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from hyinf.errors import SettingsError

#: Tracing keeps every value once, the engine's clean image once more and padded copies of some of
#: them: a resnet18 run at 512 and 1024 pixels (4x4 positions) peaked at 4.3 and 4.1 times the
#: activations of one inference, so five times is what a run is refused above.
HELD = 5


@dataclass(frozen=True)
class Estimate:
    """One inference of the model on the clean image: its activations' bytes and its FLOPs."""

    activation_bytes: int
    flops: int


class _Bytes(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        self.total += sum(
            t.numel() * t.element_size() for t in tree_leaves(out) if isinstance(t, torch.Tensor)
        )
        return out


def estimate_torch(model: nn.Module, shape: tuple[int, ...]) -> Estimate | None:
    """The model's activations and FLOPs for one (1, C, H, W) image, from a run on meta tensors; None
    where the model cannot run on them (it builds tensors of its own on a real device)."""
    state = {
        k: torch.empty_like(v, device="meta") for k, v in (*model.named_parameters(), *model.named_buffers())
    }
    counted, flops = _Bytes(), FlopCounterMode(display=False)
    try:
        with torch.no_grad(), flops, counted:
            functional_call(model, state, (torch.empty(shape, device="meta"),))
    except Exception:  # any failure only means there is no estimate; the run itself reports real errors
        return None
    return Estimate(counted.total, flops.get_total_flops())


def available_memory(device: torch.device) -> int:
    """Bytes this process can still allocate on `device` (free GPU memory, or the kernel's MemAvailable)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(
    activation_bytes: int,
    device: torch.device,
    what: str,
    positions: int | None = None,
    flops: int | None = None,
) -> None:
    """Refuse, with the numbers, a run whose clean-image activations (held about HELD times) exceed free memory."""
    need, free = HELD * activation_bytes, available_memory(device)
    if need <= free:
        return
    work = f"; {positions:,} positions" if positions is not None else ""
    work += (
        f", {positions * flops / 1e12:,.0f} TFLOP by naive re-inference"
        if positions is not None and flops
        else ""
    )
    raise SettingsError(
        f"{what} needs about {need / 2**30:,.1f} GiB for the clean image's activations ({HELD} x "
        f"{activation_bytes / 2**30:,.1f} GiB) but {device.type} has {free / 2**30:,.1f} GiB free{work}: "
        "use a smaller --image-size (--max-memory bounds the chunks of positions, not these)"
    )
