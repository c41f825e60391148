"""Each GPU step on its own: hyinf's engine eager and replayed from CUDA graphs, in float32 and TF32.

    python benchmarks/gpu_steps.py --write docs/gpu.md     # needs a CUDA GPU

Per model and mode (224x224, patch 16, stride 8, target 0), one Explainer per setting (kept, as a
caller explaining many images keeps it): the first call (tracing, planning, captures) and the median
of `--repeats` later calls, interleaved across settings; each result's largest difference from float32
naive re-inference, relative to the score scale (float32 settings must stay within the GPU tolerance
of the suite, 1e-3; TF32 ones report how far they are). Ratios are against the eager float32 run of
the same model and mode, so they compare like with like.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from engine_speed import machine, report
from suite import GPU_TOLERANCE, build

import hyinf

SETTINGS = {"eager float32": (False, "float32"), "graphs float32": (True, "float32"),
            "eager tf32": (False, "tf32"), "graphs tf32": (True, "tf32")}


def timed(run) -> tuple[float, object]:
    torch.cuda.synchronize()
    start = time.perf_counter()
    result = run()
    torch.cuda.synchronize()
    return time.perf_counter() - start, result


def run_model(name: str, modes: list[str], repeats: int, device: torch.device) -> list[str]:
    model, size = build(name)
    model = model.to(device)
    image = torch.randn(3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    reference = hyinf.explain(model, image, mode="naive", patch=16, stride=8, target=0, device=device)
    scale = float(reference.scores.abs().max().clamp(min=1e-6))
    rows = []
    for mode in modes:
        explainers = {s: hyinf.Explainer(model, mode=mode, patch=16, stride=8, device=device, cuda_graphs=g, precision=p)
                      for s, (g, p) in SETTINGS.items()}
        first, times, errors = {}, {s: [] for s in SETTINGS}, {}
        for setting, explainer in explainers.items():
            first[setting], result = timed(lambda e=explainer: e.explain(image, target=0))
            errors[setting] = float((result.scores - reference.scores).abs().max()) / scale
            if setting.endswith("float32") and errors[setting] > GPU_TOLERANCE:
                raise SystemExit(f"{name} {mode} {setting}: {errors[setting]:.2e} of the score scale from naive")
        order = list(SETTINGS)
        for round_ in range(repeats):
            for setting in order[round_ % len(order):] + order[: round_ % len(order)]:
                times[setting].append(timed(lambda e=explainers[setting]: e.explain(image, target=0))[0])
        base = statistics.median(times["eager float32"])
        for setting in SETTINGS:
            median = statistics.median(times[setting])
            rows.append(f"| {name} | {mode} | {setting} | {first[setting]:.3f} | {median:.4f} ({min(times[setting]):.4f}-"
                        f"{max(times[setting]):.4f}) | {base / median:.2f}x | {errors[setting]:.1e} |")
            print(rows[-1], file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["vgg16", "resnet18", "resnet50", "inception_v3"])
    parser.add_argument("--modes", nargs="+", default=["incremental", "hybrid"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_steps.py measures CUDA graphs and TF32: it needs a CUDA GPU")
    device = torch.device("cuda")
    lines = [f"Machine: {machine(device)}; {time.strftime('%Y-%m-%d')}; 224x224, patch 16, stride 8; seconds per call, median "
             f"(min-max) of {args.repeats} interleaved calls after the first; speed-up over eager float32; error: largest "
             "difference from float32 naive re-inference over the score scale.", "",
             "| model | mode | setting | first call (s) | per call (s) | over eager float32 | error |",
             "|---|---|---|---:|---:|---:|---:|"]
    for name in args.models:
        lines += run_model(name, args.modes, args.repeats, device)
    report("\n".join(lines) + "\n", args.write, "gpu-steps")


if __name__ == "__main__":
    main()
