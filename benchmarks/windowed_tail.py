"""The classifier's first linear layer from the changed cells against the dense layer, in whole calls.

    python benchmarks/windowed_tail.py --write docs/benchmarks.md

vgg16 (random weights, fixed seed), 224x224, patch 16, stride 8, hybrid plans from the machine's
cost model, exact and under a projective-field threshold. Per setting and round, one `hyinf.explain`
call with the windowed layer and one with it switched off (`WINDOWED_SHARE` 0: the dense layer
everywhere), alternating; medians and ranges over the rounds after a warm-up of both. The scores of
the two must agree to float tolerance or the benchmark stops.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torchvision
from engine_speed import machine, report

import hyinf
import hyinf.runtime.engine as engine_module
from hyinf.runtime.tail import WINDOWED_SHARE

TOLERANCE = 1e-4  # of the largest score


def timed(model: torch.nn.Module, image: torch.Tensor, share: float, settings: dict) -> tuple[float, torch.Tensor]:
    engine_module.WINDOWED_SHARE = share  # engines read it when they are built: each call builds its own
    start = time.perf_counter()
    result = hyinf.explain(model, image, patch=16, stride=8, mode="hybrid", **settings)
    return time.perf_counter() - start, result.scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--thresholds", type=float, nargs="+", default=[1.0, 0.5])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", type=Path, help="replace the windowed-tail section of this markdown file")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.vgg16(weights=None).eval()
    image = torch.randn(3, 224, 224, generator=torch.Generator().manual_seed(1))
    header = (f"Machine: {machine()}. vgg16 (random weights), 224x224, patch 16, stride 8, hybrid plans; "
              f"{args.rounds} alternating rounds after a warm-up; seconds per call, median (min-max).\n")
    lines = [header,
             "| setting | windowed first layer (s) | dense first layer (s) | dense / windowed | max score difference |",
             "|---|---|---|---|---|"]
    for threshold in args.thresholds:
        settings = {"approx_threshold": threshold}
        times: dict[str, list[float]] = {"windowed": [], "dense": []}
        scores: dict[str, torch.Tensor] = {}
        for k in range(args.rounds + 1):
            for variant, share in (("windowed", WINDOWED_SHARE), ("dense", 0.0)):
                seconds, scores[variant] = timed(model, image, share, settings)
                if k:  # round 0 warms both up
                    times[variant].append(seconds)
        difference = float((scores["windowed"] - scores["dense"]).abs().max())
        if difference > TOLERANCE * float(scores["dense"].abs().max()):
            raise SystemExit(f"the windowed layer's scores differ from the dense layer's by {difference:.3g}")
        med = {v: statistics.median(t) for v, t in times.items()}
        cells = " | ".join(f"{med[v]:.2f} ({min(times[v]):.2f}-{max(times[v]):.2f})" for v in ("windowed", "dense"))
        label = "exact" if threshold == 1 else f"TAU {threshold:g}"
        lines.append(f"| {label} | {cells} | {med['dense'] / med['windowed']:.2f}x | {difference:.1e} |")
    engine_module.WINDOWED_SHARE = WINDOWED_SHARE
    report("\n".join(lines) + "\n", args.write, "windowed-tail")


if __name__ == "__main__":
    main()
