"""Naive re-inference vs hyinf's full, incremental and hybrid evaluation, interleaved in one run.

    python benchmarks/engine_speed.py                 # vgg16 and resnet18, 224x224, patch 16, stride 8
    python benchmarks/engine_speed.py --quick         # resnet18 and vgg11 at stride 16, a few minutes
    python benchmarks/engine_speed.py --write docs/benchmarks.md

Systems run in rotating order in every round so machine drift hits them alike; each result is
checked against naive before its time counts. Reports medians, the min-max spread, speedups over
naive (ratios of medians) and the FLOP bound (full-inference FLOPs / incremental FLOPs, from the IR).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision

import hyinf
from hyinf.graph.flops import full_flops, plan_flops
from hyinf.graph.geometry import OcclusionGrid, changed_regions
from hyinf.graph.torch_frontend import trace_torch
from hyinf.runtime.engine import windowable

SYSTEMS = ("naive", "full", "incremental", "hybrid")
TOLERANCE = 1e-4  # of the score scale, as in the test suite


@dataclass
class Row:
    model: str
    positions: int
    flop_bound: float
    times: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SYSTEMS})
    errors: dict[str, float] = field(default_factory=dict)
    plan: str = ""  # where the hybrid run's plan came from

    def median(self, system: str) -> float:
        return statistics.median(self.times[system])

    def spread(self, system: str) -> str:
        t = self.times[system]
        return f"{min(t):.1f}-{max(t):.1f}"


def machine(device: torch.device | None = None) -> str:
    """The host (and, for a GPU run, the GPU) the numbers were measured on."""
    if device is not None and device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.multi_processor_count} SMs, CUDA {torch.version.cuda}), torch {torch.__version__}, Python {platform.python_version()}"
    cpu = platform.processor() or platform.machine()
    try:  # the model name alone ("AMD EPYC") hides the generation: family and model tell them apart
        info = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().splitlines() if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        cpu = f"{info['model name']} (family {info['cpu family']}, model {info['model']})"
    except (OSError, KeyError):
        pass
    return f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, Python {platform.python_version()}"


def setting_arguments(parser: argparse.ArgumentParser, models: list[str], repeats_help: str = "interleaved rounds") -> None:
    """The options every benchmark shares: models, image size, patch, stride, rounds."""
    parser.add_argument("--models", nargs="+", default=models)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help=repeats_help)


def flop_bound(model: torch.nn.Module, size: int, patch: int, stride: int) -> float:
    graph = trace_torch(model, (1, 3, size, size)).graph
    regions = changed_regions(graph, OcclusionGrid.make((size, size), patch, stride))
    return full_flops(graph) / plan_flops(graph, regions, {n.name for n in graph.nodes if windowable(n)})


def run(models: list[str], size: int, patch: int, stride: int, repeats: int) -> list[Row]:
    rows = []
    for name in models:
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)(weights=None).eval()
        image = torch.randn(3, size, size, generator=torch.Generator().manual_seed(0))
        grid = OcclusionGrid.make((size, size), patch, stride)
        row = Row(name, len(grid), flop_bound(model, size, patch, stride))
        reference = None
        for round_ in range(repeats):
            order = SYSTEMS[round_ % len(SYSTEMS):] + SYSTEMS[: round_ % len(SYSTEMS)]
            for system in order:
                start = time.perf_counter()
                result = hyinf.explain(model, image, patch=patch, stride=stride, mode=system)
                elapsed = time.perf_counter() - start
                if system == "naive":
                    reference = reference if reference is not None else result.scores
                if system == "hybrid":
                    row.plan = result.mode
                row.times[system].append(elapsed)
                print(f"{name} round {round_ + 1} {system}: {elapsed:.2f} s", file=sys.stderr, flush=True)
                if reference is not None:
                    row.errors[system] = max(row.errors.get(system, 0.0), check(reference, result.scores, f"{name} {system}"))
        rows.append(row)
    return rows


def check(reference: torch.Tensor, scores: torch.Tensor, what: str, tolerance: float = TOLERANCE) -> float:
    scale = float(reference.abs().max().clamp(min=1e-6))
    error = float((scores - reference).abs().max()) / scale
    if error > tolerance:
        raise SystemExit(f"{what} differs from naive by {error:.2e} of the score scale (tolerance {tolerance}): not reporting its time")
    return error


def table(rows: list[Row], size: int, patch: int, stride: int, repeats: int) -> str:
    lines = [
        f"Image {size}x{size}, patch {patch}, stride {stride}, CPU, {repeats} interleaved rounds; times in seconds "
        "(median, min-max); speedup = naive median / system median; max error relative to the score scale.",
        "",
        "| model | positions | naive | full | incremental | hybrid | incremental speedup | hybrid speedup | FLOP bound | max error |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [f"{r.median(s):.1f} ({r.spread(s)})" for s in SYSTEMS]
        lines.append(
            f"| {r.model} | {r.positions} | {' | '.join(cells)} | {r.median('naive') / r.median('incremental'):.2f}x | "
            f"{r.median('naive') / r.median('hybrid'):.2f}x | {r.flop_bound:.2f}x | {max(r.errors.values()):.1e} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    setting_arguments(parser, ["vgg16", "resnet18"])
    parser.add_argument("--quick", action="store_true", help="resnet18 and vgg11, stride 16, 2 rounds")
    parser.add_argument("--write", type=Path, help="replace the engine section of this markdown file with the table")
    args = parser.parse_args()
    if args.quick:
        args.models, args.stride, args.repeats = ["resnet18", "vgg11"], 16, 2
    rows = run(args.models, args.size, args.patch, args.stride, args.repeats)
    plans = "; ".join(f"{r.model}: {r.plan}" for r in rows)
    text = f"Machine: {machine()}. Hybrid plans: {plans}.\n\n{table(rows, args.size, args.patch, args.stride, args.repeats)}\n"
    print(text)
    if args.write:
        image = args.write.parent / "img" / "engine_speed.png"
        plot(rows, image, f"{args.size}x{args.size}, patch {args.patch}, stride {args.stride}, CPU")
        write_section(args.write, f"{text}\n![speedup over naive]({image.relative_to(args.write.parent).as_posix()})\n")


def plot(rows: list[Row], path: Path, title: str) -> None:
    """Speedup over naive per model and system, with the FLOP bound marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = SYSTEMS[1:]
    width = 0.8 / len(systems)
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    for k, system in enumerate(systems):
        speedups = [r.median("naive") / r.median(system) for r in rows]
        bars = ax.bar([i + (k - 1) * width for i in range(len(rows))], speedups, width, label=system)
        ax.bar_label(bars, fmt="%.2fx", fontsize=7)
    for i, r in enumerate(rows):
        ax.hlines(r.flop_bound, i - 0.45, i + 0.45, colors="black", linestyles="dashed", label="FLOP bound" if i == 0 else None)
    ax.set_xticks(range(len(rows)), [r.model for r in rows])
    ax.set_ylabel("speedup over naive re-inference")
    save_figure(fig, ax, path, title)


def save_figure(fig: Any, ax: Any, path: Path, title: str) -> None:
    """Title and legend the plot, write it as `path` and free it."""
    import matplotlib.pyplot as plt

    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def report(text: str, path: Path | None, name: str) -> None:
    """Print a section's text, and put it between its markers in the markdown file `path` when given."""
    print(text)
    if path is not None:
        write_section(path, text, name)


def write_section(path: Path, text: str, name: str = "engine-speed") -> None:
    """Replace the text between the `name` markers of a markdown file (or append a marked section)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{text}{end}"
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    path.write_text(new)


if __name__ == "__main__":
    main()
