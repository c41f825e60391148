"""The device-wide sweep: representative single-operator configurations, each traced into a tiny
program and timed through the runtime's real incremental and full paths."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from hyinf.graph.geometry import OcclusionGrid
from hyinf.graph.torch_frontend import trace_torch
from hyinf.profiler.measure import measure_program
from hyinf.profiler.sample import Sample
from hyinf.profiler.timing import Stopwatch

OPS = ("conv", "conv", "conv", "conv", "depthwise", "max_pool", "avg_pool", "relu", "relu", "batch_norm", "add", "add", "gate", "hardswish", "global_avg_pool")
SIZES = (7, 14, 28, 56, 112, 224)
CHANNELS = (3, 8, 16, 32, 64, 96, 128, 256, 512)
#: Positions per timed call, up to the runtime's largest chunk on each kind of device: with a range
#: of chunk sizes the fit tells per-call costs (kernel launches, Python) from per-position ones.
POSITIONS = {"cpu": (8, 16, 32, 64), "cuda": (8, 32, 64, 128, 256, 512)}
#: Per timed call, per kind of device: (MACs, elements). A CPU configuration stays well under a second
#: on a small machine; a GPU takes 16x the work and memory in about the same time.
CAPS = {"cpu": (3e9, 24e6), "cuda": (48e9, 384e6)}


class _Add(nn.Module):
    """A residual-style sum of two changed values."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(x)


class _Gate(nn.Module):
    """A sigmoid gate, as in SiLU and attention blocks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


@dataclass(frozen=True)
class OpConfig:
    op: str
    channels_in: int
    channels_out: int
    kernel: int
    stride: int
    size: int  # input map side
    patch: int  # changed square's side in the input map
    positions: int

    @property
    def id(self) -> str:
        return f"sweep:{self.op}-c{self.channels_in}x{self.channels_out}-k{self.kernel}s{self.stride}-m{self.size}-p{self.patch}-n{self.positions}"

    def module(self) -> nn.Module:
        c, k, s, pad = self.channels_in, self.kernel, self.stride, self.kernel // 2
        match self.op:
            case "conv":
                return nn.Conv2d(c, self.channels_out, k, s, pad)
            case "depthwise":
                return nn.Conv2d(c, c, k, s, pad, groups=c)
            case "max_pool":
                return nn.MaxPool2d(k, s, pad)
            case "avg_pool":
                return nn.AvgPool2d(k, s, pad)
            case "relu":
                return nn.ReLU()
            case "batch_norm":
                return nn.BatchNorm2d(c)
            case "add":
                return _Add()
            case "gate":
                return _Gate()
            case "hardswish":
                return nn.Hardswish()
            case "global_avg_pool":
                return nn.AdaptiveAvgPool2d(1)
        raise ValueError(f"unknown sweep op {self.op}")

    def work(self) -> tuple[float, float]:
        """(MACs, elements) of one full-mode call: what the caps bound."""
        out = (self.size // self.stride) ** 2
        macs = {"conv": self.channels_in * self.kernel**2, "depthwise": self.kernel**2}.get(self.op, 1)
        elements = self.positions * (self.channels_in * self.size**2 + self.channels_out * out)
        return float(self.positions * self.channels_out * out * macs), float(elements)


def sample_configs(count: int, seed: int = 0, device_kind: str = "cpu") -> list[OpConfig]:
    """`count` random configurations within a device kind's per-call caps, at its chunk sizes
    (deterministic for a seed and kind)."""
    positions, (max_macs, max_elements) = POSITIONS[device_kind], CAPS[device_kind]
    rng = np.random.default_rng(seed)
    out: list[OpConfig] = []
    while len(out) < count:
        op = str(rng.choice(OPS))
        size = int(rng.choice(SIZES))
        cin = int(rng.choice(CHANNELS))
        local = op in ("conv", "depthwise", "max_pool", "avg_pool")
        kernel = int(rng.choice((1, 3, 3, 5, 7) if op in ("conv", "depthwise") else (2, 3))) if local else 1
        stride = int(rng.choice((1, 1, 2))) if local else 1
        cout = int(rng.choice(CHANNELS)) if op == "conv" else cin
        patch = int(rng.integers(1, size + 1)) if rng.random() < 0.5 else int(rng.choice([p for p in (1, 4, 8, 16, 32) if p <= size]))
        config = OpConfig(op, cin, cout, kernel, stride, size, patch, int(rng.choice(positions)))
        macs, elements = config.work()
        if macs <= max_macs and elements <= max_elements and size // stride >= 1:
            out.append(config)
    return out


def run_sweep(configs: list[OpConfig], device: torch.device, repeats: int, warmup: int = 1,
              backend: str = "torch") -> Iterator[list[Sample]]:
    """Measure each configuration on `backend` in turn (yielding its samples, so callers can store and show progress)."""
    if backend == "ort":
        from hyinf.profiler.ort_measure import measure_ort

        measure: Callable[..., list[Sample]] = measure_ort
    else:
        measure = functools.partial(measure_program, watch=Stopwatch(device))
    for config in configs:
        torch.manual_seed(0)
        size = (config.size, config.size)
        program = trace_torch(nn.Sequential(config.module()).eval(), (1, config.channels_in, *size), device)
        step = max(1, (config.size - config.patch) // 16)  # a coarse grid: only the window sizes matter
        grid = OcclusionGrid.make(size, config.patch, step)
        yield measure(program, grid, positions=config.positions, repeats=repeats, warmup=warmup, source="sweep", config=config.id)
