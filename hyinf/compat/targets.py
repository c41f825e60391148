"""Choosing the explained output, and repeating per-example arguments, the way captum does."""

from __future__ import annotations

from typing import Any

import torch

from hyinf.errors import CaptumArgumentError


def select_targets(output: torch.Tensor, target: Any) -> torch.Tensor:
    """captum's target rules: None keeps the output; an int or tuple indexes every example's output;
    a tensor or list gives one target per example (a 2-D output for ints, any for tuples)."""
    if target is None:
        return output
    examples = output.shape[0] if output.dim() else 1
    if isinstance(target, torch.Tensor):
        if target.numel() == 1 and not target.is_floating_point():
            return select_targets(output, int(target.item()))
        if target.dim() != 1 or target.numel() != examples:
            raise CaptumArgumentError(f"a tensor target must be one int per example ({examples}), got shape {tuple(target.shape)}")
        _check_2d(output)
        return torch.gather(output, 1, target.reshape(-1, 1).to(output.device)).squeeze(-1)
    if isinstance(target, int | tuple):
        index = (target,) if isinstance(target, int) else target
        if len(index) > output.dim() - 1:
            raise CaptumArgumentError(f"target {target!r} has more indices than the output's non-batch axes {tuple(output.shape[1:])}")
        for axis, k in enumerate(index, start=1):
            if isinstance(k, int) and not -output.shape[axis] <= k < output.shape[axis]:
                raise CaptumArgumentError(f"target {target!r} is outside the model's output shape {tuple(output.shape[1:])}")
        return output[(slice(None), *index)]
    if isinstance(target, list):
        if len(target) != examples:
            raise CaptumArgumentError(f"a target list needs one entry per example ({examples}), got {len(target)}")
        if all(isinstance(t, int) for t in target):
            _check_2d(output)
            return torch.gather(output, 1, torch.tensor(target, device=output.device).reshape(-1, 1)).squeeze(-1)
        if all(isinstance(t, tuple) for t in target):
            return torch.stack([output[(i, *t)] for i, t in enumerate(target)])
    raise CaptumArgumentError(f"target must be None, an int, a tuple, a tensor or a list of ints or tuples, got {target!r}")


def _check_2d(output: torch.Tensor) -> None:
    if output.dim() != 2:
        raise CaptumArgumentError(f"per-example targets need a (batch, outputs) model output, got shape {tuple(output.shape)}")


def repeat_target(target: Any, times: int) -> Any:
    """The target for `times` copies of the batch stacked along the batch axis."""
    if isinstance(target, list):
        return target * times
    if isinstance(target, torch.Tensor) and target.numel() > 1:
        return torch.cat([target] * times)
    return target


def repeat_args(args: tuple[Any, ...] | None, times: int) -> tuple[Any, ...] | None:
    """Additional forward arguments for `times` stacked copies of the batch (tensors with a batch axis repeat)."""
    if args is None:
        return None
    return tuple(torch.cat([a] * times) if isinstance(a, torch.Tensor) and a.dim() > 0 else a for a in args)
