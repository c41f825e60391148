"""Backend choice (issue 32): ORT hybrid with plans from ORT's own cost model (as planned, and as
`hyinf plan --measure` chooses among its neighbours) against plans from torch's, and backend `auto`
against the faster of the two backends, on the suite's eight CNNs.

    python benchmarks/backend_choice.py --db sqlite:///profiled.db --write docs/benchmarks.md

The database must hold a torch and an ort profile of this machine (`hyinf profile --quick` and `hyinf
profile --quick --backend ort`). Per model, in one process, one Explainer per system is kept warm (its
program traced, plan made, ORT session built before the rounds), each checked against naive
re-inference, then timed in interleaved rounds: torch hybrid (torch's plan), ORT hybrid with torch's
plan, with ORT's plan and with ORT's measured plan (chosen before, on another image), and `auto`.
Medians (min-max) and per-round ratios.
"""

from __future__ import annotations

import argparse
import gc
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
from hyinf.graph.ir import Graph
from hyinf.graph.torch_frontend import trace_torch
from hyinf.plan_measure import measured_choice
from hyinf.planner.document import PlanDocument
from hyinf.planner.select import candidate_documents, make_plan
from hyinf.plans_db import Database
from hyinf.profiler.machine import fingerprint

SYSTEMS = ("torch", "ort (torch plan)", "ort (ort plan)", "ort (measured plan)", "auto")


def measured_plan(model: torch.nn.Module, graph: Graph, grid: OcclusionGrid, patch: int, stride: int, db: str,
                  rounds: int) -> PlanDocument:
    """ORT's plan as `hyinf plan --backend ort --measure ROUNDS` chooses it (on its own random image)."""
    cpu = torch.device("cpu")
    with Database(db) as database:
        candidates = candidate_documents(graph, grid, fingerprint(cpu), model_name="bench", db=database, backend="ort")
    image = torch.randn((3, *grid.image_size), generator=torch.Generator().manual_seed(1))
    return measured_choice(candidates, lambda d: hyinf.Explainer(model, backend="ort", plan=d, patch=patch, stride=stride), image, rounds)


def explainers(model: torch.nn.Module, size: int, patch: int, stride: int, db: str,
               measure_rounds: int) -> tuple[dict[str, hyinf.Explainer], PlanDocument]:
    """The systems' Explainers (the ORT ones with torch's and with the measured plan are given them) and the measured plan."""
    cpu = torch.device("cpu")
    graph = trace_torch(model, (1, 3, size, size), cpu).graph
    grid = OcclusionGrid.make((size, size), patch, stride)
    measured = measured_plan(model, graph, grid, patch, stride, db, measure_rounds)  # first, and its sessions freed:
    gc.collect()  # four kept vgg16 sessions and two more would not fit 24 GiB
    with Database(db) as database:
        torch_plan = make_plan(graph, grid, fingerprint(cpu), model_name="bench", db=database, backend="torch")
    settings = {"patch": patch, "stride": stride, "db": db}
    systems = {
        "torch": hyinf.Explainer(model, backend="torch", **settings),
        "ort (torch plan)": hyinf.Explainer(model, backend="ort", plan=torch_plan, **settings),
        "ort (ort plan)": hyinf.Explainer(model, backend="ort", **settings),
        "auto": hyinf.Explainer(model, backend="auto", **settings),
    }
    if measured.body["measured"]["chosen"] != 0:  # else the ort plan's own: its column is reused
        systems["ort (measured plan)"] = hyinf.Explainer(model, backend="ort", plan=measured, **settings)
    return systems, measured


def run_model(name: str, patch: int, stride: int, rounds: int, db: str, measure_rounds: int, pair_rounds: int) -> dict[str, object]:
    model, size = build(name)
    image = torch.randn(3, size, size, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    systems, measured = explainers(model, size, patch, stride, db, measure_rounds)
    measuring = time.perf_counter() - start
    reference = hyinf.Explainer(model, mode="naive", patch=patch, stride=stride).explain(image, 0)
    times: dict[str, list[float]] = {s: [] for s in systems}
    chosen = ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PlanWarning)  # the torch plan on ort: meant here
        for system, explainer in systems.items():  # warm: traced, planned, sessions built; and checked
            result = explainer.explain(image, 0)
            check(reference.scores, result.scores, f"{name} {system}")
            if system == "auto":
                chosen = f"{result.backend}: {result.backend_reason}"
        names = list(systems)
        for r in range(rounds):
            order = names[r % len(names):] + names[: r % len(names)]
            for system in order:
                start = time.perf_counter()
                systems[system].explain(image, 0)
                times[system].append(time.perf_counter() - start)
            print(f"  {name} round {r + 1}: " + ", ".join(f"{s} {times[s][-1]:.2f} s" for s in names), file=sys.stderr)
    times.setdefault("ort (measured plan)", times["ort (ort plan)"])
    pair = alone(systems, image, pair_rounds)
    return {"model": name, "times": times, "chosen": chosen, "measured": measured.body["measured"], "measuring_s": measuring,
            "pair": pair}


