"""The benchmark suite: hyinf against captum Occlusion on eight CNNs, with the physical limits beside the times.

    python benchmarks/suite.py --quick                      # a few minutes: three small models, stride 16
    python benchmarks/suite.py --write docs/benchmarks.md   # the routine table: eight models, patch 16, stride 8
    python benchmarks/suite.py --paper --write docs/benchmarks.md   # the published setting, stride 4 (once per release)
    python benchmarks/suite.py --device cuda                # the same matrix on a GPU

In one process, rounds of every system in rotating order (drift hits all alike): captum.attr.Occlusion
at its best perturbations_per_eval on this machine (the model's best batch size, probed first), hyinf naive, all-full,
all-incremental and hybrid (planned) on the torch backend, and hybrid on ONNX Runtime. Every result
is checked against naive re-inference before its time counts. Per model: medians (min-max), peak
memory above the process's resting level, the FLOP bound (full / incremental FLOPs), the
floor = incremental FLOPs / this machine's dense matmul rate, and efficiency = floor / hybrid time.
Writes a markdown table (docs/benchmarks.md), a CSV and a plot (docs/img/).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnxruntime
import torch
import torchvision
from captum.attr import Occlusion as CaptumOcclusion
from torch import nn

import hyinf
from hyinf.explain import resolve_device
from engine_speed import check, machine, save_figure, write_section
from hyinf.graph.flops import full_flops, plan_flops
from hyinf.graph.geometry import OcclusionGrid, changed_regions
from hyinf.graph.torch_frontend import trace_torch
from hyinf.models import load_model
from hyinf.runtime.engine import windowable

MODELS = ("vgg16", "resnet18", "resnet50", "inception_v3", "densenet121", "mobilenet_v3_large", "efficientnet_b0", "se_resnet18")
SYSTEMS = ("captum", "naive", "full", "incremental", "hybrid", "hybrid-ort")
CAPTUM_BATCHES = (8, 16, 32, 64)
TOLERANCE = 1e-4  # of the score scale
# On a GPU, cuDNN picks float32 convolution algorithms (FFT, Winograd) per batch shape, and their
# rounding differs more: resnet50's captum and naive attributions differed by 1.3e-4 of their own scale on an H200.
GPU_TOLERANCE = 1e-3


class SqueezeExcite(nn.Module):
    """A residual block followed by squeeze-and-excitation channel attention on its output."""

    def __init__(self, block: nn.Module, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.block = block
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, channels // reduction, 1), nn.ReLU(),
                                  nn.Conv2d(channels // reduction, channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return y * self.gate(y)


def se_resnet18() -> nn.Module:
    """resnet18 with squeeze-and-excitation after every residual block: an attention CNN built from plain modules."""
    model = torchvision.models.resnet18(weights=None)
    for name in ("layer1", "layer2", "layer3", "layer4"):
        layer = getattr(model, name)
        setattr(model, name, nn.Sequential(*(SqueezeExcite(b, b.conv2.out_channels) for b in layer)))
    return model


def build(name: str) -> tuple[nn.Module, int]:
    torch.manual_seed(0)
    if name == "se_resnet18":
        return se_resnet18().eval(), 224
    if name == "inception_v3":
        return load_model("torchvision:inception_v3").module, 299
    return getattr(torchvision.models, name)(weights=None).eval(), 224


def matmul_rate(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """This machine's dense float32 matmul rate in FLOP/s (best of `repeats`)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        (a @ b).sum().item()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def _system(model: nn.Module, image: torch.Tensor, system: str, patch: int, stride: int, captum_batch: int,
            graphs: bool = False) -> Callable[[], object]:
    """One run of `system` on `image` (1, C, H, W), target 0: hyinf's through one Explainer kept for
    every run, as a caller explaining many images keeps it; `graphs`: hyinf's engine with CUDA graphs."""
    if system == "captum":
        return lambda: CaptumOcclusion(model).attribute(image, sliding_window_shapes=(3, patch, patch), strides=(3, stride, stride),
                                                        target=0, perturbations_per_eval=captum_batch).cpu()
    mode, backend = ("hybrid", "ort") if system == "hybrid-ort" else (system, "torch")
    explainer = hyinf.Explainer(model, mode=mode, backend=backend, patch=patch, stride=stride, device=image.device,
                                cuda_graphs=graphs and backend == "torch" and mode != "naive")
    return lambda: explainer.explain(image[0], target=0)


