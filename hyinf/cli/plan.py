"""`hyinf plan` and `hyinf plans`: make, inspect and share hybrid plans."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from hyinf.cli import main
from hyinf.cli.common import (
    DB_HELP,
    REGISTRY_HELP,
    pair_option,
    publishing_registry,
    user_errors,
    writable_file,
)
from hyinf.modes import BACKEND_CHOICES
from hyinf.paths import check_readable_file

if TYPE_CHECKING:
    import torch

    from hyinf.models import LoadedModel
    from hyinf.planner.document import PlanDocument
    from hyinf.planner.quality_target import Calibration


@main.command()
@click.argument("model")
@click.option("--image-size", nargs=2, type=click.IntRange(min=1), help="Image size H W (default: the model's usual size).")
@click.option("--patch", default="16", show_default=True, callback=pair_option, help="Patch size in pixels: N or HxW.")
@click.option("--stride", default="8", show_default=True, callback=pair_option, help="Stride in pixels: N or HxW.")
@click.option("--device", default="cpu", show_default=True, help="Plan for this device's costs: cpu or cuda.")
@click.option("--approx-threshold", "threshold", type=float, default=1.0, show_default=True,
              help="Plan for runs with this projective-field threshold (windows cut to TAU of each map's side; 1 = exact).")
@click.option("--profile", "cost_model_id", type=int, help="Plan with this stored cost model (`hyinf db info` lists them).")
@click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="torch", show_default=True,
              help="Plan for this backend's costs (ort without its own profile plans with torch's); auto: plan for both "
                   "and keep the one predicted faster, with both predictions.")
@click.option("--strategy", type=click.Choice(["optimal", "heuristic"]), default="optimal", show_default=True,
              help="optimal: minimum cut over the whole graph; heuristic: one switch from incremental to full.")
@click.option("--weights", type=click.Path(path_type=Path), help="Local state dict for torchvision:NAME (the plan does not depend on it).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Also write the plan to this JSON file.")
@click.option("--explain", "explain_plan", is_flag=True, help="Print each node's costs and chosen mode.")
@click.option("--db", "db_url", help=DB_HELP)
@click.option("--publish", is_flag=True, help="Also publish the plan, with the model's structure (no weights), to the plans service.")
@click.option("--registry", help=REGISTRY_HELP)
@click.option("--target-ssim", type=float, help="Calibrate: find the fastest approximate settings whose worst calibration "
              "image keeps this SSIM against exact, and store them with the plan (`hyinf explain --target-ssim`).")
@click.option("--calibration-images", type=click.Path(path_type=Path), help="Images (a folder, files or a glob) to calibrate on.")
@click.option("--top-agreement", type=float, help="With --target-ssim: also keep this share of the exact top-10% positions.")
@click.option("--measure", "measure_rounds", type=int, help="Run the cost model's plan and its neighbours (other weights "
              "on incremental costs; with auto, the other backend's plan too) on a random image for this many rounds "
              "each and keep the measured fastest.")
@user_errors
def plan(model: str, image_size: tuple[int, int] | None, patch: int | tuple[int, int], stride: int | tuple[int, int], device: str, threshold: float, cost_model_id: int | None, backend: str,
         strategy: str, weights: Path | None, output: Path | None, explain_plan: bool, db_url: str | None, publish: bool,
         registry: str | None, target_ssim: float | None, calibration_images: Path | None, top_agreement: float | None,
         measure_rounds: int | None) -> None:
    """Plan MODEL's hybrid evaluation and store the plan for `hyinf explain`.

    MODEL is demo, torchvision:NAME, an .onnx file, a torch.export (.pt2) or a TorchScript file.

    Example: hyinf plan torchvision:resnet50 --patch 16 --stride 8 -o resnet50-plan.json --explain
    """
    import time

    from hyinf.explain import resolve_device
    from hyinf.graph.fingerprint import graph_fingerprint
    from hyinf.graph.geometry import OcclusionGrid
    from hyinf.graph.torch_frontend import trace_torch
    from hyinf.models import load_model
    from hyinf.planner.document import settings_key
    from hyinf.planner.select import candidate_documents, make_plan
    from hyinf.plans_db import Database
    from hyinf.profiler.machine import fingerprint

    dev = resolve_device(device)
    if backend == "auto" and cost_model_id is not None:
        raise click.UsageError("--profile names one backend's cost model; --backend auto compares each backend's own: leave out one")
    writable_file(output)
    service = publishing_registry(publish, registry)
    _check_calibration_options(target_ssim, calibration_images, top_agreement, threshold)
    if measure_rounds is not None:
        from hyinf.plan_measure import check_rounds

        check_rounds(measure_rounds)
        if target_ssim is not None:
            raise click.UsageError("--measure chooses among exact plans; --target-ssim calibrates approximate ones: leave out one")
    loaded = load_model(model, weights, tuple(image_size) if image_size else None)
    size = tuple(image_size) if image_size else loaded.image_size
    program = trace_torch(loaded.module, (1, len(loaded.mean), *size), dev)
    grid = OcclusionGrid.make(size, patch, stride, threshold)  # type: ignore[arg-type]
    fp = fingerprint(dev)
    calibration = None
    if target_ssim is not None:
        calibration = _calibrate(loaded, size, patch, stride, device, backend, db_url, target_ssim, calibration_images, top_agreement)
        grid = OcclusionGrid.make(size, patch, stride, calibration.approx_threshold)  # type: ignore[arg-type]
    with Database(db_url) as db:  # closed before returning: callers in the same process see a finished file
        start = time.perf_counter()
        if measure_rounds is None:
            document = make_plan(program.graph, grid, fp, model_name=model, db=db, strategy=strategy, cost_model_id=cost_model_id,
                                 backend=backend)
        else:
            candidates = candidate_documents(program.graph, grid, fp, model_name=model, db=db, strategy=strategy,
                                             cost_model_id=cost_model_id, backend=backend, rival=True)
            document = _measure(loaded, size, candidates, dev, threshold, patch, stride, measure_rounds)
        if calibration is not None:
            document = document.calibrated(calibration)
        seconds = time.perf_counter() - start
        plan_id = db.save_plan(graph_fingerprint(program.graph), settings_key(document.settings), fp, document.body["cost_model"]["id"],
                               dict(document.body))
    if output is not None:
        output.write_text(document.to_json())
    if explain_plan:
        _print_explanation(document.body)
    predicted = document.body["predicted_s"]
    source = document.body["cost_model"]
    click.echo(f"plan {plan_id} for {model} ({size[0]}x{size[1]}, patch {'x'.join(map(str, grid.patch))}, "
               f"stride {'x'.join(map(str, grid.stride))}) on {fp.description}, "
               f"{strategy}, {source['kind']} cost model{' ' + str(source['id']) if source['id'] else ''}, planned in {seconds:.2f} s")
    click.echo("predicted: " + ", ".join(f"{k} {v:.2f} s" for k, v in predicted.items()))
    if "backend_choice" in document.body:
        click.echo(f"backend {document.body['backend_choice']['reason']}")
    if "measured" in document.body:
        click.echo(_measured_line(document.body["measured"], measure_rounds or 0))
    if calibration is not None:
        click.echo(f"calibrated for SSIM {calibration.target_ssim:g} on {calibration.images} images ({calibration.candidates} candidates): "
                   + _calibrated_settings(calibration))
    click.echo(f"saved in {db.url}" + (f" and {output}" if output else ""))
    if service is not None:
        from hyinf.graph.ir_json import graph_to_json

        published = service.publish_plan(dict(document.body), graph_to_json(program.graph))
        click.echo(f"published as plan {published['id']} to {service.url}" + ("" if published["created"] else " (it was there already)"))


def _measure(loaded: LoadedModel, size: tuple[int, int], candidates: list[tuple[float, PlanDocument]], device: torch.device,
             threshold: float, patch: int | tuple[int, int], stride: int | tuple[int, int], rounds: int) -> PlanDocument:
    """The candidate measured fastest on a random image (the time of an exact run does not depend on the pixels)."""
    import sys

    import torch

    from hyinf.explainer import Explainer
    from hyinf.plan_measure import measured_choice

    image = torch.randn((len(loaded.mean), *size), generator=torch.Generator().manual_seed(0))
    fill = loaded.pixel_to_input(0.0)

    def explainer(document: PlanDocument) -> Explainer:
        return Explainer(loaded.module, plan=document, backend=document.settings["backend"], patch=patch, stride=stride,
                         patch_value=fill, device=device, approx_threshold=threshold)

    return measured_choice(candidates, explainer, image, rounds, progress=sys.stderr.isatty())


def _measured_line(measured: dict[str, Any], asked: int) -> str:
    trials = measured["trials"]
    chosen, own = trials[measured["chosen"]], trials[0]
    if chosen is own:
        what = "the cost model's own plan"
    else:
        kind = f"{chosen['backend']}'s own plan" if chosen["backend"] != own["backend"] else \
            f"the plan for incremental costs x{chosen['weight']:g}"
        what = f"{kind}, {own['measured_s'] / max(chosen['measured_s'], 1e-12):.3f}x as fast as the cost model's choice"
    raised = f" (raised from {asked}: fewer let chance pick one of {len(trials) - 1} challengers)" if measured["rounds"] > asked else ""
    return (f"measured {len(trials)} plan{'s' * (len(trials) > 1)} over {measured['rounds']} rounds each{raised}: kept {what} "
            f"(its positions {chosen['measured_s']:.2f} s per image, predicted {chosen['predicted_s']:.2f} s)")


def _calibrated_settings(calibration: Calibration) -> str:
    if calibration.drill_down == 1 and calibration.approx_threshold == 1:
        return ("exact evaluation: no approximate setting predicted to keep the target ran faster than exact here "
                "(explain without --target-ssim for the same result)")
    stride = f" from stride {'x'.join(map(str, calibration.coarse_stride))}" if calibration.coarse_stride else ""
    return (f"threshold {calibration.approx_threshold:g}, drill-down {calibration.drill_down:g}{stride}; SSIM worst "
            f"{calibration.ssim_min:.3f}, mean {calibration.ssim_mean:.3f}, predicted for a new image {calibration.ssim_bound:.3f}; "
            f"top-10% agreement worst {calibration.top_min:.2f}; {calibration.speedup:.2f}x exact hybrid (measured)")


def _check_calibration_options(target_ssim: float | None, images: Path | None, top_agreement: float | None, threshold: float) -> None:
    """The calibration options make sense together, before the model loads."""
    from hyinf.planner.quality_target import check_target

    if target_ssim is None:
        if images is not None or top_agreement is not None:
            raise click.UsageError("--calibration-images and --top-agreement calibrate for a quality: give --target-ssim too")
        return
    check_target(target_ssim, "--target-ssim")
    if top_agreement is not None:
        check_target(top_agreement, "--top-agreement")
    if images is None:
        raise click.UsageError("--target-ssim calibrates on images: give --calibration-images DIR")
    if threshold != 1:
        raise click.UsageError("--target-ssim chooses the threshold itself: leave out --approx-threshold")


def _calibrate(loaded: LoadedModel, size: tuple[int, int], patch: int | tuple[int, int], stride: int | tuple[int, int], device: str,
               backend: str, db_url: str | None, target_ssim: float, images: Path, top_agreement: float | None) -> Calibration:
    """The calibration on the images found under `images`, at the CLI's default patch value (black)."""
    import sys

    from hyinf.calibration import calibrate, pixels_sha256
    from hyinf.errors import HyinfError
    from hyinf.explainer import Explainer
    from hyinf.images import load_image
    from hyinf.imageset.inputs import collect

    found = collect([images])
    usable, skipped = [], []
    for item in found.items:
        try:
            usable.append(loaded.normalise(load_image(item.path, size)))
        except HyinfError as e:
            skipped.append(str(e))
    if not usable:
        reasons = "; ".join([*found.notes, *skipped][:3])
        raise click.UsageError(f"no usable calibration images in {images}" + (f": {reasons}" if reasons else ""))
    for line in skipped:
        click.echo(f"warning: skipped {line}", err=True)
    fill = loaded.pixel_to_input(0.0)

    def explainer(**approx: Any) -> Explainer:
        settings = {"patch": patch, "stride": stride, **approx}
        return Explainer(loaded.module, patch_value=fill, device=device, backend=backend, db=db_url, **settings)

    return calibrate(explainer, usable, [pixels_sha256(u) for u in usable], target_ssim, top_agreement,
                     progress=sys.stderr.isatty())


