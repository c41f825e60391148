"""What the trust checks cost per `hyinf.explain` call: the size estimate on meta tensors (before
tracing) and the check of the program against the eager model on the image (one eager forward).

    python benchmarks/checks_cost.py --rounds 3 --write docs/benchmarks.md

torchvision models (random weights, fixed seed), 224x224, patch 16, stride 8, hybrid. After a first
call (which traces, checks batches once and plans), each round makes one call per model, models
interleaved; the estimate is timed on its own in the same round. Medians and ranges over rounds.
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
from hyinf.runtime.estimate import estimate_torch

MODELS = ("resnet18", "vgg16")


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", type=Path, help="Markdown file whose checks-cost section is rewritten.")
    args = parser.parse_args()
    models, image = {}, torch.rand(3, 224, 224, generator=torch.Generator().manual_seed(1))
    for name in MODELS:
        torch.manual_seed(0)
        models[name] = getattr(torchvision.models, name)(weights=None).eval()
        hyinf.explain(models[name], image, patch=16, stride=8)
    rows: dict[str, dict[str, list[float]]] = {n: {"estimate": [], "verify": [], "total": []} for n in MODELS}
    for _ in range(args.rounds):
        for name, model in models.items():
            start = time.perf_counter()
            estimate_torch(model, (1, 3, 224, 224))
            rows[name]["estimate"].append(time.perf_counter() - start)
            timings = hyinf.explain(model, image, patch=16, stride=8).timings
            rows[name]["verify"].append(timings["verify_s"])
            rows[name]["total"].append(timings["total_s"])
    lines = [f"Machine: {machine()}; {args.rounds} interleaved rounds after a first call; seconds, median (range).", "",
             "| model | size estimate | check against the eager model | whole call | checks' share |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        share = [(e + v) / t for e, v, t in zip(r["estimate"], r["verify"], r["total"])]
        lines.append(f"| {name} | {spread(r['estimate'])} | {spread(r['verify'])} | {spread(r['total'])} | "
                     f"{100 * statistics.median(share):.1f}% ({100 * min(share):.1f}-{100 * max(share):.1f}%) |")
    report("\n".join(lines) + "\n", args.write, "checks-cost")


if __name__ == "__main__":
    main()