def _status(field: str) -> int:
    """A memory field of /proc/self/status, in bytes."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def _peak_child(name: str, system: str, patch: int, stride: int, captum_batch: int) -> int:
    """In a fresh process: how far one CPU run of `system` raises the resident set above its level before."""
    model, size = build(name)
    run = _system(model, _image(size, torch.device("cpu")), system, patch, stride, captum_batch)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak (VmHWM) to the current resident set
    before = _status("VmRSS")
    run()
    return _status("VmHWM") - before


def peak_memory(name: str, system: str, patch: int, stride: int, captum_batch: int, device: torch.device, graphs: bool = False) -> int:
    """Peak memory of one run above the level before it: on a GPU the allocator's peak; on a CPU the
    resident set's, in a fresh process (a process that already ran keeps its freed memory)."""
    if device.type == "cuda":
        model, size = build(name)
        run = _system(model.to(device), _image(size, device), system, patch, stride, captum_batch, graphs)
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        return torch.cuda.max_memory_allocated(device) - start
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_peak_child, (name, system, patch, stride, captum_batch))


def _image(size: int, device: torch.device) -> torch.Tensor:
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)


@dataclass
class Row:
    model: str
    size: int
    positions: int
    flop_bound: float
    floor_s: float
    captum_batch: int = 0
    machine: str = ""
    rate: float = 0.0  # the machine's dense matmul rate, FLOP/s
    plan: str = ""  # how the hybrid run was planned
    date: str = ""
    times: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in SYSTEMS})
    memory: dict[str, int] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)

    def median(self, system: str) -> float:
        return statistics.median(self.times[system])


def best_captum_batch(model: nn.Module, image: torch.Tensor) -> int:
    """The perturbations_per_eval captum runs fastest with here: the batch size at which the model
    itself has the highest throughput (captum's time is the model's on batches of occluded images)."""
    rates = {}
    with torch.no_grad():
        for batch in CAPTUM_BATCHES:
            images = image.expand(batch, *image.shape[1:]).contiguous()
            model(images)  # warm-up
            start = time.perf_counter()
            model(images).sum().item()
            rates[batch] = batch / (time.perf_counter() - start)
    return max(rates, key=rates.__getitem__)


def run_model(name: str, patch: int, stride: int, repeats: int, device: torch.device, rate: float, systems: tuple[str, ...],
              graphs: bool = False) -> Row:
    model, size = build(name)
    model = model.to(device)
    image = _image(size, device)
    graph = trace_torch(model, (1, 3, size, size), device).graph
    grid = OcclusionGrid.make((size, size), patch, stride)
    incremental = plan_flops(graph, changed_regions(graph, grid), {n.name for n in graph.nodes if windowable(n)})
    row = Row(name, size, len(grid), full_flops(graph) / incremental, incremental * len(grid) / rate,
              machine=machine(device), rate=rate, date=datetime.date.today().isoformat())
    if "captum" in systems:
        row.captum_batch = best_captum_batch(model, image)
    runs = {system: _system(model, image, system, patch, stride, row.captum_batch, graphs) for system in systems}
    for system in systems:  # a first call traces the model, plans, builds ORT sessions, captures graphs; later calls reuse them
        if system != "captum":
            runs[system]()
    reference = hyinf.explain(model, image[0], mode="naive", patch=patch, stride=stride, target=0, device=device)
    chosen = [s for s in SYSTEMS if s in systems]
    tolerance = GPU_TOLERANCE if device.type == "cuda" else TOLERANCE
    score_scale = float(reference.scores.abs().max().clamp(min=1e-6))
    signal = float(reference.attribution.abs().max()) / score_scale
    if signal < 10 * tolerance:  # every check below would pass whatever a system computed
        raise SystemExit(f"{name}: occlusion moves its scores by at most {signal:.1e} of their scale, too little for the checks "
                         f"against naive (tolerance {tolerance}) to mean anything; give the model an init that keeps the signal")
    for round_ in range(repeats):
        for system in chosen[round_ % len(chosen):] + chosen[: round_ % len(chosen)]:
            start = time.perf_counter()
            result = runs[system]()
            elapsed = time.perf_counter() - start
            if system == "captum":
                error = float((result - reference.attribution).abs().max()) / score_scale
                if error > tolerance:
                    raise SystemExit(f"{name}: captum's attribution differs from naive's by {error:.2e} of the score scale")
            else:
                error = check(reference.scores, result.scores, f"{name} {system}", tolerance)
                if system == "hybrid":
                    row.plan = result.mode
            row.times[system].append(elapsed)
            row.errors[system] = max(row.errors.get(system, 0.0), error)
            print(f"{name} round {round_ + 1} {system}: {elapsed:.2f} s", file=sys.stderr, flush=True)
    for system in chosen:  # at stride = patch: the same chunk sizes, a quarter of the positions at stride patch / 2
        row.memory[system] = peak_memory(name, system, patch, max(stride, patch), row.captum_batch, device, graphs)
        print(f"{name} {system}: peak {row.memory[system] / 2**20:.0f} MiB", file=sys.stderr, flush=True)
    return row


