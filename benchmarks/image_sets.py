"""Many images, four ways: a loop of `Explainer.explain`, `Explainer.explain_batch`, `hyinf explain`
over the folder in one process, and `hyinf explain --ray` on a local Ray cluster.

    python benchmarks/image_sets.py --write docs/benchmarks.md

Per model (default: 200 images on the demo CNN and 32 on resnet18, 224/16/8 for resnet18 and the
demo's own 128/16/8), every way runs as a fresh process, and the ways alternate within each round
(the order rotates per round). The API ways time the loop alone (the Explainer, images loaded);
the CLI and Ray ways the whole process, from start to the last file. Ray runs with a cluster started
for the run (2 workers of 1 thread and 1 worker of 2 threads) and on a cluster already running
(`ray start --head --port 6390`: 6379, its default, is often Redis; 2 workers of 1 thread), so the
cluster's start is seen apart. Memory is the
machine's peak use above its use before the run (MemTotal - MemAvailable, sampled every 50 ms), so
Ray's worker processes count. Every run is checked: all images explained, heatmaps equal to the
CLI run's (1e-4 of the score scale).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from engine_speed import machine, report

HYINF = str(Path(sys.executable).parent / "hyinf")
RAY = str(Path(sys.executable).parent / "ray")
API = """
import sys, time, torch
from pathlib import Path
from hyinf.imageset.worker import JobSpec, Worker
spec = JobSpec(sys.argv[1], settings={"patch": 16, "stride": 8})
worker = Worker(spec)
images = [worker.loaded.normalise(worker.pixels(p)) for p in sorted(Path(sys.argv[2]).iterdir())]
start = time.perf_counter()
if sys.argv[3] == "loop":
    results = [worker.explainer.explain(image) for image in images]
else:
    results = worker.explainer.explain_batch(images)
print(time.perf_counter() - start, len(results))
"""


class Memory:
    """The machine's peak memory use above its use when started, sampled in a thread."""

    def __init__(self) -> None:
        self.base = self.peak = self._used()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    @staticmethod
    def _used() -> int:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        return (int(info["MemTotal"].split()[0]) - int(info["MemAvailable"].split()[0])) * 1024

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._used())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return (self.peak - self.base) / 2**30


def make_images(folder: Path, count: int, size: int) -> None:
    """Demo scenes (a shape of each class on clutter), so class means mean something."""
    from hyinf.demo.scenes import scene

    folder.mkdir(parents=True)
    rng = random.Random(0)
    for i in range(count):
        image, _ = scene(i % 4, rng, size)
        image.save(folder / f"{i:04d}.png")


def one_way(way: str, model: str, images: Path, work: Path) -> dict:
    out = Path(tempfile.mkdtemp(dir=work))
    memory = Memory()
    start = time.perf_counter()
    if way in ("loop", "batch"):
        done = subprocess.run([sys.executable, "-c", API, model, str(images), way], capture_output=True, text=True)
    else:
        extra = {"cli": [], "ray 2x1": ["--ray", "--workers", "2", "--threads", "1"],
                 "ray 1x2": ["--ray", "--workers", "1", "--threads", "2"],
                 "ray running 2x1": ["--ray", "auto", "--workers", "2", "--threads", "1"]}[way]
        done = subprocess.run([HYINF, "explain", model, str(images), "--out", str(out), "--quiet", "--contact-sheet", "0", *extra],
                              capture_output=True, text=True)
    wall = time.perf_counter() - start
    peak = memory.stop()
    if done.returncode != 0:
        raise SystemExit(f"{way} failed: {done.stderr.strip()[-2000:]}")
    seconds = float(done.stdout.split()[0]) if way in ("loop", "batch") else wall
    return {"seconds": seconds, "memory": peak, "out": out}


def check(run: dict, reference: dict, count: int) -> None:
    """Every image's heatmap equals the CLI run's."""
    if "out" not in run or not (run["out"] / "index.csv").exists():
        return
    heatmaps = sorted(run["out"].glob("*/heatmap.npy"))
    assert len(heatmaps) == count, f"{len(heatmaps)} of {count} images explained"
    for path in heatmaps:
        ref = np.load(reference["out"] / path.parent.name / "heatmap.npy")
        got = np.load(path)
        assert np.abs(got - ref).max() <= 1e-4 * max(1e-6, float(np.abs(ref).max())), path


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", default=["demo:200:128:3", "torchvision:resnet18:32:224:2"],
                        help="MODEL:COUNT:SIZE:ROUNDS (interleaved rounds), for example demo:200:128:3")
    parser.add_argument("--ways", nargs="+", default=["loop", "batch", "cli", "ray 2x1", "ray 1x2", "ray running 2x1"])
    parser.add_argument("--write", type=Path, help="markdown file whose image-sets section is replaced")
    args = parser.parse_args()
    lines = [f"Machine: {machine()}; {time.strftime('%Y-%m-%d')}; interleaved rounds (the table says how many), fresh processes. "
             "Seconds and images/s: medians (range); memory: the machine's peak use above its use before the run, GiB. "
             "loop and batch time the Explainer's calls alone; cli and ray the whole process. "
             "Ray overhead: ray seconds over cli seconds - 1.", "",
             "| model | images | rounds | way | seconds | images/s | peak memory GiB | over cli |",
             "|---|---:|---:|---|---:|---:|---:|---:|"]
    for entry in args.sets:
        model, count, size, rounds = entry.rsplit(":", 3)
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            images = work / "images"
            make_images(images, int(count), int(size))
            runs: dict[str, list[dict]] = {way: [] for way in args.ways}
            running = any("running" in way for way in args.ways)
            if running:
                subprocess.run([RAY, "start", "--head", "--port", "6390", "--num-cpus", "2", "--include-dashboard=false",
                                "--disable-usage-stats"], check=True, capture_output=True)
            try:
                for round_ in range(int(rounds)):
                    order = args.ways[round_ % len(args.ways):] + args.ways[: round_ % len(args.ways)]
                    for way in order:
                        runs[way].append(one_way(way, model, images, work))
                        print(f"{model} round {round_} {way}: {runs[way][-1]['seconds']:.2f} s", file=sys.stderr)
                    if "cli" in runs:
                        for way in args.ways:
                            check(runs[way][-1], runs["cli"][-1], int(count))
            finally:
                if running:
                    subprocess.run([RAY, "stop", "--force"], capture_output=True)
            cli = [r["seconds"] for r in runs.get("cli", [])]
            for way in args.ways:
                seconds = [r["seconds"] for r in runs[way]]
                rate = [int(count) / s for s in seconds]
                over = (spread([s / c - 1 for s, c in zip(seconds, cli, strict=True)]) if cli and way.startswith("ray") else "")
                lines.append(f"| {model} ({size}px) | {count} | {rounds} | {way} | {spread(seconds)} | {spread(rate)} | "
                             f"{statistics.median(r['memory'] for r in runs[way]):.2f} | {over} |")
    report("\n".join(lines) + "\n", args.write, "image-sets")


if __name__ == "__main__":
    os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    main()
