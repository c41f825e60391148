"""Batched re-inference for any input captum's Occlusion accepts: the path when hyinf's engine cannot run.

Follows captum's arithmetic (ablated = x * (1 - mask) + baseline * mask; attribution = sum of
(initial - ablated output) * mask over windows, divided by the number of windows covering each
feature) but builds the masks of a whole chunk of windows at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from tqdm import tqdm

from hyinf.compat.arguments import OcclusionArgs
from hyinf.compat.targets import repeat_args, repeat_target, select_targets
from hyinf.errors import CaptumArgumentError
from hyinf.runtime.budget import DEFAULT_MAX_MEMORY

#: Assumed activation memory of one forward pass, as a multiple of its inputs' size (the model is opaque here).
ACTIVATION_FACTOR = 64
MAX_CHUNK = 256


def forward_output(forward: Callable[..., Any], inputs: tuple[torch.Tensor, ...], args: tuple[Any, ...] | None, target: Any) -> torch.Tensor:
    """The forward function's output for `target`, as captum's _run_forward computes it."""
    out = forward(*inputs, *(args or ()))
    if isinstance(out, int | float):
        out = torch.tensor(out, dtype=torch.int64 if isinstance(out, int) else torch.float64)
    if not isinstance(out, torch.Tensor):
        raise CaptumArgumentError(f"forward_func must return a tensor, int or float, got {type(out).__name__}")
    return select_targets(out, target)


def window_masks(args: OcclusionArgs, i: int, features: torch.Tensor) -> torch.Tensor:
    """(len(features), 1, *feature shape) 0/1 masks of input i's windows `features` (captum's numbering:
    the first axis's position varies fastest; windows are cut off at the border)."""
    shape = args.inputs[i].shape[1:]
    device = args.inputs[i].device
    mask = torch.ones((len(features), 1, *shape), dtype=torch.bool, device=device)
    remaining = features.clone()
    for axis, (count, size, window, stride) in enumerate(zip(args.shift_counts(i), shape, args.windows[i], args.strides[i])):
        start = (remaining % count) * stride
        remaining = remaining // count
        pos = torch.arange(size, device=device)
        covered = (pos[None] >= start[:, None]) & (pos[None] < start[:, None] + window)
        view = [len(features), 1] + [1] * len(shape)
        view[2 + axis] = size
        mask &= covered.reshape(view)
    return mask


def chunk_size(args: OcclusionArgs, max_memory: int | None) -> int:
    per_window = sum(t.numel() * t.element_size() for t in args.inputs) * ACTIVATION_FACTOR
    budget = DEFAULT_MAX_MEMORY if max_memory is None else max_memory
    return max(1, min(MAX_CHUNK, budget // max(per_window, 1)))


def ablate(forward: Callable[..., Any], args: OcclusionArgs, initial: torch.Tensor, chunk: int, bar: tqdm) -> tuple[torch.Tensor, ...]:
    """captum Occlusion attributions of every input by re-running `forward` on ablated copies."""
    n_outputs = initial.numel()
    flat_initial = initial.reshape(1, -1)
    batch = args.batch
    if initial.dim() == 0 or initial.shape[0] != batch:
        chunk = 1  # the output does not grow with the batch (an aggregate): one window per call
    results = []
    for i, x in enumerate(args.inputs):
        total = torch.zeros((n_outputs, *x.shape[1:]), dtype=flat_initial.dtype, device=x.device)
        weight = torch.zeros((1, *x.shape[1:]), device=x.device)
        baseline = args.baselines[i]
        if isinstance(baseline, torch.Tensor):
            baseline = baseline.reshape(1, *baseline.shape)
        features = args.features(i)
        for first in range(0, features, chunk):
            ids = torch.arange(first, min(first + chunk, features), device=x.device)
            mask = window_masks(args, i, ids)
            k = len(ids)
            ablated = x.reshape(1, *x.shape) * (1 - mask.to(x.dtype)) + baseline * mask.to(x.dtype)
            inputs = tuple(ablated.reshape(k * batch, *x.shape[1:]) if j == i else torch.cat([t] * k) for j, t in enumerate(args.inputs))
            out = forward_output(forward, inputs, repeat_args(args.additional_args, k), repeat_target(args.target, k))
            if out.numel() != k * n_outputs:
                raise CaptumArgumentError(
                    f"forward_func returned {out.numel()} values for {k} ablated batches of {batch}; expected {k * n_outputs}: "
                    "its output must have one leading entry per example"
                )
            diff = (flat_initial - out.reshape(k, n_outputs)).reshape(k, n_outputs, *([1] * (x.dim() - 1)))
            total += (diff * mask.to(total.dtype)).sum(0)
            weight += mask.float().sum(0)
            bar.update(k)
        results.append(total.float() / weight)
    return tuple(results)


def count_windows(args: OcclusionArgs) -> int:
    return sum(args.features(i) for i in range(len(args.inputs)))