def _machines(rows: list[Row]) -> str:
    """Where the rows were measured: one line per machine (merged tables can hold several)."""
    runs: dict[tuple[str, float, str], list[str]] = {}
    for r in rows:
        runs.setdefault((r.machine, r.rate, r.date), []).append(r.model)
    if len(runs) == 1:
        (name, rate, date), _ = next(iter(runs.items()))
        return f"Machine: {name}; dense matmul {rate / 1e9:.0f} GFLOP/s; measured {date}."
    lines = ["Rows come from separate runs; each row's systems ran interleaved on one machine, so compare ratios within a row:"]
    lines += [f"- {', '.join(models)}: {name}; dense matmul {rate / 1e9:.0f} GFLOP/s; measured {date}." for (name, rate, date), models in runs.items()]
    return "\n".join(lines)


def table(rows: list[Row], systems: tuple[str, ...]) -> str:
    shown = [s for s in SYSTEMS if s in systems]
    head = " | ".join(f"{s} (s)" for s in shown)
    plans = sorted({r.plan for r in rows if r.plan})
    lines = [
        _machines(rows),
        "",
        "Times: median (min-max) over rounds; peak: how far one hybrid run raises peak memory (CPU: resident set, in a fresh "
        "process, at stride = patch: the same chunks, fewer of them; GPU: the allocator's peak); floor = incremental FLOPs / the machine's matmul rate; "
        "efficiency = floor / hybrid; max error: of any system against naive, relative to the score scale "
        "(in runs before inception_v3's of 2026-12-05, captum's against its own attribution scale, a stricter measure). "
        f"Hybrid plans: {'; '.join(plans) or 'not recorded'}.",
        "",
        f"| model | positions | {head} | hybrid over captum | hybrid-ort over captum | hybrid over naive | hybrid over incremental | FLOP bound | floor (s) | efficiency | hybrid peak (MiB) | max error |",
        "|" + "---|" * (len(shown) + 11),
    ]
    for r in rows:
        cells = " | ".join(f"{r.median(s):.2f} ({min(r.times[s]):.2f}-{max(r.times[s]):.2f})" if r.times[s] else "-" for s in shown)
        h = r.median("hybrid") if r.times["hybrid"] else None  # columns over hybrid are empty in runs without it
        over = {s: (f"{r.median(s) / h:.2f}x" if h and s in shown and r.times[s] else "-") for s in ("captum", "naive", "incremental")}
        ort = f"{r.median('captum') / r.median('hybrid-ort'):.2f}x" if r.times["captum"] and r.times["hybrid-ort"] else "-"
        efficiency, peak = (f"{r.floor_s / h:.0%}", f"{r.memory['hybrid'] / 2**20:.0f}") if h else ("-", "-")
        lines.append(f"| {r.model} ({r.size}) | {r.positions} | {cells} | {over['captum']} | {ort} | {over['naive']} | {over['incremental']} | "
                     f"{r.flop_bound:.2f}x | {r.floor_s:.2f} | {efficiency} | {peak} | {max(r.errors.values()):.1e} |")
    return "\n".join(lines)


