"""Cost models fitted on the server, from every run uploaded for a device class and backend."""

from __future__ import annotations

from typing import Any

from hyinf.plans_db import catalog
from hyinf.plans_db.store import Database, Provenance
from hyinf.profiler.cost_model import FORMAT_VERSION
from hyinf.profiler.fitting import evaluate, fit
from hyinf.service.search import NotFound, fingerprint_of

MIN_SAMPLES = 50  # fewer cannot be held out and fitted both


def fit_class(db: Database, device_class: str, backend: str, publisher: str) -> tuple[int, bool, dict[str, Any]]:
    """(id, whether new, body) of the cost model fitted to every finished run of the class and backend,
    with its held-out error as metrics and the runs as lineage. The same runs give the same model."""
    run_ids, samples = db.class_samples(device_class, backend)
    if len(samples) < MIN_SAMPLES:
        raise NotFound(f"{len(samples)} measurements of {device_class!r} on {backend} are uploaded; fitting needs {MIN_SAMPLES} "
                       "(upload runs with `hyinf profile --publish`)", {"runs": run_ids})
    members = [d for d in catalog.devices(db) if d.device_class == device_class]
    body = fit(samples).to_body()
    metrics = evaluate(samples).to_json()
    model_id, created = db.publish_cost_model(db.device_id(fingerprint_of(members[-1])), backend, FORMAT_VERSION, run_ids, body,
                                              metrics, Provenance(publisher=publisher))
    return model_id, created, body
