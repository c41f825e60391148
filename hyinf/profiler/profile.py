"""`hyinf profile`: measure this device, store the measurements, fit and store its cost model."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from hyinf.errors import SettingsError
from hyinf.graph.geometry import OcclusionGrid, position_blocks
from hyinf.kept import Kept
from hyinf.modes import BACKENDS
from hyinf.profiler.cost_model import FORMAT_VERSION, AnalyticCosts, CostModel, LearnedCosts
from hyinf.profiler.fitting import FitReport, evaluate, fit
from hyinf.profiler.machine import DeviceFingerprint, fingerprint
from hyinf.profiler.measure import measure_program
from hyinf.profiler.sample import Sample
from hyinf.profiler.sweep import run_sweep, sample_configs
from hyinf.runtime.chunking import largest_chunk
from hyinf.runtime.program import TorchProgram

if TYPE_CHECKING:  # the database's modules (SQLAlchemy, Alembic) load only where one is opened
    from hyinf.plans_db import Database
    from hyinf.plans_db.store import CostModelRef

#: (configurations, repeats) of the sweep.
QUICK = (400, 3)
FULL = (2000, 5)
STORE_EVERY = 25  # configurations per database transaction


@dataclass(frozen=True)
class ModelTarget:
    """A model's layers to time as well, at given occlusion settings."""

    name: str
    program: TorchProgram
    grid: OcclusionGrid


@dataclass(frozen=True)
class ProfileReport:
    device: DeviceFingerprint
    threads: int
    samples: int
    noisy: int
    seconds: float
    run_id: int
    cost_model_id: int
    fit: FitReport


def profile(
    db: Database,
    device: torch.device,
    *,
    quick: bool = False,
    backend: str = "torch",
    threads: int | None = None,
    models: Sequence[ModelTarget] = (),
    configs: int | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> ProfileReport:
    """Sweep (and time each model's layers) on `backend`, store everything in `db`, refit the device's
    cost model for that backend.

    The fit uses every finished run of this device and backend in the database, so repeated
    profiles accumulate measurements. `progress(done, total)` is called after each configuration.
    """
    if backend not in BACKENDS:
        raise SettingsError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "ort" and models:  # ORT fuses a model's layers across nodes: their kernel times cannot be told apart
        raise SettingsError("--model times layers on the torch backend only; profile ort without --model")
    start = time.perf_counter()
    if threads is not None:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    count, repeats = QUICK if quick else FULL
    fp = fingerprint(device)
    chosen = sample_configs(configs or count, seed, fp.kind)
    device_id = db.device_id(fp)
    settings: dict[str, object] = {"configs": len(chosen), "repeats": repeats, "seed": seed}
    settings["models"] = [
        {"name": m.name, "image_size": list(m.grid.image_size), "patch": list(m.grid.patch), "stride": list(m.grid.stride)} for m in models
    ]
    run_id = db.start_run(device_id, backend, threads, quick, settings)
    total = len(chosen) + len(models)
    measured: list[Sample] = []
    pending: list[Sample] = []
    for done, samples in enumerate(run_sweep(chosen, device, repeats, backend=backend), 1):
        pending += samples
        if done % STORE_EVERY == 0 or done == len(chosen):
            db.add_samples(run_id, pending)
            measured += pending
            pending = []
        progress(done, total)
    for done, model in enumerate(models, len(chosen) + 1):
        # The largest block of positions: the window sizes most of the grid is evaluated at.
        block = max(position_blocks(model.program.graph, model.grid), key=len)
        positions = min(largest_chunk(fp.kind), len(block))  # the calls the runtime will make
        samples = measure_program(model.program, block, positions=positions, repeats=repeats, source="model", config=f"model:{model.name}")
        db.add_samples(run_id, samples)
        measured += samples
        progress(done, total)
    db.finish_run(run_id)
    run_ids, everything = db.samples(device_id, backend)
    report = evaluate(everything, seed)
    model_id = db.save_cost_model(device_id, backend, FORMAT_VERSION, run_ids, fit(everything, seed).to_body(), report.to_json())
    noisy = sum(s.timing.noisy for s in measured)
    return ProfileReport(fp, threads, len(measured), noisy, time.perf_counter() - start, run_id, model_id, report)


def device_costs(db: Database | None, fp: DeviceFingerprint, backend: str = "torch", model_id: int | None = None,
                 fallback: bool = True) -> tuple[CostModel, dict[str, Any]]:
    """The cost model to plan with, and what it is: stored model `model_id`, else the newest fitted for this
    device and backend (with `fallback`, torch's where ort has none), else the analytic model with default
    constants, so planning always works.
    A stored model made for other features is skipped, never misread. The same stored model gives the
    same object, decoded once per process, so plans made with it can be kept (`plan_grid`)."""
    if db is not None:
        ref = db.cost_model_ref(model_id, device_key=fp.key, backend=backend)
        if model_id is not None and ref is None:
            raise SettingsError(f"the database has no cost model {model_id}; `hyinf db info` lists them")
        if ref is not None and ref.format_version == FORMAT_VERSION and (model := stored_costs(db, ref)) is not None:
            return model, {"kind": "learned", "id": ref.id}
        if model_id is not None:
            raise SettingsError(f"cost model {model_id} was made by another hyinf version; run `hyinf profile` again")
        if backend != "torch" and fallback:  # never profiled on this backend: the torch costs rank modes alike far better than defaults
            return device_costs(db, fp, "torch")
    return _default_costs(fp.kind), {"kind": "analytic", "id": None}


_DECODED: Kept[LearnedCosts] = Kept(4)


def stored_costs(db: Database, ref: CostModelRef) -> LearnedCosts | None:
    """Stored model `ref`, decoded once per process (its 600 trees' JSON take 0.1-0.15 s); None when it
    was made for other features. The creation time tells a model from one of a recreated database."""
    def decode() -> LearnedCosts:
        row = db.cost_model(ref.id)
        return LearnedCosts.from_body(row.body if row is not None else {})

    try:
        return _DECODED.get((db.url, ref.id, ref.created_at), decode)
    except (ValueError, KeyError, TypeError):
        return None


@functools.cache
def _default_costs(device_kind: str) -> AnalyticCosts:
    return AnalyticCosts.default(device_kind)