def _print_explanation(body: dict) -> None:
    """Per node of the largest block: changed window vs map, predicted costs, chosen mode, conversions."""
    block = max(body["blocks"], key=lambda b: b["positions"])
    click.echo(f"largest block: {block['positions']} of {sum(b['positions'] for b in body['blocks'])} positions; "
               "costs in ms for all its positions")
    click.echo(f"{'node':<28} {'op':<18} {'window / map':>15} {'incremental':>12} {'full':>10}  mode")
    for node in body["nodes"]:
        if node["change"] == "unchanged":
            continue
        window = f"{node['window'][0]}x{node['window'][1]}" if node["window"] else "-"
        area = f"{node['map'][0]}x{node['map'][1]}" if node["map"] else "-"
        costs = block.get("node_costs", {}).get(node["name"], {})
        inc = f"{costs['incremental'] * 1e3:.2f}" if costs.get("incremental") is not None else "-"
        full = f"{costs['full'] * 1e3:.2f}" if "full" in costs else "-"
        mode = block["modes"].get(node["name"], "full")
        converts = costs.get("converts", "")
        click.echo(f"{node['name'][:28]:<28} {(node['fn'] or node['op'])[:18]:<18} {window + ' / ' + area:>15} {inc:>12} {full:>10}  {mode}{converts}")
    click.echo("block totals (s): " + ", ".join(f"{k} {v:.3f}" for k, v in block["predicted_s"].items()))


