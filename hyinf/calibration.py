"""Calibrating approximate settings for a quality target (`hyinf plan --target-ssim`), and finding a
stored calibration for a run (`hyinf explain --target-ssim`).

On each calibration image: the exact heatmap, and one run at every projective-field threshold over
every position. A drill-down at that threshold is then replayed without running it again: its coarse
positions are fine ones (or one coarse run where they are not), and each position's score does not
depend on which others are evaluated. Each candidate's time is predicted from those runs (fixed costs,
and seconds per evaluated position). A candidate qualifies when its quality predicted for a new image
(`lower_bound`: the calibration images' spread, not only their worst) keeps the target; the fastest
predicted few are run for real against exact evaluation, and the measured fastest is chosen.
"""

from __future__ import annotations

import gc
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from hyinf import drilldown
from hyinf.errors import SettingsError
from hyinf.graph.fingerprint import graph_fingerprint
from hyinf.graph.geometry import OcclusionGrid
from hyinf.planner.document import PlanDocument, settings_of
from hyinf.planner.quality_target import (
    EXACT,
    MIN_IMAGES,
    Calibration,
    Candidate,
    Trial,
    candidates,
    check_target,
    lower_bound,
    ranked,
)
from hyinf.profiler.machine import DeviceFingerprint
from hyinf.quality import compare

if TYPE_CHECKING:
    from hyinf.explain import Explanation
    from hyinf.explainer import Explainer
    from hyinf.plans_db import Database


def _cost(result: Explanation) -> tuple[float, float]:
    """(fixed seconds, seconds per evaluated position) of a run."""
    positions = result.approximation.positions if result.approximation else len(result.grid)
    per = result.timings["positions_s"] / max(1, positions)
    return result.timings["total_s"] - result.timings["positions_s"], per


def _replays(fine: Explanation, coarse: Explanation | None, candidate: Candidate, grid: OcclusionGrid,
             exact: torch.Tensor) -> tuple[float, float, float]:
    """(SSIM, top agreement, predicted seconds) of `candidate` on one image, from its threshold's runs."""
    fixed, per = _cost(fine)
    if candidate.drill_down == 1:
        quality = compare(fine.heatmap, exact)
        return quality.ssim, quality.top_agreement, fixed + per * len(grid)
    coarse_grid = grid.with_stride(candidate.coarse_stride(grid.stride))  # type: ignore[arg-type]
    shared = drilldown.shared(grid, coarse_grid)
    scores = fine.scores.reshape(-1)
    coarse_scores = scores[torch.as_tensor(shared)] if coarse is None else coarse.scores.reshape(-1)
    chosen = drilldown.selected(fine.base_score - coarse_scores, grid, coarse_grid, candidate.drill_down) & ~shared
    only = torch.as_tensor(chosen)
    combined = drilldown.combine(torch.where(only, scores, torch.full_like(scores, math.nan)), only, coarse_scores, grid, coarse_grid)
    quality = compare(fine.base_score - combined.reshape(grid.shape), exact)
    if coarse is None:  # the coarse positions are fine ones: the fine engine evaluates both passes
        seconds = fixed + per * (len(coarse_grid) + int(chosen.sum()))
    else:  # the coarse grid's own engine is prepared (its plan and clean pass) and run
        seconds = fixed + coarse.timings["compile_s"] + coarse.timings["positions_s"] + per * int(chosen.sum())
    return quality.ssim, quality.top_agreement, seconds


#: Candidates run for real, fastest predicted first (and the fastest threshold without drill-down):
#: predictions miss the smaller chunks of a drill-down's fine positions, so the measured fastest is chosen.
CONFIRMED = 3


@dataclass(frozen=True)
class Measured:
    """Every candidate replayed on the calibration images (`trials`), and the exact heatmaps they are
    judged against: what any target's choice is made from."""

    references: list[Explanation]
    trials: list[Trial]


