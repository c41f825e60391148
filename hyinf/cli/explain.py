"""`hyinf explain`: the heatmap of one image."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import click

import hyinf
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
from hyinf.modes import BACKENDS, MODES, OUTPUTS
from hyinf.paths import check_readable_file

RESULT_FILES = ("heatmap.npy", "attribution.npy", "overlay.png", "report.json")


@main.command()
@click.argument("model", default="demo")
@click.argument("image", required=False, type=click.Path(path_type=Path))
@click.option("--target", type=int, help="Class to explain (default: the model's prediction).")
@click.option("--patch", default="16", show_default=True, callback=pair_option, help="Patch size in pixels: N or HxW.")
@click.option("--stride", default="8", show_default=True, callback=pair_option, help="Stride in pixels: N or HxW.")
@click.option("--patch-value", type=float, default=0.0, show_default=True, help="Value the patch is filled with.")
@click.option("--patch-space", type=click.Choice(["pixel", "input"]), default="pixel", show_default=True,
              help="pixel: --patch-value is a pixel intensity in [0, 1] (0 = black); input: a model-input value.")
@click.option("--mode", type=click.Choice(MODES), default="hybrid", show_default=True)
@click.option("--output", "score", type=click.Choice(OUTPUTS), default="raw", show_default=True, help="Score raw outputs or softmax probabilities.")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--backend", type=click.Choice(BACKENDS), default="torch", show_default=True,
              help="torch: PyTorch; ort: ONNX Runtime (the plan lowered to one ONNX graph, built once per model and settings).")
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
@click.option("--check-exact", is_flag=True, help="Also compute the exact heatmap and report how far an approximate one is from it.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("hyinf-out"), show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar or summary.")
@user_errors
def explain(model: str, image: Path | None, target: int | None, patch: int | tuple[int, int], stride: int | tuple[int, int],
            patch_value: float, patch_space: str,
            mode: str, score: str, device: str, backend: str, image_size: tuple[int, int] | None, normalize: bool, weights: Path | None, batch_size: int | None,
            max_memory: float | None, plan_file: Path | None, db_url: str | None, registry: str | None, threshold: float, ratio: float, coarse_stride: int | tuple[int, int] | None,
            check_exact: bool, out_dir: Path, quiet: bool) -> None:
    """Occlusion heatmap of IMAGE under MODEL.

    MODEL is 'demo' (a small bundled CNN with trained weights), torchvision:NAME, an .onnx file, a torch.export
    (.pt2) file or a TorchScript file. IMAGE is any file Pillow reads; for the demo it defaults to
    the bundled sample. Writes heatmap.npy, attribution.npy, overlay.png and report.json to --out.
    Hybrid runs use the plan stored for this model, settings and device (`hyinf plan`), or plan now.

    Example: hyinf explain torchvision:resnet18 cat.jpg --patch 16 --stride 8 --out cat-heatmap
    """
    laps = Laps()
    import numpy as np

    from hyinf.explain import check_work, resolve_device
    from hyinf.graph.geometry import OcclusionGrid
    from hyinf.graph.sources import is_onnx
    from hyinf.images import load_image
    from hyinf.models import load_model
    from hyinf.viz import save_overlay

    laps.lap("imports_s")  # the engine's modules load here, not for `hyinf --help`
    # Everything that can be checked without the model is, before the model is loaded.
    finite(patch_value, "--patch-value")
    from hyinf.registry import Registry

    Registry.from_env(registry)  # a malformed URL is refused now, not after the model loads
    finite(max_memory, "--max-memory")
    if max_memory is not None and max_memory <= 0:
        raise click.BadParameter(f"must be a positive number of GiB, got {max_memory}", param_hint="--max-memory")
    resolve_device(device)
    if out_dir.exists() and not out_dir.is_dir():
        raise click.BadParameter(f"{out_dir} is a file; give a folder to write the results into", param_hint="--out")
    if image is None and model != "demo":
        raise click.UsageError("IMAGE is required unless MODEL is 'demo'")
    if image is not None:
        check_readable_file(image, "image")
    if plan_file is not None:
        check_readable_file(plan_file, "plan file")
    for name in RESULT_FILES:
        if (out_dir / name).is_dir():
            raise click.BadParameter(f"{out_dir / name} is a directory; give another --out", param_hint="--out")
    writable_folder(out_dir)
    plan = hyinf.PlanDocument.parse(plan_file.read_bytes(), str(plan_file)) if plan_file is not None else None
    if plan is not None and mode != "hybrid":
        raise click.UsageError("--plan runs a hybrid plan; leave out --mode")
    laps.lap("checks_s")
    loaded = load_model(model, weights, tuple(image_size) if image_size else None)
    laps.lap("model_load_s")  # an ONNX file's import (checks, conversion, tracing its graph) included
    if not normalize:
        loaded = replace(loaded, mean=(0.0,) * len(loaded.mean), std=(1.0,) * len(loaded.std))
    if image is None:
        from hyinf.demo import SAMPLE, asset

        image = asset(SAMPLE)
    size = tuple(image_size) if image_size else loaded.image_size
    if not is_onnx(model):  # before decoding and resizing the image, which can take seconds at large sizes
        grid = OcclusionGrid.make(size, patch, stride)  # type: ignore[arg-type]
        check_work(loaded.module, (1, len(loaded.mean), *size), resolve_device(device), len(grid), progress=False)
    pixels = load_image(image, size)  # type: ignore[arg-type]
    laps.lap("image_s")
    value = loaded.pixel_to_input(patch_value) if patch_space == "pixel" else patch_value
    result = hyinf.explain(
        loaded.module, loaded.normalise(pixels), target=target, patch=patch, stride=stride, patch_value=value,
        mode=mode, plan=plan, db=db_url, device=device, backend=backend, output=score, batch_size=batch_size,
        max_memory=None if max_memory is None else max_memory * 1024**3, approx_threshold=threshold, drill_down=ratio,
        coarse_stride=coarse_stride, check_exact=check_exact, progress=not quiet and sys.stderr.isatty(), registry=registry,
    )
    laps.lap("explain_s")
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "heatmap.npy", result.heatmap.numpy())
    np.save(out_dir / "attribution.npy", result.attribution.numpy())
    label = loaded.labels[result.target] if result.target < len(loaded.labels) else str(result.target)
    save_overlay(pixels, result.attribution[0], out_dir / "overlay.png", f"{loaded.description}: class {label}, patch {'x'.join(map(str, result.grid.patch))}, "
                 f"stride {'x'.join(map(str, result.grid.stride))}")
    report = {
        "hyinf_version": hyinf.__version__,
        "model": loaded.description,
        "image": str(image),
        "image_size": list(size),
        "settings": {"patch": list(result.grid.patch), "stride": list(result.grid.stride), "patch_value": patch_value,
                     "patch_space": patch_space, "output": score, "device": device, "backend": backend, "batch_size": result.batch_size},
        "target": result.target,
        "target_label": label,
        "base_score": result.base_score,
        "positions": list(result.grid.shape),
        "mode": result.mode,
        "plan_source": result.plan_source,  # given, local, registry or planned; null where the mode needs no plan
        "timings_s": result.timings,  # inside hyinf.explain: trace, verify, compile (plan, engine, sessions), positions
        "process_s": laps.times,  # this command's fixed costs around it, from process start to the last file
        "node_modes": result.node_modes,
    }
    approx = result.approximation
    if approx is not None:
        report["approximation"] = {"approx_threshold": approx.threshold, "drill_down": approx.drill_down,
                                   "coarse_stride": list(approx.coarse_stride) if approx.coarse_stride else None,
                                   "occluded_images": approx.positions, "exact_occluded_images": approx.exact_positions,
                                   "quality": approx.quality.as_dict() if approx.quality else None}
    laps.lap("write_s")
    laps.times["wall_s"] = laps.times["startup_s"] + sum(v for k, v in laps.times.items() if k != "startup_s")
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    if not quiet:
        click.echo(f"{loaded.description}: target {label} (score {result.base_score:.4g}), {len(result.grid)} positions, "
                   f"{result.mode}, {result.timings['total_s']:.2f} s -> {out_dir}/")
        if approx is not None and approx.quality is not None:
            click.echo(f"distance from exact ({result.timings['exact_s']:.2f} s): {approx.quality.summary()}")
