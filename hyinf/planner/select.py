"""Which plan a run uses: one given, else one stored for (model structure, settings, device), else one
made now with the device's cost model. The edge where planning meets the database."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hyinf.errors import PlanError, PlanWarning
from hyinf.graph.fingerprint import graph_fingerprint
from hyinf.graph.geometry import OcclusionGrid
from hyinf.graph.ir import Graph
from hyinf.planner.blocks import plan_grid
from hyinf.planner.document import PlanDocument, settings_key, settings_of
from hyinf.planner.plan import Plan
from hyinf.profiler.machine import DeviceFingerprint
from hyinf.profiler.profile import device_costs

if TYPE_CHECKING:
    from hyinf.plans_db import Database


@dataclass(frozen=True)
class ChosenPlan:
    blocks: list[tuple[OcclusionGrid, Plan]]
    source: str  # for reports: where the plan came from
    document: PlanDocument
    kind: str = "planned"  # given | local | registry | planned


#: (structure fingerprint, settings, device) -> (plan document, what it is) from a registry, or None.
Fetch = Callable[[str, dict[str, Any], DeviceFingerprint], "tuple[PlanDocument, str] | None"]


def make_plan(graph: Graph, grid: OcclusionGrid, device: DeviceFingerprint, *, model_name: str, db: Database | None,
              strategy: str = "optimal", cost_model_id: int | None = None, backend: str = "torch") -> PlanDocument:
    """Plan every block of `grid` under this device's cost model (analytic when it was never profiled)."""
    model, info = device_costs(db, device, backend, cost_model_id)
    blocks = plan_grid(graph, grid, model, strategy)
    return PlanDocument.make(graph, grid, blocks, model_name=model_name, device=device, cost_model=info, strategy=strategy, backend=backend)


def choose_plan(graph: Graph, grid: OcclusionGrid, device: DeviceFingerprint, *, given: PlanDocument | None, db: Database | None,
                model_name: str = "", backend: str = "torch", fetch: Fetch | None = None) -> ChosenPlan:
    """The plan given, else the local database's, else the registry's (`fetch`), else one made now."""
    if given is not None:
        return ChosenPlan(given.bind(graph, grid, device, backend), "given plan", given, "given")
    if db is not None:
        row = db.find_plan(graph_fingerprint(graph), settings_key(settings_of(grid, backend)), device.key)
        if row is not None:
            try:  # stored by an older hyinf, imported unchecked or edited in the database: never trusted as is
                document = PlanDocument.parse(json.dumps(row.body), f"stored plan {row.id}")
                return ChosenPlan(document.bind(graph, grid, device, backend), f"stored plan {row.id}", document, "local")
            except PlanError as e:
                warnings.warn(f"skipped stored plan {row.id} in {db.url}: {e} (remove it with `hyinf plans delete {row.id}`); "
                              "planning now", PlanWarning, stacklevel=2)
    if fetch is not None:
        fetched = fetch(graph_fingerprint(graph), settings_of(grid, backend), device)
        if fetched is not None:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", PlanWarning)  # a class match was made on a sibling device: said in its source
                    return ChosenPlan(fetched[0].bind(graph, grid, device, backend), fetched[1], fetched[0], "registry")
            except PlanError as e:
                warnings.warn(f"the registry's plan does not fit this run ({e}); planning now", PlanWarning, stacklevel=2)
    document = make_plan(graph, grid, device, model_name=model_name, db=db, backend=backend)
    kind = document.body["cost_model"]
    source = f"planned now ({kind['kind']} cost model{' ' + str(kind['id']) if kind['id'] else ''})"
    return ChosenPlan(document.bind(graph, grid, device, backend), source, document)
