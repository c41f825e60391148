"""What a user running `hyinf explain` once per image sees: wall time of fresh processes.

    python benchmarks/cold_start.py --models torchvision:resnet18 --rounds 3 --write docs/benchmarks.md

Every run is a new `hyinf explain MODEL IMAGE --quiet` process, 224x224 (the model's usual size),
patch 16, stride 8. Naive and a first hybrid process start with an empty cache folder
(XDG_CACHE_HOME) and an empty plans database, so nothing is kept from an earlier run; a second hybrid
process then starts with what the first left in its cache. Per model and backend the three alternate
within each round. Reported: medians and ranges of the wall time measured outside the process,
hybrid over naive, the second process's seconds outside the positions, and where the hybrid runs'
seconds go (report.json's process_s and timings_s, medians).
`onnx:NAME` exports the torchvision model (random weights, seed 0) to ONNX first and explains the file.

`--profiled DB` starts every plans database as a copy of DB (a SQLite file holding this machine's torch
and ort profiles, no plans: `hyinf profile --quick` and `hyinf profile --quick --backend ort`), so plans
are made from the learned cost models. Backend `auto` runs a first and a second hybrid process (its naive
runs are torch's) and is compared with the faster of torch's and ort's in the same round.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from engine_speed import machine, report
from ort_speed import export
from PIL import Image

STEPS = ("startup_s", "imports_s", "model_load_s", "image_s", "choose_s", "trace_s", "verify_s", "compile_s", "positions_s", "write_s")


def environment(run: Path, daemon: Path | None = None, profiled: Path | None = None) -> dict[str, str]:
    """The cache folder and plans database in `run` (a copy of `profiled` if given and it has none yet);
    the daemon socket `daemon` (None: no daemon)."""
    if profiled is not None and not (run / "plans.db").exists():
        shutil.copyfile(profiled, run / "plans.db")
    env = {**os.environ, "XDG_CACHE_HOME": str(run / "cache"), "HYINF_DB": str(run / "plans.db")}
    env.pop("HYINF_CACHE_DIR", None)
    if daemon is None:
        env["HYINF_DAEMON"] = "0"
    else:
        env["HYINF_DAEMON_SOCKET"] = str(daemon)
    return env


def one_run(spec: str, image: Path, mode: str, backend: str, run: Path, daemon: Path | None = None,
            profiled: Path | None = None) -> dict:
    """One fresh process with the cache folder and plans database in `run` (handing its work to the
    daemon listening at `daemon`, if given): its wall time, report timings and the backend that ran."""
    env = environment(run, daemon, profiled)
    out = Path(tempfile.mkdtemp(dir=run))
    command = [str(Path(sys.executable).parent / "hyinf"), "explain", spec, str(image), "--mode", mode, "--backend", backend,
               "--out", str(out), "--quiet"]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr.strip()}")
    found = json.loads((out / "report.json").read_text())
    return {"wall": wall, **found["process_s"], **found["timings_s"], "backend": found["settings"]["backend"]}


def ratio(runs: list[dict], naive: list[dict]) -> str:
    values = [r["wall"] / n["wall"] for r, n in zip(runs, naive)]
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def where(runs: list[dict]) -> str:
    return ", ".join(f"{statistics.median(r.get(s, 0.0) for r in runs):.1f}" for s in STEPS)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def arguments(description: str, section: str) -> argparse.Namespace:
    """The options of the fresh-process benchmarks; --write rewrites `section` of a markdown file."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--models", nargs="+", default=["torchvision:resnet18", "torchvision:vgg16", "onnx:resnet50"])
    parser.add_argument("--backends", nargs="+", default=["torch", "ort"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profiled", type=Path, help="a SQLite plans database with this machine's profiles, copied into every run")
    parser.add_argument("--write", type=Path, help=f"Markdown file whose {section} section is rewritten.")
    return parser.parse_args()


def photo(folder: Path) -> Path:
    """A 224x224 image of noise (seed 0) in `folder`."""
    image = folder / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(image)
    return image


def main() -> None:
    args = arguments(__doc__.splitlines()[0], "cold-start")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        image = photo(folder)
        specs = {m: str(export(m.split(":", 1)[1], 224, folder)) if m.startswith("onnx:") else m for m in args.models}
        runs: dict[tuple[str, str, str], list[dict]] = {}
        per_round = sum(2 if backend == "auto" else 3 for backend in args.backends)
        total, start = args.rounds * len(specs) * per_round, time.perf_counter()

        def record(key: tuple[str, str, str], mode: str, run: Path) -> None:
            runs.setdefault(key, []).append(one_run(specs[key[0]], image, mode, key[1], run, profiled=args.profiled))
            done = sum(map(len, runs.values()))
            elapsed = time.perf_counter() - start
            print(f"[{done}/{total}] {' '.join(key)}: {runs[key][-1]['wall']:.1f} s; about {elapsed / done * (total - done) / 60:.0f} min left",
                  file=sys.stderr, flush=True)

        for _ in range(args.rounds):
            for model in specs:
                for backend in args.backends:
                    if backend != "auto":  # auto's naive runs are torch's
                        record((model, backend, "naive"), "naive", Path(tempfile.mkdtemp(dir=folder)))
                    shared = Path(tempfile.mkdtemp(dir=folder))
                    record((model, backend, "hybrid"), "hybrid", shared)
                    record((model, backend, "warm"), "hybrid", shared)
    steps = ", ".join(s.removesuffix("_s") for s in STEPS)
    fixed = [b for b in args.backends if b != "auto"]
    databases = ("a copy of a database holding this machine's torch and ort profiles (no plans)" if args.profiled
                 else "an empty plans database")
    lines = [f"Machine: {machine()}; fresh process per run, {args.rounds} interleaved rounds; seconds, median (range). "
             "Naive and the first hybrid process start with an empty cache folder; the second hybrid process with the first one's. "
             f"Every run starts with {databases}.", "",
             "| model | backend | naive | hybrid, first | hybrid / naive | hybrid, second | second / naive | second, outside positions |",
             "|---|---|---|---|---|---|---|---|"]
    for model in specs:
        for backend in fixed:
            naive, hybrid, warm = (runs[(model, backend, m)] for m in ("naive", "hybrid", "warm"))
            lines.append(f"| {model} | {backend} | {spread([r['wall'] for r in naive])} | {spread([r['wall'] for r in hybrid])} | "
                         f"{ratio(hybrid, naive)} | {spread([r['wall'] for r in warm])} | {ratio(warm, naive)} | "
                         f"{spread([r['wall'] - r['positions_s'] for r in warm])} |")
    lines += ["", f"Where the hybrid processes' seconds go (medians): {steps}.", "",
              "| model | backend | first process | second process |", "|---|---|---|---|"]
    for model in specs:
        for backend in args.backends:
            lines.append(f"| {model} | {backend} | {where(runs[(model, backend, 'hybrid')])} | {where(runs[(model, backend, 'warm')])} |")
    if "auto" in args.backends and {"torch", "ort"} <= set(fixed):
        lines += ["", "Backend auto against the faster of torch and ort hybrid in the same round (first and second process):", "",
                  "| model | auto ran (first; second) | auto, first | auto / faster, first | auto, second | auto / faster, second |",
                  "|---|---|---|---|---|---|"]
        for model in specs:
            cells = []
            for step in ("hybrid", "warm"):
                auto = runs[(model, "auto", step)]
                faster = [min(t, o, key=lambda r: r["wall"]) for t, o in zip(runs[(model, "torch", step)], runs[(model, "ort", step)])]
                cells += [spread([r["wall"] for r in auto]), ratio(auto, faster)]
            ran = "; ".join("/".join(sorted({r["backend"] for r in runs[(model, "auto", step)]})) for step in ("hybrid", "warm"))
            lines.append(f"| {model} | {ran} | {' | '.join(cells)} |")
    report("\n".join(lines) + "\n", args.write, "cold-start")


if __name__ == "__main__":
    main()
