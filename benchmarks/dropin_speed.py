"""hyinf.Occlusion (the captum drop-in) vs hyinf.explain (hybrid) vs captum.attr.Occlusion, one run.

    python benchmarks/dropin_speed.py --write docs/benchmarks.md

The two hyinf calls alternate for several rounds; captum runs once per model (it is the slow
reference: one full inference per window). Every attribution is checked against captum's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision
from captum.attr import Occlusion as CaptumOcclusion

import hyinf
from engine_speed import machine, setting_arguments, write_section

TOLERANCE = 1e-4  # max attribution error relative to the largest attribution


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    setting_arguments(parser, ["resnet18", "vgg16"])
    parser.add_argument("--captum-batch", type=int, default=16, help="captum's perturbations_per_eval")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    p, s = args.patch, args.stride
    lines = [
        f"Image {args.size}x{args.size}, patch {p}, stride {s}, target 0; hyinf medians of {args.repeats} alternating rounds "
        f"(min-max), captum once with perturbations_per_eval={args.captum_batch}.",
        "",
        "| model | hyinf.explain hybrid (s) | hyinf.Occlusion (s) | drop-in / explain | captum Occlusion (s) | speedup over captum | max error vs captum |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in args.models:
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)(weights=None).eval()
        x = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
        start = time.perf_counter()
        reference = CaptumOcclusion(model).attribute(x, sliding_window_shapes=(3, p, p), strides=(3, s, s), target=0, perturbations_per_eval=args.captum_batch)
        captum_s = time.perf_counter() - start
        print(f"{name} captum: {captum_s:.1f} s", file=sys.stderr, flush=True)
        times: dict[str, list[float]] = {"explain": [], "dropin": []}
        error = 0.0
        dropin = hyinf.Occlusion(model)
        for _ in range(args.repeats):
            start = time.perf_counter()
            explained = hyinf.explain(model, x, patch=p, stride=s, target=0, mode="hybrid")
            times["explain"].append(time.perf_counter() - start)
            start = time.perf_counter()
            attr = dropin.attribute(x, sliding_window_shapes=(3, p, p), strides=(3, s, s), target=0)
            times["dropin"].append(time.perf_counter() - start)
            assert dropin.last_run is not None and dropin.last_run.path == "engine", dropin.last_run
            scale = float(reference.abs().max())
            for result in (attr, explained.attribution):
                error = max(error, float((result - reference).abs().max()) / scale)
            if error > TOLERANCE:
                raise SystemExit(f"{name}: attributions differ from captum's by {error:.2e} of the largest (tolerance {TOLERANCE})")
            print(f"{name} explain {times['explain'][-1]:.1f} s, drop-in {times['dropin'][-1]:.1f} s", file=sys.stderr, flush=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        spread = {k: f"{min(v):.1f}-{max(v):.1f}" for k, v in times.items()}
        lines.append(
            f"| {name} | {med['explain']:.1f} ({spread['explain']}) | {med['dropin']:.1f} ({spread['dropin']}) | "
            f"{med['dropin'] / med['explain']:.2f} | {captum_s:.1f} | {captum_s / med['dropin']:.2f}x | {error:.1e} |"
        )
    text = f"Machine: {machine()}.\n\n" + "\n".join(lines) + "\n"
    print(text)
    if args.write:
        write_section(args.write, text, "dropin-speed")


if __name__ == "__main__":
    main()