@main.group()
def plans() -> None:
    """Stored plans: list, show, export to a file, import from a file, delete."""


@plans.command("list")
@click.option("--db", "db_url", help=DB_HELP)
@user_errors
def list_plans(db_url: str | None) -> None:
    """Every stored plan.

    Example: hyinf plans list
    """
    from hyinf.errors import PlanError
    from hyinf.planner.document import PlanDocument
    from hyinf.plans_db import Database

    rows = Database(db_url).plans()
    if not rows:
        click.echo("no plans stored; make one with `hyinf plan MODEL`")
    for row in rows:
        try:  # a row an older hyinf stored, or one edited in the database, is listed as invalid, not read blindly
            body = PlanDocument.parse(json.dumps(row.body), f"plan {row.id}").body
        except PlanError as e:
            click.echo(f"{row.id:>4}  invalid: {e}  {row.created_at:%Y-%m-%d %H:%M}")
            continue
        click.echo(f"{row.id:>4}  {plan_line(body)}  {row.created_at:%Y-%m-%d %H:%M}")


def plan_line(body: dict) -> str:
    """What `hyinf plans list` says of a parsed plan document."""
    s = body["settings"]
    return (f"{body['model']['name']:<28} {s['image_size'][0]}x{s['image_size'][1]} patch {s['patch'][0]} stride {s['stride'][0]}  "
            f"{body['strategy']:<9} {body['device']['name'][:32]:<32} predicted {body['predicted_s']['plan']:.2f} s")


