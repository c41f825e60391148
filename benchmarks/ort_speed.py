"""ONNX models on the ONNX Runtime backend: naive ORT vs all-incremental ORT vs hybrid ORT, and the same
hybrid plan on the torch backend, interleaved in one run.

    python benchmarks/ort_speed.py                      # resnet18 and vgg16 exported to ONNX, 224x224, patch 16, stride 8
    python benchmarks/ort_speed.py --quick              # resnet18 at stride 16
    python benchmarks/ort_speed.py --write docs/benchmarks.md

Every system explains the same .onnx file. ORT sessions are built on a system's first call and reused
(as they are for every later image), so the first round is reported as the build cost and the times
are medians over the later rounds; the file is imported once (as `hyinf.explain` does for a file it
explains again). Each result is checked against naive before its time counts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torchvision

import hyinf
from engine_speed import check, machine, setting_arguments, write_section
from hyinf.graph.geometry import OcclusionGrid
from hyinf.graph.onnx_frontend import load_onnx
from hyinf.graph.torch_frontend import trace_torch
from hyinf.planner.select import make_plan
from hyinf.profiler.machine import fingerprint

SYSTEMS = (("ort", "naive"), ("ort", "incremental"), ("ort", "hybrid"), ("torch", "hybrid"))


def export(name: str, size: int, folder: Path) -> Path:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    path = folder / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, size, size),), str(path), dynamo=False, opset_version=17)
    return path


def run(models: list[str], size: int, patch: int, stride: int, repeats: int, folder: Path) -> list[dict]:
    rows = []
    for name in models:
        path = export(name, size, folder)
        image = torch.randn(3, size, size, generator=torch.Generator().manual_seed(0))
        start = time.perf_counter()
        imported = load_onnx(path)
        imported_s = time.perf_counter() - start  # hyinf.explain imports a file once and keeps it until it changes
        graph = trace_torch(imported.module, imported.input_shape).graph
        grid = OcclusionGrid.make((size, size), patch, stride)
        # One plan for both backends (the planner's choice with this machine's stored costs).
        plan = make_plan(graph, grid, fingerprint(torch.device("cpu")), model_name=name, db=_database())
        times: dict[tuple[str, str], list[float]] = {s: [] for s in SYSTEMS}
        build: dict[tuple[str, str], float] = {}
        reference, worst = None, 0.0
        for round_ in range(repeats):
            order = SYSTEMS[round_ % len(SYSTEMS):] + SYSTEMS[: round_ % len(SYSTEMS)]
            for backend, mode in order:
                start = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the plan was made with torch costs: ORT warns, by design
                    result = hyinf.explain(str(path), image, patch=patch, stride=stride, mode=mode, backend=backend,
                                           plan=plan if mode == "hybrid" else None)
                elapsed = time.perf_counter() - start
                if reference is None and mode == "naive":
                    reference = result.scores
                if reference is not None:
                    worst = max(worst, check(reference, result.scores, f"{name} {backend} {mode}"))
                if round_ == 0:
                    build[(backend, mode)] = result.timings.get("compile_s", 0.0)
                else:
                    times[(backend, mode)].append(elapsed)
                print(f"{name} round {round_ + 1} {backend} {mode}: {elapsed:.2f} s", file=sys.stderr, flush=True)
        rows.append({"model": name, "positions": len(grid), "times": times, "build": build, "import": imported_s, "error": worst})
    return rows


def _database() -> hyinf.plans_db.Database | None:
    from hyinf.plans_db import Database
    from hyinf.plans_db.location import existing_database

    url = existing_database(None)
    return Database(url) if url is not None else None


def table(rows: list[dict], size: int, patch: int, stride: int, repeats: int) -> str:
    med = lambda r, s: statistics.median(r["times"][s])  # noqa: E731
    spread = lambda r, s: f"{min(r['times'][s]):.1f}-{max(r['times'][s]):.1f}"  # noqa: E731
    lines = [
        f"Models exported to ONNX (TorchScript exporter, opset 17), image {size}x{size}, patch {patch}, stride {stride}, CPU; "
        f"seconds per image once sessions exist (median and min-max of {repeats - 1} interleaved rounds after a first, building round); "
        "build = session construction on the first image (lowering, export, ORT optimisation, the check against torch); "
        "import = checking and importing the .onnx file, once per process for both backends (kept until the file changes).",
        "",
        "| model | positions | naive ORT | incremental ORT | hybrid ORT | hybrid torch (same plan) | hybrid ORT speedup over naive ORT | "
        "hybrid ORT vs torch | ORT build (incremental / hybrid) | import | max error |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [f"{med(r, s):.1f} ({spread(r, s)})" for s in SYSTEMS]
        lines.append(
            f"| {r['model']} | {r['positions']} | {' | '.join(cells)} | {med(r, SYSTEMS[0]) / med(r, SYSTEMS[2]):.2f}x | "
            f"{med(r, SYSTEMS[3]) / med(r, SYSTEMS[2]):.2f}x | {r['build'][SYSTEMS[1]]:.1f} s / {r['build'][SYSTEMS[2]]:.1f} s | {r['import']:.1f} s | {r['error']:.1e} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    setting_arguments(parser, ["resnet18", "vgg16"], "rounds, the first of which builds the sessions")
    parser.add_argument("--quick", action="store_true", help="resnet18 at stride 16")
    parser.add_argument("--write", type=Path, help="replace the ORT section of this markdown file with the table")
    args = parser.parse_args()
    if args.quick:
        args.models, args.stride = ["resnet18"], 16
    with tempfile.TemporaryDirectory() as folder:
        rows = run(args.models, args.size, args.patch, args.stride, max(args.repeats, 2), Path(folder))
    text = f"Machine: {machine()}, onnxruntime {__import__('onnxruntime').__version__}.\n\n{table(rows, args.size, args.patch, args.stride, max(args.repeats, 2))}\n"
    print(text)
    if args.write:
        write_section(args.write, text, "ort-speed")


if __name__ == "__main__":
    main()
