"""What a user running `hyinf explain` once per image sees: wall time of fresh processes.

    python benchmarks/cold_start.py --models torchvision:resnet18 --rounds 3 --write docs/benchmarks.md

Every run is a new `hyinf explain MODEL IMAGE --quiet` process, 224x224 (the model's usual size),
patch 16, stride 8, with an empty cache folder (XDG_CACHE_HOME) and an empty plans database, so
nothing is kept from an earlier run. Per model and backend, naive and hybrid alternate within each
round. Reported: medians and ranges of the wall time measured outside the process, hybrid over
naive, and where a hybrid run's seconds go (report.json's process_s and timings_s, medians).
`onnx:NAME` exports the torchvision model (random weights, seed 0) to ONNX first and explains the file.
"""

from __future__ import annotations

import argparse
import json
import os
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

STEPS = ("startup_s", "imports_s", "model_load_s", "image_s", "trace_s", "verify_s", "compile_s", "positions_s", "write_s")


def one_run(spec: str, image: Path, mode: str, backend: str, folder: Path) -> dict:
    """One fresh process with empty caches: its wall time and its report."""
    run = Path(tempfile.mkdtemp(dir=folder))
    env = {**os.environ, "XDG_CACHE_HOME": str(run / "cache"), "HYINF_DB": str(run / "plans.db")}
    command = [str(Path(sys.executable).parent / "hyinf"), "explain", spec, str(image), "--mode", mode, "--backend", backend,
               "--out", str(run / "out"), "--quiet"]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr.strip()}")
    found = json.loads((run / "out" / "report.json").read_text())
    return {"wall": wall, **found["process_s"], **found["timings_s"]}


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["torchvision:resnet18", "torchvision:vgg16", "onnx:resnet50"])
    parser.add_argument("--backends", nargs="+", default=["torch", "ort"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", type=Path, help="Markdown file whose cold-start section is rewritten.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        image = folder / "photo.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(image)
        specs = {m: str(export(m.split(":", 1)[1], 224, folder)) if m.startswith("onnx:") else m for m in args.models}
        runs: dict[tuple[str, str, str], list[dict]] = {}
        for _ in range(args.rounds):
            for model, spec in specs.items():
                for backend in args.backends:
                    for mode in ("naive", "hybrid"):
                        runs.setdefault((model, backend, mode), []).append(one_run(spec, image, mode, backend, folder))
    lines = [f"Machine: {machine()}; fresh process per run, empty caches, {args.rounds} interleaved rounds; "
             "seconds, median (range).", "",
             "| model | backend | naive | hybrid | hybrid / naive | hybrid: " + ", ".join(s.removesuffix("_s") for s in STEPS) + " |",
             "|---|---|---|---|---|---|"]
    for model in specs:
        for backend in args.backends:
            naive, hybrid = runs[(model, backend, "naive")], runs[(model, backend, "hybrid")]
            ratio = [h["wall"] / n["wall"] for h, n in zip(hybrid, naive)]
            where = ", ".join(f"{statistics.median(r.get(s, 0.0) for r in hybrid):.1f}" for s in STEPS)
            lines.append(f"| {model} | {backend} | {spread([r['wall'] for r in naive])} | {spread([r['wall'] for r in hybrid])} | "
                         f"{statistics.median(ratio):.2f} ({min(ratio):.2f}-{max(ratio):.2f}) | {where} |")
    report("\n".join(lines) + "\n", args.write, "cold-start")


if __name__ == "__main__":
    main()
