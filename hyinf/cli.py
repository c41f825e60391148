"""The `hyinf` command. Thin: each command parses options, calls the library, writes files, and turns
hyinf's own errors into one line on stderr with a non-zero exit."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import numpy as np

import hyinf
from hyinf.errors import HyinfError
from hyinf.explain import MODES, OUTPUTS


def _user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except HyinfError as e:
            raise click.ClickException(str(e)) from e

    return wrapper


def _pair(value: str) -> int | tuple[int, int]:
    """'16' -> 16, '16x8' -> (16, 8)."""
    try:
        parts = [int(p) for p in value.lower().split("x")]
    except ValueError:
        raise click.BadParameter(f"expected N or HxW, got {value!r}") from None
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise click.BadParameter(f"expected N or HxW, got {value!r}")


@click.group()
@click.version_option(hyinf.__version__, prog_name="hyinf")
def main() -> None:
    """hyinf: fast, exact occlusion-based explanations of CNN predictions."""


@main.command()
@click.argument("model", default="demo")
@click.argument("image", required=False, type=click.Path(path_type=Path))
@click.option("--target", type=int, help="Class to explain (default: the model's prediction).")
@click.option("--patch", default="16", show_default=True, help="Patch size in pixels: N or HxW.")
@click.option("--stride", default="8", show_default=True, help="Stride in pixels: N or HxW.")
@click.option("--patch-value", type=float, default=0.0, show_default=True, help="Value the patch is filled with.")
@click.option("--patch-space", type=click.Choice(["pixel", "input"]), default="pixel", show_default=True,
              help="pixel: --patch-value is a pixel intensity in [0, 1] (0 = black); input: a model-input value.")
@click.option("--mode", type=click.Choice(MODES), default="hybrid", show_default=True)
@click.option("--output", "score", type=click.Choice(OUTPUTS), default="raw", show_default=True, help="Score raw outputs or softmax probabilities.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--image-size", nargs=2, type=int, help="Resize the image to H W (default: the model's usual size).")
@click.option("--normalize/--no-normalize", default=True, show_default=True,
              help="Normalise pixels as the model expects (ImageNet mean and std for torchvision models).")
@click.option("--weights", type=click.Path(path_type=Path), help="Local state dict (.safetensors or .pt) for torchvision:NAME.")
@click.option("--batch-size", type=int, help="Positions evaluated at once (default: from --max-memory).")
@click.option("--max-memory", type=float, help="Memory budget for one chunk of positions, in GiB (default 2).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("hyinf-out"), show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar or summary.")
@_user_errors
def explain(model: str, image: Path | None, target: int | None, patch: str, stride: str, patch_value: float, patch_space: str,
            mode: str, score: str, device: str, image_size: tuple[int, int] | None, normalize: bool, weights: Path | None, batch_size: int | None,
            max_memory: float | None, out_dir: Path, quiet: bool) -> None:
    """Occlusion heatmap of IMAGE under MODEL.

    MODEL is 'demo' (a small bundled CNN with trained weights), torchvision:NAME, a torch.export
    (.pt2) file or a TorchScript file. IMAGE is any file Pillow reads; for the demo it defaults to
    the bundled sample. Writes heatmap.npy, attribution.npy, overlay.png and report.json to --out.

    Example: hyinf explain torchvision:resnet18 cat.jpg --patch 16 --stride 8 --out cat-heatmap
    """
    from hyinf.models import load_image, load_model
    from hyinf.viz import save_overlay

    loaded = load_model(model, weights)
    if not normalize:
        loaded = replace(loaded, mean=(0.0,) * len(loaded.mean), std=(1.0,) * len(loaded.std))
    if image is None:
        if model != "demo":
            raise click.UsageError("IMAGE is required unless MODEL is 'demo'")
        from hyinf.demo import SAMPLE, asset

        image = asset(SAMPLE)
    size = tuple(image_size) if image_size else loaded.image_size
    pixels = load_image(image, size)  # type: ignore[arg-type]
    value = loaded.pixel_to_input(patch_value) if patch_space == "pixel" else patch_value
    result = hyinf.explain(
        loaded.module, loaded.normalise(pixels), target=target, patch=_pair(patch), stride=_pair(stride), patch_value=value,
        mode=mode, device=device, output=score, batch_size=batch_size,
        max_memory=None if max_memory is None else int(max_memory * 1024**3), progress=not quiet and sys.stderr.isatty(),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "heatmap.npy", result.heatmap.numpy())
    np.save(out_dir / "attribution.npy", result.attribution.numpy())
    label = loaded.labels[result.target] if result.target < len(loaded.labels) else str(result.target)
    save_overlay(pixels, result.attribution[0], out_dir / "overlay.png", f"{loaded.description}: class {label}, patch {patch}, stride {stride}")
    report = {
        "hyinf_version": hyinf.__version__,
        "model": loaded.description,
        "image": str(image),
        "image_size": list(size),
        "settings": {"patch": list(result.grid.patch), "stride": list(result.grid.stride), "patch_value": patch_value,
                     "patch_space": patch_space, "output": score, "device": device, "batch_size": result.batch_size},
        "target": result.target,
        "target_label": label,
        "base_score": result.base_score,
        "positions": list(result.grid.shape),
        "mode": result.mode,
        "timings_s": result.timings,
        "node_modes": result.node_modes,
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    if not quiet:
        click.echo(f"{loaded.description}: target {label} (score {result.base_score:.4g}), {len(result.grid)} positions, "
                   f"{result.mode}, {result.timings['total_s']:.2f} s -> {out_dir}/")


@main.command()
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--backend", type=click.Choice(["torch"]), default="torch", show_default=True, help="Runtime backend to profile.")
@click.option("--model", "model_specs", multiple=True, help="Also time this model's layers (repeatable): demo, torchvision:NAME or a .pt2/TorchScript file.")
@click.option("--image-size", nargs=2, type=int, help="Image size H W for --model (default: the model's usual size).")
@click.option("--patch", default="16", show_default=True, help="Patch size for --model: N or HxW.")
@click.option("--stride", default="8", show_default=True, help="Stride for --model: N or HxW.")
@click.option("--weights", type=click.Path(path_type=Path), help="Local state dict for torchvision:NAME.")
@click.option("--quick", is_flag=True, help="A smaller sweep (under 2 minutes on a 2-core CPU).")
@click.option("--configs", type=click.IntRange(min=1), help="Sweep this many operator configurations (default 2000, 400 with --quick).")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads to time with (default: torch's default).")
@click.option("--db", "db_url", help="Database URL or SQLite file (default: $HYINF_DB or the user data directory).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_user_errors
def profile(device: str, backend: str, model_specs: tuple[str, ...], image_size: tuple[int, int] | None, patch: str, stride: str,
            weights: Path | None, quick: bool, configs: int | None, threads: int | None, db_url: str | None, quiet: bool) -> None:
    """Measure this device's incremental, full and conversion costs and fit its cost model.

    Run once per machine (and after upgrading torch); plans for every model use the result.

    Example: hyinf profile --device cpu --model torchvision:resnet18 --model torchvision:vgg16
    """
    from tqdm import tqdm

    from hyinf.explain import resolve_device
    from hyinf.graph.geometry import OcclusionGrid
    from hyinf.graph.torch_frontend import trace_torch
    from hyinf.models import load_model
    from hyinf.plans_db import Database
    from hyinf.profiler.profile import ModelTarget
    from hyinf.profiler.profile import profile as run_profile

    dev = resolve_device(device)
    db = Database(db_url)
    targets = []
    for spec in model_specs:
        loaded = load_model(spec, weights)
        size = tuple(image_size) if image_size else loaded.image_size
        program = trace_torch(loaded.module, (1, len(loaded.mean), *size), dev)
        targets.append(ModelTarget(spec, program, OcclusionGrid.make(size, _pair(patch), _pair(stride))))  # type: ignore[arg-type]
    with tqdm(desc="profiling", unit="config", disable=quiet or not sys.stderr.isatty(), leave=False) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        report = run_profile(db, dev, quick=quick, threads=threads, models=targets, configs=configs, progress=progress)
    fit = report.fit
    click.echo(f"device: {report.device.description}; {report.threads} threads; backend {backend}")
    click.echo(f"measured {report.samples} costs in {report.seconds:.0f} s (run {report.run_id})")
    if report.noisy > 0.1 * report.samples:
        click.echo(f"warning: {report.noisy} of {report.samples} measurements vary by more than 15% between repeats; "
                   "close other programs and profile again for better plans", err=True)
    click.echo(f"held-out accuracy ({fit.learned.count} costs of configurations not fitted to):")
    click.echo(f"  {'model':<24} {'median abs. % error':>20} {'rank correlation':>17}")
    for name, acc in (("learned", fit.learned), ("analytic FLOP/byte", fit.analytic)):
        click.echo(f"  {name:<24} {acc.mape:>19.1%} {acc.spearman:>17.3f}")
    if fit.ranking is not None and fit.ranking_sweep_only is not None:
        click.echo("incremental-vs-full choice on the model's layers not fitted to (agree / agree or measured tie within 10%):")
        for name, r in (("fitted to the other layers", fit.ranking), ("fitted to the sweep alone", fit.ranking_sweep_only)):
            click.echo(f"  {name:<27} {r.agree}/{r.nodes} ({r.agree / max(r.nodes, 1):.0%}) / {r.agree + r.ties}/{r.nodes} "
                       f"({(r.agree + r.ties) / max(r.nodes, 1):.0%})")
    click.echo(f"cost model {report.cost_model_id} saved in {db.url}")


@main.group()
def db() -> None:
    """The plans database (profiles, cost models, plans)."""


@db.command()
@click.option("--db", "db_url", help="Database URL or SQLite file (default: $HYINF_DB or the user data directory).")
@_user_errors
def info(db_url: str | None) -> None:
    """Where the database is and what it holds.

    Example: hyinf db info --db team-plans.db
    """
    from hyinf.plans_db import Database

    summary = Database(db_url).summary()
    click.echo(f"database: {summary.url} (schema revision {summary.revision})")
    click.echo("holds: " + ", ".join(f"{n} {label}" for label, n in summary.counts.items()))
    for device_id, _kind, description in summary.devices:
        click.echo(f"device {device_id}: {description}")
    for model_id, device_id, backend, created, metrics in summary.cost_models:
        learned, analytic = metrics.get("learned", {}), metrics.get("analytic", {})
        click.echo(f"cost model {model_id}: device {device_id}, {backend}, {created:%Y-%m-%d %H:%M}; held-out error "
                   f"{learned.get('mape', float('nan')):.1%} (analytic {analytic.get('mape', float('nan')):.1%})")
