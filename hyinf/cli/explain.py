"""`hyinf explain`: the heatmaps of one image, or of many (files, folders, globs), here or on Ray."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from hyinf.cli import main
from hyinf.cli.common import (
    DB_HELP,
    REGISTRY_HELP,
    Laps,
    finite,
    pair_option,
    user_errors,
    writable_folder,
)
from hyinf.modes import BACKEND_CHOICES, MODES, OUTPUTS, PRECISIONS
from hyinf.paths import check_readable_file

RESULT_FILES = ("heatmap.npy", "attribution.npy", "overlay.png", "report.json")


@main.command()
@click.argument("model", default="demo")
@click.argument("images", nargs=-1)
@click.option("--target", type=int, help="Class to explain (default: the model's prediction).")
@click.option("--targets", "targets_file", type=click.Path(path_type=Path),
              help="CSV with the header image,target: a class per image (named as in index.csv, or by its path).")
@click.option("--patch", default="16", show_default=True, callback=pair_option, help="Patch size in pixels: N or HxW.")
@click.option("--stride", default="8", show_default=True, callback=pair_option, help="Stride in pixels: N or HxW.")
@click.option("--patch-value", type=float, default=0.0, show_default=True, help="Value the patch is filled with.")
@click.option("--patch-space", type=click.Choice(["pixel", "input"]), default="pixel", show_default=True,
              help="pixel: --patch-value is a pixel intensity in [0, 1] (0 = black); input: a model-input value.")
@click.option("--mode", type=click.Choice(MODES), default="hybrid", show_default=True)
@click.option("--output", "score", type=click.Choice(OUTPUTS), default="raw", show_default=True, help="Score raw outputs or softmax probabilities.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="auto", show_default=True,
              help="torch: PyTorch; ort: ONNX Runtime (the plan lowered to one ONNX graph, built once per model and settings); "
                   "auto: the one `hyinf plan --backend auto` chose, else the one the cost models predict faster, once its "
                   "saving repays what it has to build (torch where a backend was never profiled).")
@click.option("--precision", type=click.Choice(PRECISIONS), default="float32", show_default=True,
              help="float32: exact; tf32: a CUDA GPU's tensor-core arithmetic (faster, approximate: report.json gives "
                   "the clean output's distance from float32).")
@click.option("--cuda-graphs", is_flag=True, help="On a CUDA GPU: replay each block's chunks from captured CUDA graphs "
                                                 "(fewer kernel launches; see docs/gpu.md).")
@click.option("--image-size", nargs=2, type=click.IntRange(min=1), help="Resize the image to H W (default: the model's usual size).")
@click.option("--normalize/--no-normalize", default=True, show_default=True,
              help="Normalise pixels as the model expects (ImageNet mean and std for torchvision models).")
@click.option("--weights", type=click.Path(path_type=Path), help="Local state dict (.safetensors or .pt) for torchvision:NAME.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Positions evaluated at once (default: from --max-memory).")
@click.option("--max-memory", type=float, help="Memory budget for one chunk of positions, in GiB (default 2 on a CPU, a quarter of a GPU's free memory).")
@click.option("--plan", "plan_file", type=click.Path(path_type=Path),
              help="Run this plan file (from `hyinf plan -o` or `hyinf plans export`) instead of choosing one.")
@click.option("--db", "db_url", help=DB_HELP)
@click.option("--registry", help=REGISTRY_HELP)
@click.option("--approx-threshold", "threshold", type=float, default=1.0, show_default=True,
              help="Projective-field threshold TAU in (0, 1]: incremental windows span at most TAU of each map's side (1 = exact).")
@click.option("--drill-down", "ratio", type=float, default=1.0, show_default=True,
              help="Drill-down RATIO in (0, 1]: a coarse pass, then the fine stride only over this fraction of it where the heatmap is highest (1 = exact).")
@click.option("--coarse-stride", callback=pair_option, help="Stride of the drill-down's coarse pass: N or HxW (default: twice --stride).")
@click.option("--target-ssim", type=float,
              help="Approximate with the settings of the stored plan calibrated for at least this SSIM (`hyinf plan --target-ssim`).")
@click.option("--check-exact", is_flag=True, help="Also compute the exact heatmap and report how far an approximate one is from it.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("hyinf-out"), show_default=True)
@click.option("--resume", is_flag=True, help="Keep the results of images already explained into --out with the same settings.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Run on Ray: auto, ray://HOST:PORT or HOST:PORT; no address starts a local cluster for the run.")
@click.option("--workers", type=click.IntRange(min=1), default=2, show_default=True, help="Ray actors, each holding the model once.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="CPU threads per Ray actor.")
@click.option("--contact-sheet", "contact", type=click.IntRange(min=0), default=16, show_default=True,
              help="Images on contact_sheet.png: the most confident, with their overlays (0: none).")
@click.option("--quiet", is_flag=True, help="No progress bar or summary.")
@user_errors
def explain(model: str, images: tuple[str, ...], target: int | None, targets_file: Path | None, patch: int | tuple[int, int],
            stride: int | tuple[int, int], patch_value: float, patch_space: str, mode: str, score: str, device: str, backend: str,
            precision: str, cuda_graphs: bool, image_size: tuple[int, int] | None, normalize: bool, weights: Path | None, batch_size: int | None,
            max_memory: float | None, plan_file: Path | None, db_url: str | None, registry: str | None, threshold: float, ratio: float,
            coarse_stride: int | tuple[int, int] | None, target_ssim: float | None, check_exact: bool, out_dir: Path, resume: bool, ray_address: str | None,
            workers: int, threads: int, contact: int, quiet: bool) -> None:
    """Occlusion heatmaps of IMAGES under MODEL.

    MODEL is 'demo' (a small bundled CNN with trained weights), torchvision:NAME, an .onnx file, a torch.export
    (.pt2) file or a TorchScript file. IMAGES are files Pillow reads, folders (searched recursively
    for image extensions) and globs; for the demo they default to the bundled sample. Hybrid runs use
    the plan stored for this model, settings and device (`hyinf plan`), or plan now.

    One image file: heatmap.npy, attribution.npy, overlay.png and report.json go to --out. Several
    (or a folder, a glob, --targets, --resume or --ray): one folder per image under --out, named after
    its path relative to what was given, with index.csv (a row per image), class_means/ (the mean
    heatmap per explained class) and contact_sheet.png. A failing image is recorded and the rest go
    on; the exit code is 1 if any failed.

    Examples: hyinf explain torchvision:resnet18 cat.jpg --out cat-heatmap;
    hyinf explain torchvision:resnet18 val/ --out audit --ray
    """
    from hyinf.daemon import Resident

    resident = click.get_current_context().find_object(Resident)  # set where a `hyinf daemon` runs this command
    laps = Laps(resident.startup_s if resident is not None else None)
    from hyinf.graph.geometry import OcclusionGrid
    from hyinf.graph.sources import is_onnx
    from hyinf.imageset.worker import JobSpec, Worker, file_sha256

    if ray_address is None:  # on Ray the actors load torch and the model; this process starts the cluster meanwhile
        from hyinf.explain import check_work, resolve_device
        from hyinf.runtime.cuda_graphs import check_cuda_graphs
        from hyinf.runtime.precision import check_precision

        # An accelerator that is not there, and what it alone can do, are refused before anything else.
        check_precision(precision, resolve_device(device), backend)
        check_cuda_graphs(cuda_graphs, resolve_device(device), backend, mode)
    laps.lap("imports_s")  # the engine's modules load here, not for `hyinf --help`
    # Everything that can be checked without the model is, before the model is loaded.
    finite(patch_value, "--patch-value")
    from hyinf.registry import Registry

    Registry.from_env(registry)  # a malformed URL is refused now, not after the model loads
    finite(max_memory, "--max-memory")
    if max_memory is not None and max_memory <= 0:
        raise click.BadParameter(f"must be a positive number of GiB, got {max_memory}", param_hint="--max-memory")
    if target_ssim is not None:
        from hyinf.planner.quality_target import check_target

        check_target(target_ssim, "--target-ssim")
        if threshold != 1 or ratio != 1 or coarse_stride is not None or plan_file is not None or mode != "hybrid":
            raise click.UsageError("--target-ssim takes its settings from a calibrated plan: leave out --approx-threshold, "
                                   "--drill-down, --coarse-stride, --plan and --mode")
    if out_dir.exists() and not out_dir.is_dir():
        raise click.BadParameter(f"{out_dir} is a file; give a folder to write the results into", param_hint="--out")
    if not images and model != "demo":
        raise click.UsageError("IMAGES are required unless MODEL is 'demo'")
    if plan_file is not None:
        check_readable_file(plan_file, "plan file")
        import hyinf

        hyinf.PlanDocument.parse(plan_file.read_bytes(), str(plan_file))  # a malformed plan is refused before the model loads
        if mode != "hybrid":
            raise click.UsageError("--plan runs a hybrid plan; leave out --mode")
    if targets_file is not None:
        check_readable_file(targets_file, "targets file")
        if target is not None:
            raise click.UsageError("give --target (one class for every image) or --targets FILE, not both")
    from hyinf.imageset.inputs import is_glob

    # One image named directly (which may not exist: it is checked below, as ever) keeps the one-folder layout.
    single = len(images) <= 1 and targets_file is None and not resume and ray_address is None and (
        not images or not (Path(images[0]).is_dir() or is_glob(images[0])))
    if single:
        for name in RESULT_FILES:
            if (out_dir / name).is_dir():
                raise click.BadParameter(f"{out_dir / name} is a directory; give another --out", param_hint="--out")
    writable_folder(out_dir)
    spec = JobSpec(
        model=str(Path(model).resolve()) if Path(model).suffix and Path(model).exists() else model,
        weights=str(weights.resolve()) if weights else None, image_size=tuple(image_size) if image_size else None, normalize=normalize,
        patch_value=patch_value, patch_space=patch_space, plan_file=str(plan_file.resolve()) if plan_file else None,
        settings={"patch": patch, "stride": stride, "mode": mode, "db": db_url, "device": device, "backend": backend, "precision": precision, "cuda_graphs": cuda_graphs, "output": score,
                  "batch_size": batch_size, "max_memory": None if max_memory is None else max_memory * 1024**3,
                  "approx_threshold": threshold, "drill_down": ratio, "coarse_stride": coarse_stride, "check_exact": check_exact,
                  "registry": registry, "target_ssim": target_ssim, "progress": single and not quiet and sys.stderr.isatty()},
    )
    if not single:
        _many(spec, images, target, targets_file, out_dir, resume, ray_address, workers, threads, contact, quiet)
        return
    if images:
        check_readable_file(Path(images[0]), "image")
    laps.lap("checks_s")
    worker = resident.worker(spec) if resident is not None else Worker(spec)
    laps.lap("model_load_s")  # an ONNX file's import (checks, conversion, tracing its graph) included
    loaded = worker.loaded
    if images:
        image = Path(images[0])
    else:
        from hyinf.demo import SAMPLE, asset

        image = asset(SAMPLE)
    if not is_onnx(model):  # before decoding and resizing the image, which can take seconds at large sizes
        grid = OcclusionGrid.make(worker.size, patch, stride)  # type: ignore[arg-type]
        check_work(loaded.module, (1, len(loaded.mean), *worker.size), resolve_device(device), len(grid), progress=False)
    pixels = worker.pixels(image)
    laps.lap("image_s")
    result = worker.explainer.explain(loaded.normalise(pixels), target)
    laps.lap("explain_s")
    from hyinf.imageset.inputs import Item

    def process() -> dict[str, object]:
        laps.lap("write_s")
        laps.times["wall_s"] = laps.times["startup_s"] + sum(v for k, v in laps.times.items() if k != "startup_s")
        # this command's fixed costs around it, from process start to the last file; in a daemon, the client's start
        return {"process_s": laps.times, "daemon": resident is not None}

    worker.write(out_dir, Item(image, image.name), file_sha256(image), target, pixels, result, process)
    approx = result.approximation
    if not quiet:
        click.echo(f"{loaded.description}: target {worker.label(result.target)} (score {result.base_score:.4g}), {len(result.grid)} positions, "
                   f"{result.mode}, {result.timings['total_s']:.2f} s -> {out_dir}/")
        if approx is not None and approx.quality is not None:
            click.echo(f"distance from exact ({result.timings['exact_s']:.2f} s): {approx.quality.summary()}")


def _many(spec: object, images: tuple[str, ...], target: int | None, targets_file: Path | None, out_dir: Path, resume: bool,
          ray_address: str | None, workers: int, threads: int, contact: int, quiet: bool) -> None:
    """Every image the arguments name, one results folder each, with index.csv and the summaries."""
    from tqdm import tqdm

    from hyinf.imageset.inputs import collect, read_targets
    from hyinf.imageset.job import RESERVED, RayOptions, explain_images

    def note(line: str) -> None:
        if not quiet:
            tqdm.write(f"hyinf: {line}", file=sys.stderr)

    inputs = collect(images, RESERVED)
    if not inputs.items:
        raise click.UsageError(f"no images to explain: {'; '.join(inputs.notes)}")
    for line in inputs.notes:
        note(line)
    targets = {item.name: target for item in inputs.items} if target is not None else {}
    if targets_file is not None:
        targets, notes = read_targets(targets_file, inputs.items)
        for line in notes:
            note(line)
    ray = None if ray_address is None else RayOptions(None if ray_address == "local" else ray_address, workers, threads)
    started = time.perf_counter()
    result = explain_images(spec, inputs.items, out_dir, targets=targets, resume=resume, ray=ray, contact=contact,  # type: ignore[arg-type]
                            progress=not quiet and sys.stderr.isatty(), note=note)
    failed = len(result.failed)
    if not quiet:
        kept = f", {result.resumed} kept from before" if result.resumed else ""
        click.echo(f"{len(result.rows)} images, {len(result.rows) - failed} explained, {failed} failed{kept}, "
                   f"{time.perf_counter() - started:.1f} s -> {out_dir}/index.csv")
    if failed:
        raise click.ClickException(f"{failed} of {len(result.rows)} images failed; their reasons are in {out_dir / 'index.csv'}")
