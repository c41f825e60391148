"""Which plan a run uses: one given, else one stored for (model structure, settings, device), else one
made now with the device's cost model. The edge where planning meets the database."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hyinf.errors import PlanError, PlanWarning
from hyinf.graph.fingerprint import graph_fingerprint
from hyinf.graph.geometry import GROUPS_PER_AXIS, OcclusionGrid
from hyinf.graph.ir import Graph
from hyinf.modes import BACKENDS
from hyinf.planner.blocks import plan_grid
from hyinf.planner.candidates import WEIGHTS, candidate_plans
from hyinf.planner.document import PlanDocument, settings_key, settings_of
from hyinf.planner.plan import Plan
from hyinf.profiler.machine import DeviceFingerprint
from hyinf.profiler.profile import device_costs
from hyinf.runtime.chunking import largest_chunk

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
              strategy: str = "optimal", cost_model_id: int | None = None, backend: str = "torch",
              groups_per_axis: int = GROUPS_PER_AXIS) -> PlanDocument:
    """Plan every block of `grid` under this device's cost model for `backend` (analytic when it was never
    profiled). Backend `auto` plans for the backend `choose_backend` picks and records the choice."""
    return candidate_documents(graph, grid, device, model_name=model_name, db=db, strategy=strategy, cost_model_id=cost_model_id,
                               backend=backend, groups_per_axis=groups_per_axis, weights=(1.0,))[0][1]


def candidate_documents(graph: Graph, grid: OcclusionGrid, device: DeviceFingerprint, *, model_name: str, db: Database | None,
                        strategy: str = "optimal", cost_model_id: int | None = None, backend: str = "torch",
                        groups_per_axis: int = GROUPS_PER_AXIS, weights: Sequence[float] = WEIGHTS,
                        rival: bool = False) -> list[tuple[float, PlanDocument]]:
    """(weight, plan document) of each distinct plan of `candidate_plans` under `weights`, the cost
    model's own optimum first (`make_plan`'s plan): the plans `hyinf plan --measure` runs. With backend
    `auto` and `rival`, the other backend's optimum comes last, so measuring can overrule the choice."""
    choice = None
    backends = [backend]
    if backend == "auto":
        choice = choose_backend(graph, grid, device, db, strategy=strategy)
        backends = [choice.backend, *(b for b in BACKENDS if rival and b != choice.backend)]
    chunk = largest_chunk(device.kind)
    out = []
    for k, planned_for in enumerate(backends):
        model, info = device_costs(db, device, planned_for, cost_model_id)
        blocks = plan_grid(graph, grid, model, strategy, planned_for, chunk=chunk, groups_per_axis=groups_per_axis)
        for weight, planned in candidate_plans(graph, blocks, strategy, weights if k == 0 else (1.0,)):
            document = PlanDocument.make(graph, grid, planned, model_name=model_name, device=device, cost_model=info,
                                         strategy=strategy, backend=planned_for, chunk=chunk)
            if choice is not None:
                own = choice if k == 0 else BackendChoice(planned_for, choice.predicted_s, f"{planned_for}: the rival "
                                                          f"measured against the predicted choice ({choice.reason})")
                document = PlanDocument({**document.body, "backend_choice": own.to_json()})
            out.append((weight, document))
    return out


