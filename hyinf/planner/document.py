"""Plans as portable, versioned JSON documents.

A document says what it was made for (the model's structural fingerprint, the occlusion settings,
the device and the cost model), what it decides (a mode per node for every block of positions) and
why (predicted costs of the plan and of the alternatives, each node's changed window). Loading
checks all of it: nothing in a plan is executed, and a plan is never applied to a model or
settings it was not made for.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from hyinf import __version__
from hyinf.errors import HyinfError, PlanError, PlanWarning
from hyinf.graph.fingerprint import graph_fingerprint
from hyinf.graph.geometry import Change, OcclusionGrid, changed_regions
from hyinf.graph.ir import Graph
from hyinf.modes import BACKENDS
from hyinf.planner.blocks import BlockPlan
from hyinf.planner.plan import Mode, Plan
from hyinf.planner.quality_target import Calibration
from hyinf.profiler.machine import DeviceFingerprint

FORMAT = "hyinf-plan"
#: 2 added the optional "calibration" (hyinf/planner/quality_target.py) and settings.target_ssim beside it;
#: 3 added the calibration's predicted worst quality for a new image (ssim_bound, top_bound) and "chunk",
#: the positions per call a plan's costs were predicted for (absent in older plans: 32).
SCHEMA_VERSION = 3
READS = (1, 2, 3)  # older documents are read as the current version: what they lack is absent or null
FIX = "make a new one with `hyinf plan`"
MAX_BYTES = 64 * 2**20  # plans take kilobytes: this bounds what a crafted file can cost
MAX_ROUNDS = 50  # rounds of `hyinf plan --measure`


def settings_of(grid: OcclusionGrid, backend: str = "torch") -> dict[str, Any]:
    settings = {"image_size": list(grid.image_size), "patch": list(grid.patch), "stride": list(grid.stride), "backend": backend}
    if grid.threshold < 1:  # only approximate plans carry it, so exact plans keep their keys
        settings["approx_threshold"] = grid.threshold
    return settings


def settings_key(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(dict(settings), sort_keys=True).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class PlanDocument:
    body: Mapping[str, Any]  # the validated JSON document

    @property
    def model_fingerprint(self) -> str:
        return str(self.body["model"]["fingerprint"])

    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.body["settings"])

    @property
    def device(self) -> DeviceFingerprint:
        return DeviceFingerprint(**{k: self.body["device"][k] for k in DeviceFingerprint.__dataclass_fields__})

    def to_json(self) -> str:
        return json.dumps(self.body, indent=1)

    @classmethod
    def make(cls, graph: Graph, grid: OcclusionGrid, blocks: list[BlockPlan], *, model_name: str, device: DeviceFingerprint,
             cost_model: dict[str, Any], strategy: str, backend: str = "torch", chunk: int) -> PlanDocument:
        """`chunk`: the positions per call the costs were predicted for (the device's runtime chunk)."""
        regions = changed_regions(graph, grid)
        totals = {k: sum(b.predicted[k] for b in blocks) for k in blocks[0].predicted}
        votes: dict[str, float] = {}
        for b in blocks:
            for name in b.costs.nodes:
                if b.costs.choosable(name) and b.plan.mode(name) is Mode.INCREMENTAL:
                    votes[name] = votes.get(name, 0) + len(b.block)
        nodes = []
        for n in graph.nodes:
            r = regions[n.name]
            nodes.append({
                "name": n.name, "op": n.op.value, "fn": n.fn, "label": n.label, "change": r.change.value,
                "map": list(n.spatial_size) if n.spatial is not None else None,
                "window": [r.rows.size, r.cols.size] if r.change is Change.LOCAL and r.rows is not None and r.cols is not None else None,
                "mode": "unchanged" if r.change is Change.UNCHANGED else ("incremental" if votes.get(n.name, 0) * 2 > len(grid) else "full"),
            })
        body = {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "hyinf_version": __version__,
            "model": {"fingerprint": graph_fingerprint(graph), "name": model_name, "nodes": len(graph.nodes), "input_shape": list(graph.input_node.shape)},
            "settings": settings_of(grid, backend),
            "device": {**asdict(device), "key": device.key},
            "cost_model": cost_model,
            "strategy": strategy,
            "predicted_s": totals,
            "chunk": chunk,
            "blocks": [
                {"rows": list(b.block.rows or ()), "cols": list(b.block.cols or ()), "positions": len(b.block),
                 "modes": {k: v.value for k, v in b.plan.modes.items()}, "predicted_s": b.predicted, "node_costs": _node_costs(graph, b)}
                for b in blocks
            ],
            "nodes": nodes,
        }
        return cls(body)

    @classmethod
    def parse(cls, text: str | bytes, source: str = "plan") -> PlanDocument:
        """Validate a document's form (not yet against a model): one clear PlanError for anything wrong."""
        if len(text) > MAX_BYTES:
            raise PlanError(f"{source} is {len(text) / 2**20:.0f} MiB, more than a plan's {MAX_BYTES // 2**20} MiB; {FIX}")
        try:
            body = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise PlanError(f"{source} is not JSON ({e}); {FIX}") from None
        except RecursionError:
            raise PlanError(f"{source} is nested too deeply to be a plan; {FIX}") from None
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise PlanError(f"{source} is not a hyinf plan (no \"format\": \"{FORMAT}\"); {FIX}")
        version = body.get("schema_version")
        if isinstance(version, bool) or version not in READS:
            raise PlanError(f"{source} has plan schema version {version!r}; this hyinf {__version__} reads versions "
                            f"{', '.join(map(str, READS))}; {FIX}")
        try:
            body = _upgrade(body)
            _check_shape(body)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise PlanError(f"{source} is malformed ({type(e).__name__}: {e}); {FIX}") from None
        document = cls(body)
        document.blocks(document.grid())  # they cover the grid of their own settings exactly once
        return document

    @property
    def calibration(self) -> Calibration | None:
        """The quality target this plan was calibrated for, with its approximate settings and evidence (None: exact)."""
        found = self.body.get("calibration")
        return None if found is None else Calibration.from_json(found)

    def calibrated(self, calibration: Calibration) -> PlanDocument:
        """This plan (made for the calibration's threshold) with the calibration it was chosen by."""
        settings = {**self.settings, "target_ssim": calibration.target_ssim}
        return PlanDocument({**self.body, "settings": settings, "calibration": calibration.to_json()})

    def measured(self, record: dict[str, Any]) -> PlanDocument:
        """This plan with the measurements it was chosen by (`hyinf.plan_measure`)."""
        _check_measured(record)
        return PlanDocument({**self.body, "measured": record})

    def grid(self) -> OcclusionGrid:
        """The occlusion grid the plan's settings describe."""
        s = self.settings
        try:
            return OcclusionGrid.make(tuple(s["image_size"]), tuple(s["patch"]), tuple(s["stride"]), s.get("approx_threshold", 1.0))
        except HyinfError as e:
            raise PlanError(f"the plan's settings are impossible ({e}); {FIX}") from None

    def blocks(self, grid: OcclusionGrid) -> list[tuple[OcclusionGrid, Plan]]:
        """The plan's (block, plan) pairs on `grid`, after checking they cover each of its positions once."""
        rows, cols = grid.shape
        covered: list[int] = []
        pairs = []
        for b in self.body["blocks"]:
            if not all(0 <= r < rows for r in b["rows"]) or not all(0 <= c < cols for c in b["cols"]):
                raise PlanError(f"the plan's blocks do not fit this model and grid; {FIX}")
            block = grid.block(sorted(b["rows"]), sorted(b["cols"]))
            covered += block.positions().tolist()
            pairs.append((block, Plan(b["modes"], Mode.FULL, strategy=self.body["strategy"])))
        if sorted(covered) != list(range(len(grid))):
            raise PlanError(f"the plan's blocks do not cover every position exactly once; {FIX}")
        return pairs

    def bind(self, graph: Graph, grid: OcclusionGrid, device: DeviceFingerprint, backend: str = "torch") -> list[tuple[OcclusionGrid, Plan]]:
        """The (block, plan) pairs to run, after checking the plan was made for this model and these settings."""
        found = graph_fingerprint(graph)
        if self.model_fingerprint != found:
            raise PlanError(f"the plan was made for another model ({self.body['model'].get('name', '?')}, structure "
                            f"{self.model_fingerprint[:12]}; this model's is {found[:12]}); {FIX} for this model")
        wanted = settings_of(grid, backend)
        own = {k: v for k, v in self.settings.items() if k != "target_ssim"}  # a calibrated plan's modes fit its grid alike
        if {**own, "backend": backend} != wanted:
            raise PlanError(f"the plan was made for {_describe(self.settings)} but this run uses {_describe(wanted)}; {FIX} for these settings")
        if self.settings.get("backend") != backend:  # every plan is exact on every backend; only its costs were another's
            warnings.warn(f"the plan was made for backend {self.settings.get('backend')}, not {backend}; it is exact but may be "
                          f"slower here: run `hyinf plan --backend {backend}`", PlanWarning, stacklevel=2)
        if self.device.key != device.key:
            warnings.warn(f"the plan was made for {self.device.description}, not this machine ({device.description}); "
                          "it is exact but may be slower here: run `hyinf plan` on this machine", PlanWarning, stacklevel=2)
        unknown = sorted({name for b in self.body["blocks"] for name in b["modes"]} - set(graph.by_name))
        if unknown:
            raise PlanError(f"the plan names nodes this model does not have ({', '.join(unknown[:3])}); {FIX}")
        return self.blocks(grid)


def _node_costs(graph: Graph, b: BlockPlan) -> dict[str, dict[str, Any]]:
    """Each changed node's predicted seconds over the block's positions, and the conversions the plan makes."""
    def mode(name: str) -> Mode:
        return b.plan.mode(name) if b.costs.choosable(name) else Mode.FULL

    out = {}
    for name, c in b.costs.nodes.items():
        consumers = [v for v in graph.consumers[name] if v in b.costs.nodes]
        converts = ""
        if graph[name].spatial is None:
            pass  # a pooled vector: the same value in both modes, nothing to convert
        elif mode(name) is Mode.INCREMENTAL and any(mode(v) is Mode.FULL for v in consumers):
            converts = " (pasted into whole maps)"
        elif mode(name) is Mode.FULL and b.costs.choosable(name):
            cut = sum(mode(v) is Mode.INCREMENTAL for v in consumers)
            converts = f" (windows cut for {cut} consumers)" if cut else ""
        n = len(b.block)
        out[name] = {"full": c.full * n, "incremental": None if c.incremental is None else c.incremental * n,
                     "to_full": c.to_full * n, "to_win": c.to_win * n, "converts": converts}
    return out


def _describe(settings: Mapping[str, Any]) -> str:
    threshold = settings.get("approx_threshold", 1.0)
    approx = f", projective-field threshold {threshold}" if threshold < 1 else ""
    return f"{settings.get('image_size')} images, patch {settings.get('patch')}, stride {settings.get('stride')}{approx}, backend {settings.get('backend')}"


def _upgrade(body: dict[str, Any]) -> dict[str, Any]:
    """A document of an older schema version as the current one."""
    if body["schema_version"] == 1:
        if "calibration" in body:
            raise ValueError("a version-1 plan has no calibration")
        body = {**body, "schema_version": 2}
    if body["schema_version"] == 2:
        if isinstance(body.get("calibration"), dict):
            if {"ssim_bound", "top_bound"} & set(body["calibration"]):
                raise ValueError("a version-2 calibration has no predicted bounds")
            body = {**body, "calibration": {**body["calibration"], "ssim_bound": None, "top_bound": None}}
        body = {**body, "schema_version": 3}
    return body


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _check_shape(body: dict[str, Any]) -> None:
    """Types of every field anything reads, and that the blocks only name the plan's own nodes."""
    model = body["model"]
    if not isinstance(model["fingerprint"], str) or not isinstance(model["name"], str):
        raise TypeError("model.fingerprint and model.name must be strings")
    if body["settings"].get("backend", "torch") not in ("torch", "ort"):
        raise ValueError("settings.backend must be 'torch' or 'ort'")
    predicted = body["predicted_s"]
    if not isinstance(predicted, dict) or "plan" not in predicted or not all(_number(v) for v in predicted.values()):
        raise ValueError("predicted_s must map 'plan' and the alternatives to seconds")
    chunk = body.get("chunk", 32)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or not 0 < chunk <= 2**20:
        raise ValueError(f"chunk must be a positive number of positions, got {chunk!r}")
    nodes = body["nodes"]
    if not isinstance(nodes, list) or not all(isinstance(n, dict) and isinstance(n.get("name"), str) for n in nodes):
        raise ValueError("nodes must be a list of named nodes")
    if model.get("nodes") != len(nodes):
        raise ValueError(f"model.nodes says {model.get('nodes')!r} nodes, the plan lists {len(nodes)}")
    names = {n["name"] for n in nodes}
    for key in ("image_size", "patch", "stride"):
        value = body["settings"][key]
        if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value)):
            raise ValueError(f"settings.{key} must be two positive integers")
    threshold = body["settings"].get("approx_threshold", 1.0)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise ValueError("settings.approx_threshold must be a number in (0, 1]")
    if "calibration" in body:
        calibration = Calibration.from_json(body["calibration"])
        if body["settings"].get("target_ssim") != calibration.target_ssim or threshold != calibration.approx_threshold:
            raise ValueError("settings.target_ssim and approx_threshold must be the calibration's")
    elif "target_ssim" in body["settings"]:
        raise ValueError("settings.target_ssim needs a calibration")
    if "backend_choice" in body:
        choice = body["backend_choice"]
        if choice.get("backend") != body["settings"].get("backend", "torch") or not isinstance(choice.get("reason"), str):
            raise ValueError("backend_choice must name the plan's backend and give a reason")
        predicted = choice["predicted_s"]
        if not isinstance(predicted, dict) or set(predicted) not in (set(), set(BACKENDS)) or not all(map(_number, predicted.values())):
            raise ValueError(f"backend_choice.predicted_s must map each of {', '.join(BACKENDS)} to seconds, or be empty")
    if "measured" in body:
        _check_measured(body["measured"])
        if body["measured"]["trials"][body["measured"]["chosen"]]["backend"] != body["settings"].get("backend", "torch"):
            raise ValueError("the measured trial chosen must be of the plan's backend")
    device = body["device"]
    for key, field in DeviceFingerprint.__dataclass_fields__.items():
        kind = int if field.type in (int, "int") else str
        if isinstance(device[key], bool) or not isinstance(device[key], kind):
            raise TypeError(f"device.{key} must be {'an integer' if kind is int else 'a string'}")
    if not isinstance(body["cost_model"], dict):
        raise TypeError("cost_model must be an object")
    if not isinstance(body["strategy"], str) or not isinstance(body["blocks"], list) or not body["blocks"]:
        raise ValueError("strategy and a non-empty list of blocks are required")
    for b in body["blocks"]:
        if not all(isinstance(i, int) for i in [*b["rows"], *b["cols"]]):
            raise TypeError("block rows and cols must be integers")
        if not isinstance(b["modes"], dict) or not all(v in ("incremental", "full") for v in b["modes"].values()):
            raise ValueError("block modes must map node names to 'incremental' or 'full'")
        if not set(b["modes"]) <= names:
            raise ValueError(f"a block names nodes the plan does not list ({', '.join(sorted(set(b['modes']) - names)[:3])})")
        if not isinstance(b["predicted_s"], dict) or not all(_number(v) for v in b["predicted_s"].values()):
            raise ValueError("each block's predicted_s must map to seconds")


def _check_measured(measured: Any) -> None:
    """The form of a `measured` record: the trials of `hyinf plan --measure` and which was chosen."""
    trials, rounds, chosen = measured["trials"], measured["rounds"], measured["chosen"]
    if isinstance(rounds, bool) or not isinstance(rounds, int) or not 1 <= rounds <= MAX_ROUNDS:
        raise ValueError(f"measured.rounds must be 1 to {MAX_ROUNDS}")
    if not isinstance(trials, list) or not trials:
        raise ValueError("measured.trials must be a non-empty list")
    for trial in trials:
        if not isinstance(trial, dict) or set(trial) != {"backend", "weight", "predicted_s", "measured_s", "ratio"}:
            raise ValueError("each measured trial has backend, weight, predicted_s, measured_s and ratio")
        if trial["backend"] not in BACKENDS or not all(_number(v) for k, v in trial.items() if k != "backend"):
            raise ValueError(f"measured trials name one of {', '.join(BACKENDS)} and hold non-negative numbers")
    if isinstance(chosen, bool) or not isinstance(chosen, int) or not 0 <= chosen < len(trials):
        raise ValueError("measured.chosen must be the index of one of its trials")
