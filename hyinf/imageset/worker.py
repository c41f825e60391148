"""One model explaining image files: what `hyinf explain` runs in its own process and each Ray actor
holds, loading the model and fetching the plan once. Its settings are plain data, so nothing sent to
an actor executes code where it is read."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import hyinf
from hyinf.errors import HyinfError
from hyinf.imageset.index import RESULT_FILES, Row, write_atomic
from hyinf.imageset.inputs import Item
from hyinf.paths import check_readable_file

if TYPE_CHECKING:
    import torch

    from hyinf.explain import Explanation
    from hyinf.models import LoadedModel

#: Explainer settings whose change changes the numbers (device, backend, chunk sizes, plans and exact
#: modes do not: every exact mode equals naive re-inference).
RESULT_SETTINGS = ("patch", "stride", "output", "approx_threshold", "drill_down", "coarse_stride", "target_ssim", "precision")


@dataclass(frozen=True)
class JobSpec:
    """A model as the command line names it, how images are prepared for it, and the Explainer's settings."""

    model: str
    weights: str | None = None
    image_size: tuple[int, int] | None = None
    normalize: bool = True
    patch_value: float = 0.0
    patch_space: str = "pixel"  # pixel: an intensity in [0, 1]; input: a model-input value
    plan_file: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # hyinf.Explainer's keyword arguments

    def results_key(self, model_sha256: str | None) -> dict[str, Any]:
        """What the results depend on, as JSON values: recorded in hyinf-run.json and every report."""
        chosen = {k: list(v) if isinstance(v, tuple) else v for k, v in self.settings.items() if k in RESULT_SETTINGS}
        return {"model": self.model, "model_sha256": model_sha256, "image_size": list(self.image_size) if self.image_size else None,
                "normalize": self.normalize, "patch_value": self.patch_value, "patch_space": self.patch_space, **chosen}