def headline(rows: list[Row], image: str) -> str:
    """The README's short table: captum against hyinf's exact modes, with the limits beside them."""
    lines = [
        "Exact results on a 2-core CPU, 224x224 (inception_v3 299x299), patch 16, stride 8, medians of interleaved rounds of "
        "`captum.attr.Occlusion` (at its best `perturbations_per_eval`) and `hyinf.explain` (after a first call, which traces the "
        "model and plans, as a user's first image does; later calls reuse the traced program and the plan), "
        "every result checked against naive re-inference in the same run:",
        "",
        "| model | captum Occlusion | hyinf incremental | hyinf hybrid (torch) | hyinf hybrid (ORT) | best hybrid over captum | FLOP bound | efficiency |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.times["captum"] and r.times["incremental"] and r.times["hybrid-ort"]:
            h, o = r.median("hybrid"), r.median("hybrid-ort")
            lines.append(f"| {r.model} | {r.median('captum'):.1f} s | {r.median('incremental'):.1f} s | {h:.1f} s | {o:.1f} s | "
                         f"{r.median('captum') / min(h, o):.2f}x | {r.flop_bound:.2f}x | {r.floor_s / h:.0%} |")
    lines += ["", "FLOP bound: full-inference FLOPs / incremental FLOPs; efficiency: the incremental FLOPs at the machine's dense "
              "matmul rate / the hybrid time. Machines, spread, memory and every system: [docs/benchmarks.md](docs/benchmarks.md).",
              "", f"![speedup over captum]({image})", ""]
    return "\n".join(lines)


COLUMNS = ("model", "size", "positions", "system", "median_s", "min_s", "max_s", "times_s", "peak_bytes", "max_error", "flop_bound",
           "floor_s", "captum_batch", "matmul_gflops", "machine", "hybrid_plan", "date")


def write_csv(rows: list[Row], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(COLUMNS)
        for r in rows:
            for s, t in r.times.items():
                if t:
                    out.writerow([r.model, r.size, r.positions, s, statistics.median(t), min(t), max(t), ";".join(f"{x:.4f}" for x in t),
                                  r.memory[s], r.errors[s], r.flop_bound, r.floor_s, r.captum_batch, r.rate / 1e9, r.machine, r.plan, r.date])


def read_csv(path: Path) -> list[Row]:
    """The rows a suite CSV holds (for merging a run into an earlier table)."""
    rows: dict[str, Row] = {}
    with path.open(newline="") as f:
        for line in csv.DictReader(f):
            r = rows.get(line["model"])
            if r is None:
                r = rows[line["model"]] = Row(line["model"], int(line["size"]), int(line["positions"]), float(line["flop_bound"]),
                                              float(line["floor_s"]), int(line["captum_batch"]), line["machine"],
                                              float(line["matmul_gflops"]) * 1e9, line["hybrid_plan"], line["date"])
            system = line["system"]
            r.times[system] = [float(x) for x in line["times_s"].split(";")]
            r.memory[system], r.errors[system] = int(line["peak_bytes"]), float(line["max_error"])
    return list(rows.values())


def plot(rows: list[Row], systems: tuple[str, ...], path: Path, title: str) -> None:
    """Speedup over captum (or naive without it) per model and system, the FLOP bound marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = "captum" if "captum" in systems else "naive"
    shown = [s for s in SYSTEMS if s in systems and s != base]
    width = 0.8 / len(shown)
    fig, ax = plt.subplots(figsize=(max(6.4, 1.1 * len(rows) + 2), 3.8), dpi=120)
    for k, system in enumerate(shown):
        x = [i + (k - (len(shown) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(x, [r.median(base) / r.median(system) for r in rows], width, label=system)
    bounded = [(i, r) for i, r in enumerate(rows) if r.times["naive"]]  # the FLOP bound is over naive re-inference
    for k, (i, r) in enumerate(bounded):
        bound = r.flop_bound * r.median(base) / r.median("naive")
        ax.hlines(bound, i - 0.45, i + 0.45, colors="black", linestyles="dashed", label="FLOP bound" if k == 0 else None)
    ax.set_xticks(range(len(rows)), [r.model for r in rows], rotation=20, fontsize=7)
    ax.set_ylabel(f"speedup over {base}")
    save_figure(fig, ax, path, title)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=list(MODELS), help="none, with --merge: redraw the table from the CSV")
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cuda-graphs", action="store_true", help="hyinf's engine systems replay CUDA graphs (docs/gpu.md)")
    parser.add_argument("--quick", action="store_true", help="resnet18, mobilenet_v3_large and se_resnet18 at stride 16, 2 rounds")
    parser.add_argument("--paper", action="store_true", help="the published setting: stride 4")
    parser.add_argument("--write", type=Path, help="replace the suite section of this markdown file; CSV and plot beside it")
    parser.add_argument("--readme", type=Path, help="also replace the headline section of this README")
    parser.add_argument("--merge", action="store_true", help="keep the other models' rows of the CSV --write finds (rows are labelled with their machine)")
    args = parser.parse_args()
    if args.quick:
        args.models, args.stride, args.repeats = ["resnet18", "mobilenet_v3_large", "se_resnet18"], 16, 2
    if args.paper:
        args.stride = 4
    device = resolve_device(args.device) if args.models else torch.device(args.device)  # a redraw needs no GPU
    if device.type == "cuda":  # exact float32 for every system, captum too: cuDNN's default TF32 convolutions round to 10 bits
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    systems = tuple(args.systems)
    if device.type == "cuda" and "hybrid-ort" in systems and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        print("hybrid-ort left out: this onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)", file=sys.stderr)
        systems = tuple(s for s in systems if s != "hybrid-ort")
    stem = f"suite_{device.type}_stride{args.stride}"
    data = args.write.parent / f"{stem}.csv" if args.write else None
    kept = [r for r in read_csv(data) if r.model not in args.models] if args.merge and data and data.exists() else []
    if args.models:  # a GPU needs a larger product to leave launch overhead behind
        rate = matmul_rate(device, 8192 if device.type == "cuda" else 2048)
    rows: list[Row] = []
    merged = kept
    for name in args.models:
        rows.append(run_model(name, args.patch, args.stride, args.repeats, device, rate, systems, args.cuda_graphs))
        merged = sorted(kept + rows, key=lambda r: MODELS.index(r.model) if r.model in MODELS else len(MODELS))
        if data:
            write_csv(merged, data)  # after every model: a long run stopped early keeps what it measured
    batches = ", ".join(f"{r.model} {r.captum_batch}" for r in merged if r.captum_batch)
    rounds = "/".join(str(n) for n in sorted({max(len(t) for t in r.times.values()) for r in merged}))
    text = (f"Device {device}{' (hyinf with CUDA graphs)' if args.cuda_graphs else ''}. Patch {args.patch}, stride {args.stride}, "
            f"{rounds} interleaved rounds"
            f"{'; captum perturbations_per_eval (best of ' + str(CAPTUM_BATCHES) + '): ' + batches if batches else ''}.\n\n"
            f"{table(merged, systems)}\n")
    print(text)
    if args.write and data:
        image = args.write.parent / "img" / f"{stem}.png"
        plot(merged, systems, image, f"patch {args.patch}, stride {args.stride}, {device.type}")
        link = f"\n![speedup]({image.relative_to(args.write.parent).as_posix()}) · data: [{data.name}]({data.name})\n"
        write_section(args.write, text + link, f"suite-{device.type}-stride{args.stride}")
        if args.readme:
            shown = image.resolve().relative_to(args.readme.resolve().parent).as_posix()
            write_section(args.readme, headline(merged, shown), "headline")


if __name__ == "__main__":
    main()
