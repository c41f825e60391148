"""Timing done right (after torch.utils.benchmark): warm-up, repeats, median and interquartile range,
device synchronisation, and an injectable clock so the bookkeeping is testable without hardware."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

Clock = Callable[[], float]

#: Spread (IQR / median) above which a measurement is reported as noisy.
NOISY_SPREAD = 0.15


@dataclass(frozen=True)
class Timing:
    """Raw times of the repeats of one measurement, in seconds."""

    times: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def iqr(self) -> float:
        if len(self.times) < 2:
            return 0.0
        q = statistics.quantiles(self.times, n=4, method="inclusive")
        return q[2] - q[0]

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median."""
        return self.iqr / self.median if self.median > 0 else 0.0

    @property
    def noisy(self) -> bool:
        return self.spread > NOISY_SPREAD


def synchronizer(device: torch.device) -> Callable[[], None]:
    """Waits until queued work on `device` is done (CUDA runs asynchronously); a no-op on CPU."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


class Stopwatch:
    """Times sections of code on one device, synchronising before reading the clock."""

    def __init__(self, device: torch.device, clock: Clock = time.perf_counter) -> None:
        self.sync, self.clock = synchronizer(device), clock

    def __call__(self, fn: Callable[[], object]) -> tuple[object, float]:
        """Run `fn` once; return its result and the seconds it took."""
        self.sync()
        start = self.clock()
        out = fn()
        self.sync()
        return out, self.clock() - start
