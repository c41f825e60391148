"""Backend choice (issue 32): ORT hybrid with plans from ORT's own cost model against plans from torch's,
and backend `auto` against the faster of the two backends, on the suite's eight CNNs.

    python benchmarks/backend_choice.py --db sqlite:///profiled.db --write docs/benchmarks.md

The database must hold a torch and an ort profile of this machine (`hyinf profile --quick` and `hyinf
profile --quick --backend ort`). Per model, in one process, one Explainer per system is kept warm (its
program traced, plan made, ORT session built before the rounds), each checked against naive
re-inference, then timed in interleaved rounds: torch hybrid (torch's plan), ORT hybrid with torch's
plan, ORT hybrid with ORT's plan, and `auto`. Medians (min-max) and per-round ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from engine_speed import check, machine, write_section
from suite import MODELS, build

import hyinf
from hyinf.errors import PlanWarning
from hyinf.graph.geometry import OcclusionGrid
from hyinf.graph.torch_frontend import trace_torch
from hyinf.planner.select import make_plan
from hyinf.plans_db import Database
from hyinf.profiler.machine import fingerprint

SYSTEMS = ("torch", "ort (torch plan)", "ort (ort plan)", "auto")


def explainers(model: torch.nn.Module, size: int, patch: int, stride: int, db: str) -> dict[str, hyinf.Explainer]:
    """The four systems' Explainers; the ORT one with torch's plan is given a plan made from torch's costs."""
    cpu = torch.device("cpu")
    graph = trace_torch(model, (1, 3, size, size), cpu).graph
    grid = OcclusionGrid.make((size, size), patch, stride)
    with Database(db) as database:
        torch_plan = make_plan(graph, grid, fingerprint(cpu), model_name="bench", db=database, backend="torch")
    settings = {"patch": patch, "stride": stride, "db": db}
    return {
        "torch": hyinf.Explainer(model, backend="torch", **settings),
        "ort (torch plan)": hyinf.Explainer(model, backend="ort", plan=torch_plan, **settings),
        "ort (ort plan)": hyinf.Explainer(model, backend="ort", **settings),
        "auto": hyinf.Explainer(model, backend="auto", **settings),
    }


def run_model(name: str, patch: int, stride: int, rounds: int, db: str) -> dict[str, object]:
    model, size = build(name)
    image = torch.randn(3, size, size, generator=torch.Generator().manual_seed(0))
    systems = explainers(model, size, patch, stride, db)
    reference = hyinf.Explainer(model, mode="naive", patch=patch, stride=stride).explain(image, 0)
    times: dict[str, list[float]] = {s: [] for s in SYSTEMS}
    chosen = ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PlanWarning)  # the torch plan on ort: meant here
        for system, explainer in systems.items():  # warm: traced, planned, sessions built; and checked
            result = explainer.explain(image, 0)
            check(reference.scores, result.scores, f"{name} {system}")
            if system == "auto":
                chosen = f"{result.backend}: {result.backend_reason}"
        for r in range(rounds):
            order = SYSTEMS[r % len(SYSTEMS):] + SYSTEMS[: r % len(SYSTEMS)]
            for system in order:
                start = time.perf_counter()
                systems[system].explain(image, 0)
                times[system].append(time.perf_counter() - start)
            print(f"  {name} round {r + 1}: " + ", ".join(f"{s} {times[s][-1]:.2f} s" for s in SYSTEMS), file=sys.stderr)
    return {"model": name, "times": times, "chosen": chosen}


def _cell(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def _ratio(top: list[float], bottom: list[float]) -> str:
    """The median of per-round ratios, with their range."""
    ratios = [a / b for a, b in zip(top, bottom)]
    return f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"


def table(rows: list[dict[str, object]], patch: int, stride: int, rounds: int) -> str:
    lines = [
        f"Machine: {machine()}; patch {patch}, stride {stride}, {rounds} interleaved rounds of warm Explainers; seconds, "
        "median (range); ratios per round. Faster = the faster of torch and ort (ort plan) in that round.",
        "",
        "| model | torch | ort (torch plan) | ort (ort plan) | auto | torch plan / ort plan on ort | auto / faster | auto chose |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        t: dict[str, list[float]] = row["times"]  # type: ignore[assignment]
        faster = [min(a, b) for a, b in zip(t["torch"], t["ort (ort plan)"])]
        chose = str(row["chosen"]).split(":")[0]
        lines.append(f"| {row['model']} | {_cell(t['torch'])} | {_cell(t['ort (torch plan)'])} | {_cell(t['ort (ort plan)'])} | "
                     f"{_cell(t['auto'])} | {_ratio(t['ort (torch plan)'], t['ort (ort plan)'])} | {_ratio(t['auto'], faster)} | {chose} |")
    lines.append("")
    lines += [f"- {row['model']}: auto chose {row['chosen']}" for row in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--db", required=True, help="a database with this machine's torch and ort profiles")
    parser.add_argument("--write", type=Path, help="replace the backend-choice section of this markdown file")
    args = parser.parse_args()
    rows = []
    for name in args.models:
        rows.append(run_model(name, args.patch, args.stride, args.rounds, args.db))
        print(table(rows, args.patch, args.stride, args.rounds))  # what is measured so far survives an interruption
    text = table(rows, args.patch, args.stride, args.rounds)
    if args.write:
        write_section(args.write, text, "backend-choice")


if __name__ == "__main__":
    main()
