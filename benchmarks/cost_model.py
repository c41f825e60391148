"""Cost-model accuracy on this machine: `hyinf profile`'s full sweep plus resnet18 and vgg16 layers.

    python benchmarks/cost_model.py --write docs/benchmarks.md

Reports, on sweep configurations never fitted to, the learned model's and the analytic FLOP/byte
model's median absolute percentage error and rank correlation (overall and per kind of work), and
for each model whether the learned model picks the cheaper of incremental and full evaluation per
layer as measured (224x224, patch 16, stride 8).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torchvision

from engine_speed import machine, write_section
from hyinf.graph.geometry import OcclusionGrid
from hyinf.graph.torch_frontend import trace_torch
from hyinf.plans_db import Database
from hyinf.profiler.cost_model import Accuracy, AnalyticCosts, LearnedCosts, split
from hyinf.profiler.fitting import evaluate
from hyinf.profiler.machine import fingerprint
from hyinf.profiler.profile import ModelTarget, profile
from hyinf.profiler.sample import KINDS

MODELS = ("resnet18", "vgg16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the --quick sweep")
    parser.add_argument("--db", help="database to profile into (default: a temporary file)")
    parser.add_argument("--reuse", action="store_true", help="evaluate the profiles already in --db (e.g. from benchmarks/planner.py) instead of profiling")
    parser.add_argument("--write", type=Path, help="markdown file whose cost-model section to rewrite")
    args = parser.parse_args()
    cpu = torch.device("cpu")
    targets = []
    for name in MODELS:
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)(weights=None).eval()
        targets.append(ModelTarget(f"torchvision:{name}", trace_torch(model, (1, 3, 224, 224), cpu), OcclusionGrid.make((224, 224), 16, 8)))
    db = Database(args.db or str(Path(tempfile.mkdtemp()) / "bench.db"))
    fp = fingerprint(cpu)
    if args.reuse:
        how = f"profiles already in the database ({db.summary().counts['profile runs']} runs)"
    else:
        start = time.perf_counter()
        report = profile(db, cpu, quick=args.quick, models=targets)
        how = (f"`hyinf profile{' --quick' if args.quick else ''}`, {report.noisy} of {report.samples} measurements with a spread above 15%, "
               f"{time.perf_counter() - start:.0f} s including both models' layers and the fits")
    _, samples = db.samples(db.device_id(fp), "torch")
    sweep = [s for s in samples if s.source == "sweep"]
    train, test = split(sweep)
    learned, analytic = LearnedCosts.fit(train), AnalyticCosts.fit(train)

    lines = [
        f"Machine: {machine()}. {len(sweep)} sweep measurements; {how}.",
        "",
        "Held-out sweep configurations (20%, never fitted to):",
        "",
        "| kind of work | measurements | learned: median abs. % error | analytic: median abs. % error | learned: rank corr. | analytic: rank corr. |",
        "|---|---|---|---|---|---|",
    ]
    for kind in (*KINDS, "all"):
        rows = test if kind == "all" else [s for s in test if s.kind == kind]
        a, b = Accuracy.of(learned, rows), Accuracy.of(analytic, rows)
        lines.append(f"| {kind} | {len(rows)} | {a.mape:.1%} | {b.mape:.1%} | {a.spearman:.3f} | {b.spearman:.3f} |")
    lines += [
        "",
        "Incremental vs full per layer (every node a plan chooses a mode for), 224x224, patch 16, stride 8, largest block of positions, 32 positions per call:",
        "",
        "| model | layers | fitted to the other half of its layers: agree | agree or tie (within 10%) | fitted to the sweep alone: agree | agree or tie |",
        "|---|---|---|---|---|---|",
    ]
    for target in targets:
        mine = [s for s in samples if s.source == "sweep" or s.config.startswith(f"model:{target.name}/")]
        r = evaluate(mine)
        assert r.ranking is not None and r.ranking_sweep_only is not None
        both, alone = r.ranking, r.ranking_sweep_only
        lines.append(
            f"| {target.name} | {both.nodes} | {both.agree} ({both.agree / both.nodes:.0%}) | {both.agree + both.ties} ({(both.agree + both.ties) / both.nodes:.0%}) "
            f"| {alone.agree} ({alone.agree / alone.nodes:.0%}) | {alone.agree + alone.ties} ({(alone.agree + alone.ties) / alone.nodes:.0%}) |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        write_section(args.write, "## Cost model\n\n" + text, "cost-model")


if __name__ == "__main__":
    main()