@plans.command()
@click.argument("plan_id", type=int)
@click.option("--db", "db_url", help=DB_HELP)
@user_errors
def delete(plan_id: int, db_url: str | None) -> None:
    """Remove stored plan PLAN_ID from the database.

    Example: hyinf plans delete 3
    """
    from hyinf.plans_db import Database

    if not Database(db_url).delete_plan(plan_id):
        raise _missing(plan_id)
    click.echo(f"deleted plan {plan_id}")


def _missing(plan_id: int) -> click.ClickException:
    return click.ClickException(f"no plan {plan_id} in the database; `hyinf plans list` shows the stored ones")


def _stored(db_url: str | None, plan_id: int) -> dict:
    from hyinf.plans_db import Database

    row = Database(db_url).plan(plan_id)
    if row is None:
        raise _missing(plan_id)
    return row.body


@plans.command()
@click.argument("plan_id", type=int)
@click.option("--db", "db_url", help=DB_HELP)
@user_errors
def show(plan_id: int, db_url: str | None) -> None:
    """Print stored plan PLAN_ID as JSON.

    Example: hyinf plans show 3
    """
    click.echo(json.dumps(_stored(db_url, plan_id), indent=1))


@plans.command()
@click.argument("plan_id", type=int)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="File to write.")
@click.option("--db", "db_url", help=DB_HELP)
@user_errors
def export(plan_id: int, output: Path, db_url: str | None) -> None:
    """Write stored plan PLAN_ID to a JSON file, for another machine or `hyinf explain --plan`.

    Example: hyinf plans export 3 -o resnet50-plan.json
    """
    writable_file(output)
    output.write_text(json.dumps(_stored(db_url, plan_id), indent=1))
    click.echo(f"wrote plan {plan_id} to {output}")


