"""The arithmetic a run computes in on a GPU: float32 (exact: equal to naive re-inference to float
tolerance) or TF32 (tensor-core convolutions and matrix products with 10-bit mantissas: faster on
Ampere and later, approximate). CPUs compute float32 only.

PyTorch's defaults allow TF32 in cuDNN convolutions; hyinf sets the flags for the length of a run
and restores the caller's afterwards, so "exact" means float32 whatever the process had set.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from hyinf.errors import SettingsError
from hyinf.modes import PRECISIONS


def check_precision(precision: object, device: torch.device, backend: str) -> str:
    """A precision this device and backend compute in, else one line saying what to use."""
    if precision not in PRECISIONS:
        raise SettingsError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "tf32" and device.type != "cuda":
        raise SettingsError("precision tf32 is a CUDA GPU's tensor-core arithmetic; on a CPU hyinf computes in float32: "
                            "leave out --precision")
    if precision == "tf32" and backend == "ort":  # `auto` runs torch then
        raise SettingsError(f"precision tf32 runs on the torch backend, not {backend}; use --backend torch")
    return str(precision)


@contextlib.contextmanager
def tensor_cores(tf32: bool) -> Iterator[None]:
    """cuDNN convolutions and CUDA matrix products in TF32 (or not) while the block runs."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def precision_scope(device: torch.device, precision: str) -> contextlib.AbstractContextManager[None]:
    """Convolutions and matrix products in `precision` on a GPU while the block runs (nothing on a CPU)."""
    return tensor_cores(precision == "tf32") if device.type == "cuda" else contextlib.nullcontext()


def distance(got: torch.Tensor, reference: torch.Tensor) -> float:
    """The largest difference of `got` from the float32 `reference`, relative to its largest value."""
    scale = float(reference.abs().max()) or 1.0
    return float((got.float() - reference.float()).abs().max()) / scale
