"""Plan search and lookup as a service: plans made on the server from a model's structure (no
weights), and graded matching of a machine to the plans stored for other machines."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from hyinf.canonical import digest
from hyinf.errors import HyinfError, PlanError
from hyinf.graph.fingerprint import graph_fingerprint
from hyinf.graph.geometry import OcclusionGrid
from hyinf.graph.ir import Graph
from hyinf.planner.blocks import plan_grid
from hyinf.planner.document import PlanDocument, settings_key, settings_of
from hyinf.plans_db import catalog
from hyinf.plans_db.schema import Device, PlanRow
from hyinf.plans_db.store import CostModelRef, Database, Provenance
from hyinf.profiler.cost_model import FORMAT_VERSION, AnalyticCosts, CostModel
from hyinf.profiler.machine import DeviceFingerprint
from hyinf.profiler.profile import stored_costs
from hyinf.runtime.chunking import largest_chunk

VERSION_FIELDS = ("cores", "driver", "torch_version", "onnxruntime_version")  # what may differ within a device class


class NotFound(HyinfError):
    """What was asked for is not there; the message says what differed."""

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details = details or {}


def fingerprint_of(row: Device) -> DeviceFingerprint:
    return DeviceFingerprint(row.kind, row.name, row.cores, row.driver, row.torch_version, row.onnxruntime_version)


def grid_of(settings: dict[str, Any]) -> OcclusionGrid:
    try:
        return OcclusionGrid.make(tuple(settings["image_size"]), tuple(settings["patch"]), tuple(settings["stride"]),
                                  settings.get("approx_threshold") or 1.0)
    except HyinfError as e:
        raise PlanError(f"the settings are impossible: {e}") from None


def _costs(db: Database, device_class: str, kind: str, backend: str) -> tuple[CostModel, dict[str, Any], int | None]:
    """The newest cost model of the class for the backend (else the class's torch model, whose costs
    rank modes alike), else the analytic model: (model, what it is, its id)."""
    for wanted in dict.fromkeys((backend, "torch")):
        row = catalog.newest_cost_model(db, device_class, wanted)
        if row is not None and row.format_version == FORMAT_VERSION:
            model = stored_costs(db, CostModelRef(row.id, row.format_version, row.created_at))
            if model is not None:
                return model, {"kind": "learned", "id": row.id}, row.id
    return AnalyticCosts.default(kind), {"kind": "analytic", "id": None}, None


@dataclass(frozen=True)
class Found:
    plan: PlanRow
    device: Device
    created: bool


def search(db: Database, graph: Graph, settings: dict[str, Any], device: DeviceFingerprint | None, device_class: str | None,
           strategy: str, publisher: str) -> Found:
    """The optimal plan for the structure, settings and device under the class's newest cost model:
    the stored one where the same (structure, settings, device class, cost model) was searched before."""
    if device is None:
        members = [d for d in catalog.devices(db) if d.device_class == device_class]
        if not members:
            raise NotFound(f"no device of class {device_class!r} is known here; search with a device fingerprint",
                           {"known_classes": sorted({d.device_class for d in catalog.devices(db)})[:20]})
        device = fingerprint_of(members[-1])
    grid = grid_of(settings)
    backend = settings.get("backend", "torch")
    model, info, model_id = _costs(db, device.device_class, device.kind, backend)
    fingerprint, key = graph_fingerprint(graph), settings_key(settings_of(grid, backend))
    for row, dev in catalog.plans(db, fingerprint=fingerprint, settings_key=key, device_class=device.device_class):
        if row.cost_model_id == model_id and row.body.get("strategy") == strategy:
            return Found(row, dev, False)
    chunk = largest_chunk(device.kind)
    blocks = plan_grid(graph, grid, model, strategy, backend, chunk=chunk)
    document = PlanDocument.make(graph, grid, blocks, model_name="", device=device, cost_model=info, strategy=strategy,
                                 backend=backend, chunk=chunk)
    plan_id, created = db.publish_plan(fingerprint, key, device, model_id, dict(document.body), Provenance(publisher=publisher))
    found = catalog.plan(db, plan_id)
    assert found is not None
    return Found(found[0], found[1], created)


def match(db: Database, fingerprint: str, settings: dict[str, Any], device: DeviceFingerprint) -> tuple[str, list[str], PlanRow, Device]:
    """The plan for this structure, settings and device: an exact device match first, then one of
    the same class (with the device fields that differ). NotFound names the closest candidates."""
    key = settings_key(settings_of(grid_of(settings), settings.get("backend", "torch")))
    exact = catalog.plans(db, fingerprint=fingerprint, settings_key=key, device_key=device.key)
    if exact:
        return "exact", [], *exact[0]
    same_class = catalog.plans(db, fingerprint=fingerprint, settings_key=key, device_class=device.device_class)
    if same_class:
        row, dev = same_class[0]
        theirs = fingerprint_of(dev)
        return "class", [f for f in VERSION_FIELDS if getattr(theirs, f) != getattr(device, f)], row, dev
    wanted = {"structure": fingerprint, "settings": key, "device class": device.device_class}
    scored = []
    for row, dev in catalog.plans(db):
        differs = [part for part, value in (("structure", row.model_fingerprint), ("settings", row.settings_key),
                                            ("device class", dev.device_class)) if value != wanted[part]]
        scored.append((len(differs), -row.id, differs, row.id))
    closest = [{"id": plan_id, "differs": differs} for _, _, differs, plan_id in sorted(scored)[:3]]
    parts = sorted({d for c in closest for d in c["differs"]}) if closest else ["structure", "settings", "device class"]
    raise NotFound(f"no plan for this structure, settings and device class; the nearest stored plans differ in {', '.join(parts)}",
                   {"wanted": {**wanted, "device": device.key}, "closest": closest})


def check_fits(document: PlanDocument, graph: Graph) -> None:
    """A published plan against the model structure it came with: PlanError unless it was made for it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # another device or backend: for whoever runs it, not for the server
        document.bind(graph, document.grid(), document.device, document.settings.get("backend", "torch"))


def document_digest(document: PlanDocument) -> str:
    return digest(dict(document.body))

