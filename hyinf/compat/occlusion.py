"""`hyinf.Occlusion`: captum.attr.Occlusion's interface and results, computed by hyinf's engine when it can."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from hyinf.compat.ablation import ablate, chunk_size, count_windows, forward_output
from hyinf.compat.arguments import parse
from hyinf.compat.fast import EngineCache, batch_dependent, fast_attribute, why_not_fast
from hyinf.errors import CaptumArgumentError, ModelError

log = logging.getLogger("hyinf")


@dataclass(frozen=True)
class RunInfo:
    """What the last attribute() call did: `path` is "engine" or "re-inference"; `reason` says why
    the engine could not be used; `chunk` is the windows per forward call on the re-inference path."""

    path: str
    reason: str
    seconds: float
    chunk: int = 0


class Occlusion:
    """Drop-in for captum.attr.Occlusion: same arguments, same results.

    Images occluded over spatial windows of a traceable CNN go through hyinf's incremental/hybrid
    engine; everything else is re-run in batches whose size follows a memory budget
    (`max_memory` bytes) rather than `perturbations_per_eval`. `last_run` tells which path ran.
    """

    def __init__(self, forward_func: Callable[..., Any], max_memory: int | None = None) -> None:
        self.forward_func = forward_func
        self.max_memory = max_memory
        self.last_run: RunInfo | None = None
        self._engines = EngineCache()

    @property
    def multiplies_by_inputs(self) -> bool:
        return True  # as captum's perturbation methods report

    def has_convergence_delta(self) -> bool:
        return False

    def attribute_future(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("attribute_future is not implemented for Occlusion")

    def attribute(
        self,
        inputs: torch.Tensor | tuple[torch.Tensor, ...],
        sliding_window_shapes: tuple[int, ...] | tuple[tuple[int, ...], ...],
        strides: None | int | tuple[int, ...] | tuple[int | tuple[int, ...], ...] = None,
        baselines: None | int | float | torch.Tensor | tuple[int | float | torch.Tensor, ...] = None,
        target: Any = None,
        additional_forward_args: Any = None,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Occlusion attributions, shaped like `inputs` (see captum.attr.Occlusion.attribute)."""
        if not isinstance(perturbations_per_eval, int) or perturbations_per_eval < 1:
            raise CaptumArgumentError(f"perturbations_per_eval must be an int of at least 1, got {perturbations_per_eval!r}")
        args = parse(inputs, sliding_window_shapes, strides, baselines, target, additional_forward_args)
        if args.batch == 0:  # nothing to occlude: captum returns empty attributions too
            empty = tuple(torch.zeros_like(x) for x in args.inputs)
            return empty if args.is_tuple else empty[0]
        start = time.perf_counter()
        with torch.no_grad():
            initial = forward_output(self.forward_func, args.inputs, args.additional_args, args.target)
            reason = why_not_fast(self.forward_func, args)
            if reason is None and (initial.dim() != 1 or initial.shape[0] != args.batch):
                reason = "the target does not pick one score per example"
            if reason is None:
                total = args.batch * args.features(0)
                try:
                    with tqdm(total=total, desc="Occlusion attribution", disable=not show_progress) as bar:
                        result: tuple[torch.Tensor, ...] = (fast_attribute(self.forward_func, args, initial, self._engines, self.max_memory, bar),)
                    info = RunInfo("engine", "", time.perf_counter() - start)
                except ModelError as e:  # e.g. torch.fx cannot trace it: captum's way still works
                    reason = str(e)
            if reason is not None:
                chunk = chunk_size(args, self.max_memory)
                if batch_dependent(self.forward_func):  # results depend on the batch: keep captum's batches
                    chunk = perturbations_per_eval
                with tqdm(total=count_windows(args), desc="Occlusion attribution", disable=not show_progress) as bar:
                    result = ablate(self.forward_func, args, initial, chunk, bar)
                info = RunInfo("re-inference", reason, time.perf_counter() - start, chunk)
        self.last_run = info
        log.debug("Occlusion.attribute: %s path%s, %.3f s", info.path, f" ({info.reason})" if info.reason else "", info.seconds)
        return result if args.is_tuple else result[0]