def file_sha256(path: Path) -> str:
    """The file's digest; a pipe or device is refused, not read (it could block or never end)."""
    check_readable_file(path, "image")
    sha = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def one_line(error: BaseException) -> str:
    """A failure as the one line index.csv records: hyinf's own message, or the exception's first line."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return text if isinstance(error, HyinfError) else f"{type(error).__name__}: {text}".rstrip(": ")


class Worker:
    """The model loaded once, its Explainer, and the writing of each image's four result files."""

    def __init__(self, spec: JobSpec, run: str = "") -> None:
        from hyinf.explainer import Explainer
        from hyinf.models import load_model

        self.spec, self.run = spec, run  # run: the digest of the results key, recorded in every report
        loaded = load_model(spec.model, Path(spec.weights) if spec.weights else None, spec.image_size)
        if not spec.normalize:
            loaded = replace(loaded, mean=(0.0,) * len(loaded.mean), std=(1.0,) * len(loaded.std))
        self.loaded: LoadedModel = loaded
        self.size = tuple(spec.image_size) if spec.image_size else loaded.image_size
        plan = None
        if spec.plan_file is not None:
            plan = hyinf.PlanDocument.parse(Path(spec.plan_file).read_bytes(), spec.plan_file)
        value = loaded.pixel_to_input(spec.patch_value) if spec.patch_space == "pixel" else spec.patch_value
        self.explainer = Explainer(loaded.module, patch_value=value, plan=plan, **spec.settings)
        from hyinf.viz import Overlays

        self.overlays = Overlays()

    def label(self, target: int) -> str:
        return self.loaded.labels[target] if target < len(self.loaded.labels) else str(target)

    def pixels(self, path: Path) -> torch.Tensor:
        from hyinf.images import load_image

        return load_image(path, self.size)  # type: ignore[arg-type]

    def run_items(self, work: Sequence[tuple[Item, int | None]], out: Path) -> list[Row]:
        """Explain and write each image under `out`, image failures recorded, not raised. Images that load
        share `explain_batch`; if that fails, each is explained alone so one image fails only itself."""
        start = time.perf_counter()
        rows: dict[str, Row] = {}
        loaded: list[tuple[Item, int | None, str, torch.Tensor]] = []
        for item, target in work:
            try:
                sha = file_sha256(item.path)
                loaded.append((item, target, sha, self.pixels(item.path)))
            except (HyinfError, OSError) as e:
                rows[item.name] = Row(item.name, "failed", target, error=one_line(e))
        try:
            results: list[Explanation | BaseException] = list(self.explainer.explain_batch(
                [self.loaded.normalise(p) for *_, p in loaded], [t for _, t, *_ in loaded]))
        except Exception:  # noqa: BLE001  which image failed is found by explaining each alone
            results = [self._alone(p, t) for _, t, _, p in loaded]
        for (item, target, sha, pixels), result in zip(loaded, results, strict=True):
            if isinstance(result, BaseException):
                rows[item.name] = Row(item.name, "failed", target, error=one_line(result), sha256=sha)
                continue
            try:
                self.write(out / item.name, item, sha, target, pixels, result)
            except OSError as e:
                rows[item.name] = Row(item.name, "failed", target, error=one_line(e), sha256=sha)
                continue
            rows[item.name] = Row(item.name, "ok", result.target, self.label(result.target), result.base_score, 0.0, "", sha)
        each = (time.perf_counter() - start) / max(1, len(work))  # the group's wall time, shared equally
        return [replace(rows[item.name], seconds=each) for item, _ in work]

    def _alone(self, pixels: torch.Tensor, target: int | None) -> Explanation | BaseException:
        try:
            return self.explainer.explain(self.loaded.normalise(pixels), target)
        except Exception as e:  # noqa: BLE001  recorded in the index; the job goes on
            return e

    def write(self, folder: Path, item: Item, sha: str, target: int | None, pixels: torch.Tensor, result: Explanation,
              extra: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
        """The four result files of one image; report.json last, so its presence means the rest are whole."""
        folder.mkdir(parents=True, exist_ok=True)
        for name in RESULT_FILES:
            if (folder / name).is_dir():
                raise IsADirectoryError(21, "is a directory; give another --out", str(folder / name))
        np.save(folder / "heatmap.npy", result.heatmap.numpy())
        np.save(folder / "attribution.npy", result.attribution.numpy())
        label = self.label(result.target)
        grid = result.grid
        self.overlays.save(pixels, result.attribution[0], folder / "overlay.png", f"{self.loaded.description}: class {label}, "
                     f"patch {'x'.join(map(str, grid.patch))}, stride {'x'.join(map(str, grid.stride))}")
        report = self.report(item, sha, target, result)
        report.update(extra() if extra else {})  # called last: the caller may time the writing
        write_atomic(folder / "report.json", json.dumps(report, indent=2))
        return report

    def report(self, item: Item, sha: str, target: int | None, result: Explanation) -> dict[str, Any]:
        s = self.explainer
        report: dict[str, Any] = {
            "hyinf_version": hyinf.__version__,
            "model": self.loaded.description,
            "image": str(item.path),
            "name": item.name,
            "image_sha256": sha,
            "image_size": list(self.size),
            "settings": {"patch": list(result.grid.patch), "stride": list(result.grid.stride), "patch_value": self.spec.patch_value,
                         "patch_space": self.spec.patch_space, "output": s.output, "device": str(s.device), "backend": result.backend,
                         "precision": result.precision, "batch_size": result.batch_size},
            "target_given": target,
            "target": result.target,
            "target_label": self.label(result.target),
            "base_score": result.base_score,
            "positions": list(result.grid.shape),
            "mode": result.mode,
            "plan_source": result.plan_source,  # given, local, registry or planned; null where the mode needs no plan
            "timings_s": result.timings,  # inside the Explainer: choose (auto's backend), trace, verify, compile, positions
            "node_modes": result.node_modes,
            "run": self.run,
        }
        if result.backend_reason is not None:  # backend auto: why this one
            report["backend_choice"] = {"asked": s.backend, "reason": result.backend_reason}
        if result.precision_distance is not None:  # tf32: the clean outputs' largest difference from float32, relative
            report["precision_distance"] = result.precision_distance
        if result.calibration is not None:  # the target, the settings it chose, and their worst calibration quality
            report["calibration"] = result.calibration.to_json()
        approx = result.approximation
        if approx is not None:
            report["approximation"] = {"approx_threshold": approx.threshold, "drill_down": approx.drill_down,
                                       "coarse_stride": list(approx.coarse_stride) if approx.coarse_stride else None,
                                       "occluded_images": approx.positions, "exact_occluded_images": approx.exact_positions,
                                       "quality": approx.quality.as_dict() if approx.quality else None}
        return report