def choose_plan(graph: Graph, grid: OcclusionGrid, device: DeviceFingerprint, *, given: PlanDocument | None, db: Database | None,
                model_name: str = "", backend: str = "torch", fetch: Fetch | None = None,
                groups_per_axis: int = GROUPS_PER_AXIS) -> ChosenPlan:
    """The plan given, else the local database's, else the registry's (`fetch`), else one made now.
    Stored and fetched plans have the default blocks: another grouping (`groups_per_axis`) is planned now."""
    if given is not None:
        return ChosenPlan(given.bind(graph, grid, device, backend), "given plan", given, "given")
    lookup = groups_per_axis == GROUPS_PER_AXIS
    if db is not None and lookup:
        row = db.find_plan(graph_fingerprint(graph), settings_key(settings_of(grid, backend)), device.key)
        if row is not None:
            try:  # stored by an older hyinf, imported unchecked or edited in the database: never trusted as is
                document = PlanDocument.parse(json.dumps(row.body), f"stored plan {row.id}")
                return ChosenPlan(document.bind(graph, grid, device, backend), f"stored plan {row.id}", document, "local")
            except PlanError as e:
                warnings.warn(f"skipped stored plan {row.id} in {db.url}: {e} (remove it with `hyinf plans delete {row.id}`); "
                              "planning now", PlanWarning, stacklevel=2)
    if fetch is not None and lookup:
        fetched = fetch(graph_fingerprint(graph), settings_of(grid, backend), device)
        if fetched is not None:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", PlanWarning)  # a class match was made on a sibling device: said in its source
                    return ChosenPlan(fetched[0].bind(graph, grid, device, backend), fetched[1], fetched[0], "registry")
            except PlanError as e:
                warnings.warn(f"the registry's plan does not fit this run ({e}); planning now", PlanWarning, stacklevel=2)
    document = make_plan(graph, grid, device, model_name=model_name, db=db, backend=backend, groups_per_axis=groups_per_axis)
    kind = document.body["cost_model"]
    source = f"planned now ({kind['kind']} cost model{' ' + str(kind['id']) if kind['id'] else ''})"
    return ChosenPlan(document.bind(graph, grid, device, backend), source, document)


@dataclass(frozen=True)
class BackendChoice:
    """The backend an `auto` run uses, each backend's predicted seconds for one image's positions, and why."""

    backend: str
    predicted_s: dict[str, float]
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"backend": self.backend, "predicted_s": self.predicted_s, "reason": self.reason}

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> BackendChoice:
        return cls(str(body["backend"]), {str(k): float(v) for k, v in body["predicted_s"].items()}, str(body["reason"]))


def choose_backend(graph: Graph, grid: OcclusionGrid, device: DeviceFingerprint, db: Database | None,
                   alternative: str = "plan", strategy: str = "optimal") -> BackendChoice:
    """The backend whose `alternative` (its best plan, or all-incremental or all-full) its own cost model
    predicts faster for `grid`'s positions; torch where the two cannot be compared (a backend never
    profiled on this device has no costs of its own)."""
    models = {backend: device_costs(db, device, backend, fallback=False) for backend in BACKENDS}
    missing = [backend for backend, (_, info) in models.items() if info["kind"] != "learned"]
    if missing:
        commands = " and ".join("`hyinf profile" + ("" if b == "torch" else f" --backend {b}") + "`" for b in missing)
        return BackendChoice("torch", {}, f"torch: {' and '.join(missing)} never profiled on this device, so the backends "
                                          f"cannot be compared ({commands} {'measures it' if len(missing) == 1 else 'measure them'})")
    chunk = largest_chunk(device.kind)
    predicted = {backend: sum(b.predicted[alternative] for b in plan_grid(graph, grid, model, strategy, backend, chunk=chunk))
                 for backend, (model, _) in models.items()}
    best = min(predicted, key=lambda b: predicted[b])
    other = next(b for b in predicted if b != best)
    what = "best plan" if alternative == "plan" else f"{alternative} plan"
    ratio = predicted[other] / max(predicted[best], 1e-12)
    return BackendChoice(best, predicted, f"{best}: its {what} is predicted {ratio:.2f}x as fast as {other}'s "
                                          f"({predicted[best]:.2f} s against {predicted[other]:.2f} s for one image's positions)")


def stored_backend_choice(graph: Graph, grid: OcclusionGrid, device: DeviceFingerprint, db: Database | None) -> BackendChoice | None:
    """The choice `hyinf plan --backend auto` stored with its plan for this structure, settings and device."""
    if db is None:
        return None
    for backend in BACKENDS:
        row = db.find_plan(graph_fingerprint(graph), settings_key(settings_of(grid, backend)), device.key)
        if row is not None and isinstance(row.body, dict) and "backend_choice" in row.body:
            try:
                return BackendChoice.from_json(PlanDocument.parse(json.dumps(row.body), f"stored plan {row.id}").body["backend_choice"])
            except PlanError:
                continue  # choose_plan says what is wrong with it when the plan is used
    return None