def alone(systems: dict[str, hyinf.Explainer], image: torch.Tensor, rounds: int) -> list[float]:
    """Per-round ratios torch plan / measured plan on ORT with only those two Explainers alive, as a user
    holds one (the others' sessions freed), in alternating order."""
    mine = "ort (measured plan)" if "ort (measured plan)" in systems else "ort (ort plan)"
    pair = [systems.pop("ort (torch plan)"), systems.pop(mine)]
    systems.clear()
    gc.collect()
    ratios = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PlanWarning)
        for r in range(rounds):
            seconds = []
            for explainer in pair if r % 2 == 0 else pair[::-1]:
                start = time.perf_counter()
                explainer.explain(image, 0)
                seconds.append(time.perf_counter() - start)
            ratios.append(seconds[0] / seconds[1] if r % 2 == 0 else seconds[1] / seconds[0])
    return ratios


def _cell(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def _ratio(top: list[float], bottom: list[float]) -> str:
    """The median of per-round ratios, with their range."""
    return _spread([a / b for a, b in zip(top, bottom)])


def _spread(ratios: list[float]) -> str:
    return f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"


def table(rows: list[dict[str, object]], patch: int, stride: int, rounds: int, measure_rounds: int, pair_rounds: int) -> str:
    lines = [
        f"Machine: {machine()}; patch {patch}, stride {stride}, {rounds} interleaved rounds of warm Explainers; seconds, "
        "median (range); ratios per round. Faster = the faster of torch and ort (measured plan) in that round. The measured "
        f"plan: `hyinf plan --backend ort --measure {measure_rounds}` (candidates from ORT's cost model, run on another image); "
        "= where it kept ORT's cost-model plan (that column's times). Alone: torch plan / measured plan on ORT in "
        f"{pair_rounds} alternating rounds with only those two Explainers alive.",
        "",
        "| model | torch | ort (torch plan) | ort (ort plan) | ort (measured plan) | auto | torch plan / ort plan on ort "
        "| torch plan / measured plan on ort | the same, alone | auto / faster | auto chose |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        t: dict[str, list[float]] = row["times"]  # type: ignore[assignment]
        kept = row["measured"]["chosen"] == 0  # type: ignore[index]
        faster = [min(a, b) for a, b in zip(t["torch"], t["ort (measured plan)"])]
        chose = str(row["chosen"]).split(":")[0]
        measured = "=" if kept else _cell(t["ort (measured plan)"])
        lines.append(f"| {row['model']} | {_cell(t['torch'])} | {_cell(t['ort (torch plan)'])} | {_cell(t['ort (ort plan)'])} | "
                     f"{measured} | {_cell(t['auto'])} | {_ratio(t['ort (torch plan)'], t['ort (ort plan)'])} | "
                     f"{_ratio(t['ort (torch plan)'], t['ort (measured plan)'])} | {_spread(row['pair'])} | "  # type: ignore[arg-type]
                     f"{_ratio(t['auto'], faster)} | {chose} |")
    lines.append("")
    for row in rows:
        m: dict = row["measured"]  # type: ignore[assignment]
        trials = ", ".join(f"x{t['weight']:g} {t['measured_s']:.2f} s ({t['ratio']:.3f})" for t in m["trials"])
        lines.append(f"- {row['model']}: measuring took {row['measuring_s']:.0f} s, {len(m['trials'])} distinct plans "
                     f"(weight on incremental costs, positions' seconds, ratio to the best before it): {trials}; "
                     f"kept x{m['trials'][m['chosen']]['weight']:g}. auto chose {row['chosen']}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--measure-rounds", type=int, default=3, help="rounds per candidate of the measured plan's choice")
    parser.add_argument("--pair-rounds", type=int, default=5, help="rounds of torch plan against measured plan on ORT alone")
    parser.add_argument("--db", required=True, help="a database with this machine's torch and ort profiles")
    parser.add_argument("--write", type=Path, help="replace the backend-choice section of this markdown file")
    args = parser.parse_args()
    rows = []
    for name in args.models:
        rows.append(run_model(name, args.patch, args.stride, args.rounds, args.db, args.measure_rounds, args.pair_rounds))
        print(table(rows, args.patch, args.stride, args.rounds, args.measure_rounds, args.pair_rounds))  # survives an interruption
    text = table(rows, args.patch, args.stride, args.rounds, args.measure_rounds, args.pair_rounds)
    if args.write:
        write_section(args.write, text, "backend-choice")


if __name__ == "__main__":
    main()