def measure(explainer: Callable[..., Explainer], images: Sequence[torch.Tensor], progress: bool = False) -> Measured:
    """The exact heatmap of each image and every candidate's quality and predicted time on it.
    `explainer(**approximate settings)` makes an Explainer of the model and exact settings being
    calibrated; images are model inputs of one size."""
    if len(images) < MIN_IMAGES:
        raise SettingsError(f"calibrating needs at least {MIN_IMAGES} images (got {len(images)}): a new image's quality is "
                            "predicted from how much theirs differ")
    found = candidates()
    thresholds = sorted({c.threshold for c in found}, reverse=True)
    exact = explainer()
    rows: dict[Candidate, list[tuple[float, float, float]]] = {c: [] for c in found}
    with tqdm(total=len(images) * (1 + len(thresholds)), desc="calibrating", unit="run", disable=not progress) as bar:
        references = []
        for image in images:
            references.append(exact.explain(image))
            bar.update()
        # Threshold by threshold, so only its Explainers are alive: each holds its programs and engines
        # (0.5-1 GB for vgg16), and all of them at once did not fit a 24 GiB machine.
        for threshold in thresholds:
            fine_runner = explainer(approx_threshold=threshold) if threshold < 1 else exact
            coarse_runners: dict[int, Explainer] = {}  # coarse passes on grids that are not fine positions
            for image, reference in zip(images, references, strict=True):
                fine = fine_runner.explain(image, reference.target)
                bar.update()
                coarse_runs: dict[int, Explanation | None] = {}
                for candidate in (c for c in found if c.threshold == threshold):
                    multiple = candidate.coarse_multiple
                    if candidate.drill_down < 1 and multiple not in coarse_runs:
                        coarse_grid = fine.grid.with_stride(candidate.coarse_stride(reference.grid.stride))  # type: ignore[arg-type]
                        if drilldown.nested(fine.grid, coarse_grid):
                            coarse_runs[multiple] = None
                        else:
                            if multiple not in coarse_runners:
                                coarse_runners[multiple] = explainer(approx_threshold=threshold, stride=coarse_grid.stride)
                            coarse_runs[multiple] = coarse_runners[multiple].explain(image, reference.target)
                    rows[candidate].append(_replays(fine, coarse_runs.get(multiple), candidate, fine.grid, reference.heatmap))
            del fine_runner, coarse_runners
            _free_dropped()
    trials = [Trial(c, tuple(r[0] for r in v), tuple(r[1] for r in v), sum(r[2] for r in v) / len(v)) for c, v in rows.items()]
    return Measured(references, trials)


def _free_dropped() -> None:
    """Free the Explainers dropped so far now: a traced program is a reference cycle (torch.fx's module and
    graph refer to each other), so its copy of the weights waits for a full collection, which the
    interpreter starts by object counts, not by bytes."""
    gc.collect()


def _settings(candidate: Candidate, stride: tuple[int, int]) -> dict[str, Any]:
    return {"approx_threshold": candidate.threshold, "drill_down": candidate.drill_down, "coarse_stride": candidate.coarse_stride(stride)}


