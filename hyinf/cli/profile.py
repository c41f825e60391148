"""`hyinf profile`: measure this device and fit its cost model."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hyinf.cli import main
from hyinf.cli.common import (
    DB_HELP,
    REGISTRY_HELP,
    pair_option,
    publishing_registry,
    user_errors,
)


@main.command()
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--backend", type=click.Choice(["torch", "ort"]), default="torch", show_default=True,
              help="Runtime backend to profile: ort times the ONNX Runtime lowering's kernels (each backend plans with its own costs).")
@click.option("--model", "model_specs", multiple=True, help="Also time this model's layers (repeatable): demo, torchvision:NAME, an .onnx, .pt2 or TorchScript file.")
@click.option("--image-size", nargs=2, type=click.IntRange(min=1), help="Image size H W for --model (default: the model's usual size).")
@click.option("--patch", default="16", show_default=True, callback=pair_option, help="Patch size for --model: N or HxW.")
@click.option("--stride", default="8", show_default=True, callback=pair_option, help="Stride for --model: N or HxW.")
@click.option("--weights", type=click.Path(path_type=Path), help="Local state dict for torchvision:NAME.")
@click.option("--quick", is_flag=True, help="A smaller sweep (under 2 minutes on a 2-core CPU).")
@click.option("--configs", type=click.IntRange(min=1), help="Sweep this many operator configurations (default 2000, 400 with --quick).")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads to time with (default: torch's default).")
@click.option("--db", "db_url", help=DB_HELP)
@click.option("--publish", is_flag=True, help="Upload the run to the plans service and have it fit the device class's cost model.")
@click.option("--registry", help=REGISTRY_HELP)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@user_errors
def profile(device: str, backend: str, model_specs: tuple[str, ...], image_size: tuple[int, int] | None, patch: int | tuple[int, int], stride: int | tuple[int, int],
            weights: Path | None, quick: bool, configs: int | None, threads: int | None, db_url: str | None, publish: bool,
            registry: str | None, quiet: bool) -> None:
    """Measure this device's incremental, full and conversion costs and fit its cost model.

    Run once per machine (and after upgrading torch); plans for every model use the result.

    Example: hyinf profile --device cpu --model torchvision:resnet18 --model torchvision:vgg16
    """
    from tqdm import tqdm

    from hyinf.errors import SettingsError
    from hyinf.explain import resolve_device
    from hyinf.graph.geometry import OcclusionGrid
    from hyinf.graph.torch_frontend import trace_torch
    from hyinf.models import load_model
    from hyinf.plans_db import Database
    from hyinf.profiler.profile import ModelTarget
    from hyinf.profiler.profile import profile as run_profile

    dev = resolve_device(device)
    if backend == "ort" and model_specs:  # checked before any model loads
        raise SettingsError("--model times layers on the torch backend only; profile ort without --model")
    service = publishing_registry(publish, registry)
    db = Database(db_url)
    targets = []
    for spec in model_specs:
        loaded = load_model(spec, weights, tuple(image_size) if image_size else None)
        size = tuple(image_size) if image_size else loaded.image_size
        program = trace_torch(loaded.module, (1, len(loaded.mean), *size), dev)
        targets.append(ModelTarget(spec, program, OcclusionGrid.make(size, patch, stride)))  # type: ignore[arg-type]
    with tqdm(desc="profiling", unit="config", disable=quiet or not sys.stderr.isatty(), leave=False) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        report = run_profile(db, dev, quick=quick, backend=backend, threads=threads, models=targets, configs=configs, progress=progress)
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
    if service is not None:
        run = db.run_upload(report.run_id)
        run_id = service.publish_run(run)
        fitted = service.fit(report.device.device_class, backend)
        click.echo(f"published as run {run_id} to {service.url}; its cost model for {report.device.device_class} is {fitted['id']}"
                   + ("" if fitted["created"] else " (unchanged)"))
