"""Planned hybrid runs vs all-incremental and all-full, with the cost model's predictions beside them.

    python benchmarks/planner.py --write docs/benchmarks.md

Profiles this machine first (the full sweep plus resnet18 and vgg16 layers) unless --db names a
database holding a cost model for it. Then for each model (224x224, inception_v3 299x299; patch 16,
stride 8): plans with the optimal planner (timed), and times all-incremental, all-full and the plan,
interleaved round by round. The three results are compared before any time is reported.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from engine_speed import machine, write_section
from suite import build
from hyinf.explain import compile_engine
from hyinf.graph.geometry import OcclusionGrid
from hyinf.graph.torch_frontend import trace_torch
from hyinf.planner.select import make_plan
from hyinf.plans_db import Database
from hyinf.profiler.machine import fingerprint
from hyinf.profiler.profile import ModelTarget, device_costs, profile
from hyinf.runtime.budget import batch_size_for, bytes_per_position
from hyinf.runtime.engine import BlockedEngine, CleanImage

MODELS = ("resnet18", "resnet50", "vgg16", "inception_v3", "densenet121", "mobilenet_v3_large", "efficientnet_b0")
CPU = torch.device("cpu")


def run(engine: BlockedEngine, clean: CleanImage, fill: torch.Tensor) -> torch.Tensor:
    """Every position's outputs (target 0), chunked as `hyinf.explain` chunks them."""
    size = batch_size_for(bytes_per_position(engine), len(engine.grid), None, None, engine.program.device)
    scores = torch.empty(len(engine.grid))
    with torch.inference_mode():
        for _, positions, outputs in engine.chunks(clean, fill, size):
            scores[positions] = outputs.reshape(len(outputs), -1)[:, 0]
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", help="database with this machine's cost model (default: profile into a temporary one)")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    db = Database(args.db or str(Path(tempfile.mkdtemp()) / "bench.db"))
    fp = fingerprint(CPU)
    if device_costs(db, fp)[1]["kind"] != "learned":
        targets = []
        for name in ("resnet18", "vgg16"):
            model, size = build(name)
            targets.append(ModelTarget(f"torchvision:{name}", trace_torch(model, (1, 3, size, size), CPU), OcclusionGrid.make((size, size), 16, 8)))
        print("profiling ...", flush=True)
        profile(db, CPU, models=targets)
    cost_model = device_costs(db, fp)[1]

    cases = []
    for name in args.models:
        model, size = build(name)
        program = trace_torch(model, (1, 3, size, size), CPU)
        grid = OcclusionGrid.make((size, size), 16, 8)
        start = time.perf_counter()
        document = make_plan(program.graph, grid, fp, model_name=f"torchvision:{name}", db=db)
        planning = time.perf_counter() - start
        image = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
        engines = {
            "all-incremental": compile_engine(program, grid, "incremental"),
            "all-full": compile_engine(program, grid, "full"),
            "hybrid": compile_engine(program, grid, "hybrid", document),
        }
        cases.append((name, grid, document, planning, CleanImage(program, image), engines))

    times: dict[tuple[str, str], list[float]] = {}
    fill = torch.zeros(1, 3, 1, 1)
    for r in range(args.rounds):
        for name, grid, _, _, clean, engines in cases:
            results = {}
            for system, engine in engines.items():
                start = time.perf_counter()
                results[system] = run(engine, clean, fill)
                times.setdefault((name, system), []).append(time.perf_counter() - start)
            scale = float(results["all-full"].abs().max().clamp(min=1e-6))
            for system, scores in results.items():
                error = float((scores - results["all-full"]).abs().max())
                assert error <= 1e-4 * scale, f"{name} {system}: max error {error:.3g} vs all-full"
            print(f"round {r + 1} {name}: " + ", ".join(f"{s} {times[name, s][-1]:.1f} s" for s in engines), flush=True)

    lines = [
        f"Machine: {machine()}. Patch 16, stride 8, 224x224 (inception_v3 299x299); cost model: {cost_model['kind']} "
        f"(this machine's full `hyinf profile` sweep plus resnet18 and vgg16 layers; the other models were never profiled). "
        f"Medians of {args.rounds} interleaved rounds (min-max); predicted times in brackets.",
        "",
        "| model | positions | all-incremental (s) | all-full (s) | hybrid plan (s) | hybrid / best of the two | planning (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, grid, document, planning, _, _ in cases:
        predicted = document.body["predicted_s"]
        med = {s: statistics.median(times[name, s]) for s in ("all-incremental", "all-full", "hybrid")}

        def cell(system: str, key: str) -> str:
            t = times[name, system]
            return f"{med[system]:.1f} ({min(t):.1f}-{max(t):.1f}) [{predicted[key]:.1f}]"

        ratio = med["hybrid"] / min(med["all-incremental"], med["all-full"])
        lines.append(f"| {name} | {len(grid)} | {cell('all-incremental', 'all-incremental')} | {cell('all-full', 'all-full')} "
                     f"| {cell('hybrid', 'plan')} | {ratio:.2f} | {planning:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        write_section(args.write, "## Planner: optimal hybrid plans vs all-incremental and all-full\n\n" + text, "planner")


if __name__ == "__main__":
    main()
