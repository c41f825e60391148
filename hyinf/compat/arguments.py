"""captum.attr.Occlusion's arguments, normalised and checked as captum does (with clearer messages)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from hyinf.errors import CaptumArgumentError

Number = int | float


@dataclass(frozen=True)
class OcclusionArgs:
    """One attribute() call: a tuple of inputs, and per input its window, strides and baseline."""

    inputs: tuple[torch.Tensor, ...]
    is_tuple: bool
    windows: tuple[tuple[int, ...], ...]
    strides: tuple[tuple[int, ...], ...]
    baselines: tuple[torch.Tensor | Number, ...]
    target: Any
    additional_args: tuple[Any, ...] | None

    @property
    def batch(self) -> int:
        return self.inputs[0].shape[0]

    def shift_counts(self, i: int) -> tuple[int, ...]:
        """Window positions along each feature axis of input i: ceil((size - window) / stride) + 1."""
        sizes = self.inputs[i].shape[1:]
        return tuple(math.ceil((n - w) / s) + 1 for n, w, s in zip(sizes, self.windows[i], self.strides[i]))

    def features(self, i: int) -> int:
        return math.prod(self.shift_counts(i))


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise CaptumArgumentError(message)


def parse(inputs: Any, sliding_window_shapes: Any, strides: Any, baselines: Any, target: Any, additional_forward_args: Any) -> OcclusionArgs:
    is_tuple = isinstance(inputs, tuple)
    formatted = inputs if is_tuple else (inputs,)
    _check(len(formatted) > 0 and all(isinstance(t, torch.Tensor) for t in formatted), "inputs must be a tensor or a tuple of tensors")
    _check(all(t.dim() >= 1 for t in formatted), "every input needs a leading batch dimension")
    _check(len({t.shape[0] for t in formatted}) == 1, f"all inputs must have the same batch size, got {[t.shape[0] for t in formatted]}")

    _check(isinstance(sliding_window_shapes, tuple) and len(sliding_window_shapes) > 0, f"sliding_window_shapes must be a tuple, got {sliding_window_shapes!r}")
    windows = (sliding_window_shapes,) if isinstance(sliding_window_shapes[0], int) else sliding_window_shapes
    _check(len(windows) == len(formatted), f"give one sliding window shape per input tensor ({len(formatted)}), got {len(windows)}")
    for i, (w, t) in enumerate(zip(windows, formatted)):
        _check(isinstance(w, tuple) and len(w) == t.dim() - 1 and all(isinstance(d, int) for d in w),
               f"sliding window for input {i} must be a tuple of {t.dim() - 1} ints (one per non-batch axis of shape {tuple(t.shape)}), got {w!r}")
        _check(all(d >= 1 for d in w), f"sliding window for input {i} must be at least 1 along every axis, got {w}")
        _check(all(d <= n for d, n in zip(w, t.shape[1:])), f"sliding window {w} for input {i} is larger than the input's feature shape {tuple(t.shape[1:])}")

    strides = _format_strides(strides, formatted)
    for i, (w, s, t) in enumerate(zip(windows, strides, formatted)):
        _check(all(d >= 1 for d in s), f"strides for input {i} must be at least 1, got {s}")
        # captum: a stride may exceed the window only where the window spans the whole axis
        _check(all(st <= wd or wd == n for st, wd, n in zip(s, w, t.shape[1:])),
               f"stride {s} for input {i} is larger than its sliding window {w}: some features would never be occluded")

    if baselines is None:
        baselines = tuple(0 for _ in formatted)
    elif not isinstance(baselines, tuple):
        baselines = (baselines,)
    _check(len(baselines) == len(formatted), f"give one baseline per input tensor ({len(formatted)}), got {len(baselines)}")
    for i, b in enumerate(baselines):
        _check(isinstance(b, torch.Tensor | int | float), f"baseline {i} must be a tensor or a number, got {type(b).__name__}")
        if isinstance(b, torch.Tensor):
            try:
                torch.broadcast_shapes((1, *b.shape), (1, *formatted[i].shape))
            except RuntimeError:
                raise CaptumArgumentError(f"baseline {i} of shape {tuple(b.shape)} does not broadcast to input shape {tuple(formatted[i].shape)}") from None
    extra = additional_forward_args
    if extra is not None and not isinstance(extra, tuple):
        extra = (extra,)
    return OcclusionArgs(tuple(formatted), is_tuple, tuple(tuple(w) for w in windows), strides, tuple(baselines), target, extra)


def _format_strides(strides: Any, inputs: tuple[torch.Tensor, ...]) -> tuple[tuple[int, ...], ...]:
    if strides is None:
        strides = tuple(1 for _ in inputs)
    if len(inputs) == 1 and not (isinstance(strides, tuple) and len(strides) == 1):
        strides = (strides,)
    _check(isinstance(strides, tuple) and len(strides) == len(inputs), f"give strides for each input tensor ({len(inputs)}), got {strides!r}")
    out = []
    for i, (s, t) in enumerate(zip(strides, inputs)):
        if isinstance(s, int):
            s = (s,) * (t.dim() - 1)
        _check(isinstance(s, tuple) and len(s) == t.dim() - 1 and all(isinstance(d, int) for d in s),
               f"stride for input {i} must be an int or a tuple of {t.dim() - 1} ints, got {s!r}")
        out.append(tuple(s))
    return tuple(out)
