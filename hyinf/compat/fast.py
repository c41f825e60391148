"""The engine path of `hyinf.Occlusion`: images occluded over spatial windows of a traceable CNN."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.ops import StochasticDepth
from tqdm import tqdm

from hyinf.compat.arguments import OcclusionArgs
from hyinf.explain import attribution_from, collect_scores, compile_engine
from hyinf.graph.geometry import OcclusionGrid
from hyinf.graph.torch_frontend import trace_torch
from hyinf.runtime.budget import batch_size_for, bytes_per_position
from hyinf.runtime.engine import BlockedEngine, CleanImage
from hyinf.runtime.occlusion import patch_fill
from hyinf.runtime.verify import check_output


#: Layers whose output depends on train/eval mode; the engine evaluates models in eval mode.
MODE_DEPENDENT = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, StochasticDepth)


def batch_dependent(forward: Any) -> bool:
    """A module in training mode with dropout or batch norm: its outputs depend on what it is batched with."""
    return isinstance(forward, nn.Module) and forward.training and any(isinstance(m, MODE_DEPENDENT) for m in forward.modules())


def why_not_fast(forward: Any, args: OcclusionArgs) -> str | None:
    """None when the engine can compute these attributions, else the reason it cannot."""
    if not isinstance(forward, nn.Module):
        return "forward_func is not a torch.nn.Module"
    if batch_dependent(forward):
        return "the model is in training mode and has layers that behave differently there (dropout, batch norm)"
    if len(args.inputs) != 1 or args.additional_args is not None:
        return "the model takes more than one input"
    x = args.inputs[0]
    if x.dim() != 4 or not x.is_floating_point():
        return "the input is not a batch of float images (B, C, H, W)"
    if args.windows[0][0] != x.shape[1]:
        return "the window does not span all channels"
    if args.target is None:
        return "no target: captum attributes every output"
    baseline = args.baselines[0]
    if isinstance(baseline, torch.Tensor) and baseline.numel() != 1 and tuple(baseline.shape[-2:]) != (1, 1):
        return "the baseline varies over the image"
    return None


def baseline_fill(baseline: torch.Tensor | float, x: torch.Tensor, example: int) -> torch.Tensor:
    """The patch value for one example from a scalar or a baseline that is constant over the image:
    shaped (C,1,1), (1,1,1,1), (1,C,1,1), (B,1,1,1) or (B,C,1,1)."""
    if isinstance(baseline, torch.Tensor) and baseline.numel() > 1:
        full = baseline.reshape((1,) * (4 - baseline.dim()) + tuple(baseline.shape))
        baseline = full[example if full.shape[0] > 1 else 0].reshape(-1)
    return patch_fill(baseline, x.shape[1], x.device, x.dtype)


class EngineCache:
    """Compiled engines, kept while the model's parameters are not modified in place."""

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._engine: BlockedEngine | None = None

    def get(self, model: nn.Module, shape: tuple[int, ...], grid: OcclusionGrid, device: torch.device) -> BlockedEngine:
        versions = tuple(t._version for t in (*model.parameters(), *model.buffers()))
        key = (shape, grid, device, versions, model.training)
        if key != self._key or self._engine is None:
            self._engine = compile_engine(trace_torch(model, shape, device), grid, "hybrid", None)
            self._key = key
        return self._engine


def fast_attribute(model: nn.Module, args: OcclusionArgs, initial: torch.Tensor, cache: EngineCache, max_memory: int | None, bar: tqdm) -> torch.Tensor:
    """Attributions of a batch of images through hyinf's engine, positions of all images chunked together."""
    x = args.inputs[0]
    grid = OcclusionGrid.make(tuple(x.shape[-2:]), args.windows[0][1:], args.strides[0][1:])  # type: ignore[arg-type]
    engine = cache.get(model, (1, *x.shape[1:]), grid, x.device)
    size = batch_size_for(bytes_per_position(engine), x.shape[0] * len(grid), max_memory, None, x.device)
    fill = torch.cat([baseline_fill(args.baselines[0], x, b) for b in range(x.shape[0])])
    targets = per_example_targets(args.target, x.shape[0], x.device)

    def select(outputs: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        flat = outputs.reshape(len(outputs), -1)
        return torch.gather(flat, 1, targets[images][:, None] % flat.shape[1])[:, 0]  # -1: the last, as captum

    clean = CleanImage(engine.program, x)
    check_output(initial, select(clean.output, torch.arange(x.shape[0], device=x.device)), "the model run eagerly",
                 lambda: initial)  # the program on these very images, before their numbers are trusted
    scores = collect_scores(engine.chunks(clean, fill, size), (x.shape[0], len(grid)), select, bar)
    drops = initial[:, None] - scores
    return torch.stack([attribution_from(drop.reshape(grid.shape).float(), grid, x.shape[1:]) for drop in drops])


def per_example_targets(target: Any, examples: int, device: torch.device) -> torch.Tensor:
    """One class index per example from an int, a 1-tuple, a tensor, or a list of ints or 1-tuples."""
    if isinstance(target, tuple):
        (target,) = target
    if isinstance(target, list):
        target = [t[0] if isinstance(t, tuple) else t for t in target]
    return torch.as_tensor(target, device=device).reshape(-1).expand(examples).long()
