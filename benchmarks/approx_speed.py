"""Approximate OBE: speed and quality of the projective-field threshold and adaptive drill-down.

    python benchmarks/approx_speed.py --write docs/benchmarks.md   # demo, resnet18, vgg16 (trained)
    python benchmarks/approx_speed.py --quick                      # demo and resnet18, one image

Networks with trained weights (heatmaps of random weights are noise): the bundled demo CNN on its
128x128 scenes, and vgg16 / resnet18 trained by trained_models.py on 224x224 scenes. Per image, in
turn: hyinf's exact hybrid run (the reference heatmap), captum.attr.Occlusion (the baseline; its
attribution is checked against hyinf's exact one), and every approximate setting, in rotating order.
Reported: median time over the images (min-max), speedup over captum and over exact hybrid (medians
of each image's ratio, so a slow or fast moment of the machine hits both sides of a ratio alike),
SSIM to the exact heatmap (mean and worst image), max absolute difference, top-10% agreement, and
the occluded images evaluated.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from captum.attr import Occlusion as CaptumOcclusion

import hyinf
from engine_speed import machine, save_figure, write_section
from hyinf.demo import load_demo, normalise
from hyinf.demo import scenes as demo_scenes
from hyinf.quality import compare
from trained_models import scene_input, trained

TOLERANCE = 1e-4  # exact attribution vs captum's, relative to its largest value
SSIM_GOAL = 0.9


@dataclass(frozen=True)
class Setting:
    threshold: float = 1.0
    ratio: float = 1.0
    coarse: int | None = None  # drill-down's coarse stride

    @property
    def label(self) -> str:
        parts = [f"TAU {self.threshold:g}"] if self.threshold < 1 else []
        parts += [f"RATIO {self.ratio:g} (S {self.coarse})"] if self.ratio < 1 else []
        return ", ".join(parts) or "exact"


@dataclass
class Result:
    times: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    max_abs: list[float] = field(default_factory=list)
    top: list[float] = field(default_factory=list)
    over_captum: list[float] = field(default_factory=list)  # per image: captum's time / this time
    over_exact: list[float] = field(default_factory=list)
    images: int = 0


def images_for(name: str, count: int) -> tuple[torch.nn.Module, list[torch.Tensor], str]:
    """The trained model, `count` held-out scenes (seeds unseen in training), and a description."""
    if name == "demo":
        rng = random.Random(999)
        pics = [normalise(demo_scenes.to_tensor(demo_scenes.scene(k % 4, rng)[0])) for k in range(count)]
        return load_demo(), pics, "demo CNN (trained, bundled)"
    model, accuracy = trained(name)
    rng = random.Random(4242)
    pics = [scene_input(k % 4, rng) for k in range(count)]
    return model, pics, f"{name} (trained on scenes, held-out accuracy {accuracy:.0%})"


def run_model(name: str, settings: list[Setting], count: int, patch: int, stride: int, captum_batch: int) -> tuple[str, list[float], Result, dict[Setting, Result]]:
    model, pics, description = images_for(name, count)
    common = {"patch": patch, "stride": stride, "mode": "hybrid"}
    hyinf.explain(model, pics[0], **common)  # warm-up: first-call costs (allocator, kernels) out of the timings
    exact = Result()
    captum_s: list[float] = []
    results = {s: Result() for s in settings}
    for k, image in enumerate(pics):
        start = time.perf_counter()
        reference = hyinf.explain(model, image, **common)
        exact.times.append(time.perf_counter() - start)
        start = time.perf_counter()
        attribution = CaptumOcclusion(model).attribute(image[None], sliding_window_shapes=(3, patch, patch), strides=(3, stride, stride),
                                                       target=reference.target, perturbations_per_eval=captum_batch)
        captum_s.append(time.perf_counter() - start)
        exact.over_captum.append(captum_s[-1] / exact.times[-1])
        error = float((attribution - reference.attribution).abs().max() / attribution.abs().max())
        if error > TOLERANCE:
            raise SystemExit(f"{name}: hyinf's exact attribution differs from captum's by {error:.2e} of the largest (tolerance {TOLERANCE})")
        print(f"{name} image {k + 1}: captum {captum_s[-1]:.1f} s, exact hybrid {exact.times[-1]:.1f} s", file=sys.stderr, flush=True)
        exact.images = len(reference.grid)
        order = settings[k % len(settings):] + settings[: k % len(settings)]
        for s in order:
            start = time.perf_counter()
            approx = hyinf.explain(model, image, **common, approx_threshold=s.threshold, drill_down=s.ratio, coarse_stride=s.coarse)
            elapsed = time.perf_counter() - start
            q = compare(approx.heatmap, reference.heatmap)
            r = results[s]
            r.times.append(elapsed)
            r.over_captum.append(captum_s[-1] / elapsed)
            r.over_exact.append(exact.times[-1] / elapsed)
            r.ssim.append(q.ssim)
            r.max_abs.append(q.max_abs / max(float(reference.heatmap.abs().max()), 1e-12))
            r.top.append(q.top_agreement)
            r.images = approx.approximation.positions if approx.approximation else len(approx.grid)
            print(f"{name} image {k + 1} {s.label}: {elapsed:.2f} s, {q.summary()}", file=sys.stderr, flush=True)
    return description, captum_s, exact, results


def table(description: str, captum_s: list[float], exact: Result, results: dict[Setting, Result]) -> list[str]:
    median = statistics.median
    lines = [
        (f"**{description}**: captum Occlusion {median(captum_s):.1f} s ({min(captum_s):.1f}-{max(captum_s):.1f}), exact hybrid "
         f"{median(exact.times):.2f} s ({median(exact.over_captum):.1f}x over captum)."),
        "",
        "| setting | time (s) | over captum (min-max) | over exact hybrid | SSIM mean (worst) | max abs diff / max drop | top-10% agreement | occluded images |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s, r in results.items():
        lines.append(
            f"| {s.label} | {median(r.times):.2f} ({min(r.times):.2f}-{max(r.times):.2f}) | {median(r.over_captum):.1f}x "
            f"({min(r.over_captum):.1f}-{max(r.over_captum):.1f}) | {median(r.over_exact):.2f}x | "
            f"{statistics.mean(r.ssim):.3f} ({min(r.ssim):.3f}) | {max(r.max_abs):.2f} | {statistics.mean(r.top):.0%} | {r.images} of {exact.images} |"
        )
    good = [(median(r.over_captum), s) for s, r in results.items() if min(r.ssim) >= SSIM_GOAL]
    if good:
        speed, best = max(good, key=lambda g: g[0])
        lines += ["", f"Fastest setting with SSIM >= {SSIM_GOAL} on every image: {best.label}, {speed:.1f}x over captum."]
    else:
        lines += ["", f"No setting reached SSIM >= {SSIM_GOAL} on every image."]
    return lines


def plot(curves: dict[str, dict[Setting, Result]], path: Path, title: str) -> None:
    """Speedup over captum against SSIM to the exact heatmap, one curve per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for name, results in curves.items():
        points = sorted((statistics.mean(r.ssim), statistics.median(r.over_captum), s.label) for s, r in results.items())
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=name, markersize=4)
        for x, y, label in points:
            ax.annotate(label, (x, y), fontsize=5, xytext=(2, 2), textcoords="offset points")
    ax.axvline(SSIM_GOAL, color="grey", linestyle="dashed", linewidth=0.8)
    ax.set_xlabel("SSIM to the exact heatmap (mean over images)")
    ax.set_ylabel("speedup over captum Occlusion")
    ax.set_yscale("log")
    save_figure(fig, ax, path, title)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["demo", "resnet18", "vgg16"])
    parser.add_argument("--images", type=int, default=3, help="held-out scenes per model")
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--coarse-strides", type=int, nargs="+", help="drill-down's coarse strides (default: twice --stride)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[1.0, 0.8, 0.6, 0.4])
    parser.add_argument("--ratios", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.1])
    parser.add_argument("--captum-batch", type=int, default=16, help="captum's perturbations_per_eval")
    parser.add_argument("--quick", action="store_true", help="demo and resnet18, one image, fewer settings")
    parser.add_argument("--write", type=Path, help="replace the approximate section of this markdown file")
    args = parser.parse_args()
    if args.quick:
        args.models, args.images, args.thresholds, args.ratios = ["demo", "resnet18"], 1, [1.0, 0.4], [1.0, 0.25]
    coarse = args.coarse_strides or [2 * args.stride]
    settings = [Setting(t, r, c if r < 1 else None) for t in args.thresholds for r in args.ratios for c in (coarse if r < 1 else [0])
                if (t, r) != (1.0, 1.0)]
    lines = [f"Machine: {machine()}. Patch {args.patch}, stride {args.stride}; drill-down coarse stride S; "
             f"{args.images} held-out images per model; hybrid plans; captum with perturbations_per_eval={args.captum_batch}, "
             "timed on every image between hyinf's exact run and the approximate ones; speedups are medians of per-image ratios. "
             "SSIM, differences and top-10% agreement compare each approximate heatmap with the exact one of the same image.", ""]
    curves = {}
    for name in args.models:
        description, captum_s, exact, results = run_model(name, settings, args.images, args.patch, args.stride, args.captum_batch)
        lines += table(description, captum_s, exact, results) + [""]
        curves[name] = results
    text = "\n".join(lines)
    print(text)
    if args.write:
        image = args.write.parent / "img" / "approx_speed.png"
        plot(curves, image, f"approximate OBE, patch {args.patch}, stride {args.stride}, CPU")
        write_section(args.write, f"{text}\n![speed against quality]({image.relative_to(args.write.parent).as_posix()})\n", "approx-speed")


if __name__ == "__main__":
    main()