@plans.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--db", "db_url", help=DB_HELP)
@user_errors
def import_plan(file: Path, db_url: str | None) -> None:
    """Store the plan in FILE, so `hyinf explain` finds it for its model, settings and device.

    Example: hyinf plans import resnet50-plan.json
    """
    from hyinf.planner.document import PlanDocument, settings_key
    from hyinf.plans_db import Database

    check_readable_file(file, "plan file")
    document = PlanDocument.parse(file.read_bytes(), str(file))
    plan_id = Database(db_url).save_plan(document.model_fingerprint, settings_key(document.settings), document.device, None, dict(document.body))
    click.echo(f"imported {file} as plan {plan_id} ({document.body['model']['name']}, made for {document.device.description})")


@plans.command()
@click.argument("plan_id", type=int)
@click.option("--registry", help=REGISTRY_HELP)
@click.option("--db", "db_url", help=DB_HELP)
@user_errors
def push(plan_id: int, registry: str | None, db_url: str | None) -> None:
    """Publish stored plan PLAN_ID to the plans service (needs a publish token in HYINF_TOKEN).

    Example: HYINF_TOKEN=... hyinf plans push 3 --registry http://plans.internal:8750
    """
    service = publishing_registry(True, registry)
    published = service.publish_plan(_stored(db_url, plan_id))
    click.echo(f"pushed plan {plan_id} as plan {published['id']} ({published['digest'][:12]}) to {service.url}"
               + ("" if published["created"] else "; it was there already"))


@plans.command()
@click.argument("plan_id", type=int)
@click.option("--registry", help=REGISTRY_HELP)
@click.option("--db", "db_url", help=DB_HELP)
@user_errors
def pull(plan_id: int, registry: str | None, db_url: str | None) -> None:
    """Fetch plan PLAN_ID from the plans service (its digest checked) and store it here.

    Example: hyinf plans pull 12 --registry http://plans.internal:8750
    """
    from hyinf.planner.document import settings_key
    from hyinf.plans_db import Database
    from hyinf.plans_db.store import Provenance
    from hyinf.registry import Registry

    service = Registry.from_env(registry)
    if service is None:
        raise click.UsageError("name the plans service: --registry URL or HYINF_REGISTRY")
    document = service.pull(plan_id)
    stored = Database(db_url).save_plan(document.model_fingerprint, settings_key(document.settings), document.device, None,
                                        dict(document.body), Provenance(publisher=f"registry {service.url} plan {plan_id}"))
    click.echo(f"pulled plan {plan_id} from {service.url} as plan {stored} ({document.body['model']['name'] or 'model'}, "
               f"made for {document.device.description})")