def settle(explainer: Callable[..., Explainer], images: Sequence[torch.Tensor], measured: Measured, fingerprints: Sequence[str],
           target_ssim: float, top_agreement: float | None = None, progress: bool = False) -> Calibration:
    """The fastest settings predicted to keep the targets on a new image: the `CONFIRMED` fastest
    predicted candidates (and the fastest threshold alone) and exact evaluation are timed on the images, interleaved (each Explainer
    warmed up first), and the measured fastest is chosen: exact where no candidate beats it."""
    check_target(target_ssim, "the target SSIM")
    if top_agreement is not None:
        check_target(top_agreement, "the target top-region agreement")
    meeting = ranked(measured.trials, target_ssim, top_agreement)
    _free_dropped()  # an earlier target's runners
    contenders = [t.candidate for t in meeting[:CONFIRMED]]
    # A threshold alone is timed by its own run, not predicted: the fastest of those is always confirmed.
    contenders += [t.candidate for t in meeting if t.candidate.drill_down == 1 and t.candidate not in contenders][:1]
    stride = measured.references[0].grid.stride
    runners = {c: explainer(**_settings(c, stride)) for c in [EXACT, *contenders]}
    seconds: dict[Candidate, float] = dict.fromkeys(runners, 0.0)
    results: dict[Candidate, list[Explanation]] = {c: [] for c in runners}
    with tqdm(total=len(runners) * (1 + len(images)), desc="confirming", unit="run", disable=not progress) as bar:
        for runner in runners.values():  # first-call costs (tracing, planning) out of the comparison
            runner.explain(images[0], measured.references[0].target)
            bar.update()
        for image, reference in zip(images, measured.references, strict=True):
            for candidate, runner in runners.items():
                begin = time.perf_counter()
                results[candidate].append(runner.explain(image, reference.target))
                seconds[candidate] += time.perf_counter() - begin
                bar.update()
    winner = min(runners, key=lambda c: seconds[c])
    qualities = [compare(r.heatmap, ref.heatmap) for r, ref in zip(results[winner], measured.references, strict=True)]
    ssim, top = [q.ssim for q in qualities], [q.top_agreement for q in qualities]
    coarse = winner.coarse_stride(stride)
    return Calibration(
        target_ssim=target_ssim, top_agreement=top_agreement, approx_threshold=winner.threshold, drill_down=winner.drill_down,
        coarse_stride=list(coarse) if coarse else None, ssim_min=min(ssim), ssim_mean=statistics.fmean(ssim), top_min=min(top),
        top_mean=statistics.fmean(top), speedup=seconds[EXACT] / seconds[winner], candidates=len(measured.trials), images=len(images),
        fingerprints=list(fingerprints), ssim_bound=lower_bound(ssim), top_bound=lower_bound(top),
    )


def calibrate(explainer: Callable[..., Explainer], images: Sequence[torch.Tensor], fingerprints: Sequence[str], target_ssim: float,
              top_agreement: float | None = None, progress: bool = False) -> Calibration:
    """The fastest settings predicted to keep the targets on a new image, confirmed by running them
    (`measure`, then `settle`)."""
    check_target(target_ssim, "the target SSIM")
    if top_agreement is not None:
        check_target(top_agreement, "the target top-region agreement")
    return settle(explainer, images, measure(explainer, images, progress), fingerprints, target_ssim, top_agreement, progress)


def pixels_sha256(image: torch.Tensor) -> str:
    """The fingerprint of a calibration image: its pixels as explained (float32, C-contiguous)."""
    import hashlib

    return hashlib.sha256(image.detach().to(torch.float32).cpu().contiguous().numpy().tobytes()).hexdigest()


def find_calibrated(db: Database | None, program_graph: Any, grid: OcclusionGrid, device: DeviceFingerprint, backend: str,
                    target_ssim: float) -> PlanDocument:
    """The stored plan calibrated for this model structure, settings and device class whose target is
    at least as strict as `target_ssim` (the fastest of those); else one line saying what to run."""
    fix = (f"calibrate one with `hyinf plan MODEL --target-ssim {target_ssim:g} --calibration-images DIR` "
           f"(patch {'x'.join(map(str, grid.patch))}, stride {'x'.join(map(str, grid.stride))})")
    if db is None:
        raise SettingsError(f"--target-ssim needs a calibrated plan and there is no plans database; {fix}")
    wanted = settings_of(grid, backend)
    found: list[PlanDocument] = []
    for body in db.plan_bodies(graph_fingerprint(program_graph), device.device_class):
        try:
            document = PlanDocument.parse(json.dumps(body), "a stored plan")
        except Exception:  # noqa: BLE001  an invalid stored plan is not a candidate; `hyinf plans list` shows it
            continue
        calibration = document.calibration
        if calibration is None:
            continue
        base = {k: v for k, v in document.settings.items() if k not in ("approx_threshold", "target_ssim")}
        if {**base, "backend": backend} == wanted:
            found.append(document)
    strict = [d for d in found if d.calibration.target_ssim >= target_ssim]  # type: ignore[union-attr]
    if strict:
        return max(strict, key=lambda d: d.calibration.speedup)  # type: ignore[union-attr]
    if found:
        laxest = max(d.calibration.target_ssim for d in found)  # type: ignore[union-attr]
        raise SettingsError(f"the stored calibrations of this model reach SSIM {laxest:g} at most, laxer than the {target_ssim:g} "
                            f"asked for; {fix}")
    raise SettingsError(f"no calibrated plan is stored for this model, these settings and this device class; {fix}")

