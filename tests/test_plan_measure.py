"""Choosing a plan by measurement (`hyinf plan --measure`): the candidates near the cost model's optimum,
the tournament that keeps the measured fastest, the record in the plan document, and the CLI."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import assert_close_to, seeded
from torch import nn

import hyinf
from hyinf.cli import main
from hyinf.errors import PlanError, SettingsError
from hyinf.graph.geometry import OcclusionGrid
from hyinf.graph.torch_frontend import trace_torch
from hyinf.plan_measure import measured_choice, rounds_for
from hyinf.planner.blocks import plan_grid
from hyinf.planner.candidates import WEIGHTS, candidate_plans, signature, weighted
from hyinf.planner.costs import plan_cost
from hyinf.planner.document import PlanDocument
from hyinf.planner.select import candidate_documents, make_plan
from hyinf.profiler.cost_model import AnalyticCosts
from hyinf.profiler.machine import fingerprint

CPU = torch.device("cpu")
SPREAD = (1.0, 0.1, 10.0)  # weights far enough apart to give the small networks here distinct plans
TRIAL = {"backend": "torch", "weight": 1.0, "predicted_s": 1.0, "measured_s": 1.0, "ratio": 1.0}


def _cnn() -> nn.Module:
    seeded(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()


def _setting(patch: int = 8, stride: int = 2) -> tuple[nn.Module, OcclusionGrid]:
    return _cnn(), OcclusionGrid.make((32, 32), patch, stride)


def test_candidates_start_with_the_optimum_and_are_distinct_optima_of_weighted_costs() -> None:
    model, grid = _setting()
    graph = trace_torch(model, (1, 3, 32, 32), CPU).graph
    blocks = plan_grid(graph, grid, AnalyticCosts.default("cpu"), chunk=64)
    found = candidate_plans(graph, blocks, "optimal", (*SPREAD, *WEIGHTS))
    assert [w for w, _ in found][:1] == [1.0] and len(found) >= 2, "the weights must give this network distinct plans"
    assert [b.plan for b in found[0][1]] == [b.plan for b in blocks]
    assert len({signature(graph, planned) for _, planned in found}) == len(found)
    best = sum(b.predicted["plan"] for b in found[0][1])
    for weight, planned in found:
        for b in planned:  # each block's plan is the optimum of its weighted costs, priced under the model as fitted
            assert math.isclose(b.predicted["plan"], plan_cost(graph, b.costs, b.plan) * len(b.block))
            fitted = plan_cost(graph, weighted(b.costs, weight), b.plan)
            assert all(fitted <= plan_cost(graph, weighted(b.costs, weight), other.plan) * (1 + 1e-6) + 1e-15
                       for other in [x for _, p in found for x in p if x.block == b.block])
        assert sum(b.predicted["plan"] for b in planned) >= best * (1 - 1e-6)  # no plan beats the optimum as predicted


@dataclass
class _Result:
    timings: dict[str, float]


class _Clock:
    """A runner whose positions take given seconds per call: the tournament's rule, without timing noise."""

    def __init__(self, seconds: list[float]) -> None:
        self.seconds = seconds
        self.calls = 0

    def explain(self, image: torch.Tensor, target: int) -> _Result:
        self.calls += 1
        return _Result({"positions_s": self.seconds[(self.calls - 1) % len(self.seconds)]})


def _documents(backend: str = "torch") -> list[tuple[float, PlanDocument]]:
    model, grid = _setting()
    graph = trace_torch(model, (1, 3, 32, 32), CPU).graph
    return candidate_documents(graph, grid, fingerprint(CPU), model_name="cnn", db=None, backend=backend, weights=SPREAD)


def test_a_challenger_is_kept_only_when_it_beats_the_best_so_far_in_every_round() -> None:
    documents = _documents()
    assert len(documents) >= 2
    clocks = {documents[0][0]: _Clock([1.0]), documents[1][0]: _Clock([0.97, 0.9, 0.99, 0.95])}  # warm-up, 3 rounds
    chosen = measured_choice(documents[:2], lambda d: clocks[_weight(documents, d)], torch.zeros(1), rounds=3)
    record = chosen.body["measured"]
    assert record["chosen"] == 1 and chosen.body["blocks"] == documents[1][1].body["blocks"]
    assert [t["weight"] for t in record["trials"]] == [documents[0][0], documents[1][0]]
    assert record["trials"][0]["ratio"] == 1.0 and math.isclose(record["trials"][1]["ratio"], 0.95)
    assert clocks[documents[1][0]].calls == 4  # one warm-up (its build), then one call per round
    for seconds in ([1.0, 0.5, 0.9, 1.01], [1.0, 0.5, 0.9, 0.95, 1.1]):  # faster at the median, not in every round
        slower = {documents[0][0]: _Clock([1.0]), documents[1][0]: _Clock(seconds)}
        kept = measured_choice(documents[:2], lambda d: slower[_weight(documents, d)], torch.zeros(1), rounds=len(seconds) - 1)
        assert kept.body["measured"]["chosen"] == 0
        assert kept.body["blocks"] == documents[0][1].body["blocks"] and kept.body["measured"]["trials"][1]["ratio"] < 1
    three = [*documents[:2], (5.0, PlanDocument(dict(documents[0][1].body)))]  # a third runner, whatever its plan
    fast = {w: _Clock([1.0 - 0.1 * k]) for k, (w, _) in enumerate(three)}
    raised = measured_choice(three, lambda d: fast[_weight(three, d)], torch.zeros(1), rounds=1)
    assert raised.body["measured"]["rounds"] == rounds_for(2, 1) == 4  # 2 challengers: 2 / 2^4 = 1/8
    assert raised.body["measured"]["chosen"] == 2 and fast[5.0].calls == 1 + 4
    assert [rounds_for(c, a) for c, a in ((0, 2), (1, 1), (4, 3), (4, 9))] == [2, 3, 5, 9]
    with pytest.raises(SettingsError, match="1 to 50 rounds"):
        measured_choice(documents, lambda d: _Clock([1.0]), torch.zeros(1), rounds=0)


def _weight(documents: list[tuple[float, PlanDocument]], document: PlanDocument) -> float:
    return next(w for w, d in documents if d is document)


def test_the_measured_plan_runs_exactly_and_its_record_survives_a_round_trip() -> None:
    model, grid = _setting()
    image = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(3))
    for backend in ("torch", "ort"):
        documents = _documents(backend)

        def explainer(document: PlanDocument, backend: str = backend) -> hyinf.Explainer:
            return hyinf.Explainer(model, plan=document, backend=backend, patch=8, stride=2)

        chosen = measured_choice(documents, explainer, image, rounds=2)
        assert chosen.body["measured"]["trials"][chosen.body["measured"]["chosen"]]["backend"] == backend
        assert len(chosen.body["measured"]["trials"]) == len(documents)
        again = PlanDocument.parse(chosen.to_json())
        assert again.body["measured"] == chosen.body["measured"]
        reference = hyinf.explain(model, image, mode="naive", patch=8, stride=2)
        for weight, document in documents:
            result = hyinf.Explainer(model, plan=document, backend=backend, patch=8, stride=2).explain(image)
            assert_close_to(reference.scores, result.scores, f"{backend} plan for incremental costs x{weight}")


@pytest.mark.parametrize("change, message", [
    ({"chosen": 1}, "index of one of its trials"),
    ({"chosen": True}, "index of one of its trials"),
    ({"trials": [{"backend": "ort", "weight": 1.0, "predicted_s": 1.0, "measured_s": 1.0, "ratio": 1.0}]}, "of the plan's backend"),
    ({"trials": [{"backend": "gpu", "weight": 1.0, "predicted_s": 1.0, "measured_s": 1.0, "ratio": 1.0}]}, "name one of torch, ort"),
    ({"rounds": 0}, "rounds must be 1 to 50"),
    ({"rounds": True}, "rounds must be 1 to 50"),
    ({"trials": []}, "non-empty list"),
    ({"trials": [{**TRIAL, "measured_s": float("nan")}]}, "non-negative numbers"),
    ({"trials": [{k: v for k, v in TRIAL.items() if k != "ratio"}]}, "backend, weight, predicted_s, measured_s and ratio"),
    ({"trials": ["x"]}, "backend, weight, predicted_s, measured_s and ratio"),
])
def test_a_forged_measured_record_is_refused(change: dict, message: str) -> None:
    model, grid = _setting()
    graph = trace_torch(model, (1, 3, 32, 32), CPU).graph
    document = make_plan(graph, grid, fingerprint(CPU), model_name="cnn", db=None)
    good = {"rounds": 3, "chosen": 0, "trials": [TRIAL]}
    assert PlanDocument.parse(document.measured(good).to_json()).body["measured"] == good
    forged = json.dumps({**document.body, "measured": {**good, **change}}, allow_nan=True)
    with pytest.raises(PlanError, match=message):
        PlanDocument.parse(forged)


def test_plan_measure_in_the_cli(tmp_path: Path) -> None:
    db = str(tmp_path / "p.db")
    out = tmp_path / "plan.json"
    result = CliRunner().invoke(main, ["plan", "demo", "--backend", "ort", "--measure", "2", "--db", db, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "measured 1 plan over 2 rounds each: kept the cost model's own plan" in result.output
    body = json.loads(out.read_text())
    assert body["settings"]["backend"] == "ort" and body["measured"]["rounds"] == 2
    explained = CliRunner().invoke(main, ["explain", "demo", "--plan", str(out), "--backend", "ort", "--out", str(tmp_path / "o")])
    assert explained.exit_code == 0, explained.output
    for args, message in ((["--measure", "0"], "1 to 50 rounds"),
                          (["--measure", "2", "--target-ssim", "0.9", "--calibration-images", str(tmp_path)], "leave out one")):
        bad = CliRunner().invoke(main, ["plan", "demo", "--db", db, *args])
        assert bad.exit_code != 0 and message in bad.output and "Traceback" not in bad.output


def test_auto_measures_the_other_backends_plan_too_and_explain_follows_the_measured_choice(tmp_path: Path) -> None:
    model, grid = _setting()
    graph = trace_torch(model, (1, 3, 32, 32), CPU).graph
    found = candidate_documents(graph, grid, fingerprint(CPU), model_name="cnn", db=None, backend="auto", weights=SPREAD, rival=True)
    backends = [d.settings["backend"] for _, d in found]
    assert backends[0] == "torch" and backends[-1] == "ort" and backends.count("ort") == 1  # unprofiled: torch predicted
    assert all(d.body["backend_choice"]["backend"] == d.settings["backend"] for _, d in found)
    slow_torch = {id(d): _Clock([2.0 if d.settings["backend"] == "torch" else 1.0]) for _, d in found}
    chosen = measured_choice(found, lambda d: slow_torch[id(d)], torch.zeros(1), rounds=3)
    choice = chosen.body["backend_choice"]
    assert chosen.settings["backend"] == choice["backend"] == "ort" and choice["reason"].startswith("ort: kept by measurement")
    assert choice["predicted_s"] == {"torch": 2.0, "ort": 1.0}  # auto weighs ORT's build against what was measured
    db = str(tmp_path / "p.db")
    stored = CliRunner().invoke(main, ["plan", "demo", "--backend", "auto", "--measure", "1", "--db", db])
    assert stored.exit_code == 0, stored.output
    assert "measured 2 plans over 3 rounds each (raised from 1" in stored.output
    backend = "ort" if "kept ort's own plan" in stored.output else "torch"
    out = tmp_path / "o"
    explained = CliRunner().invoke(main, ["explain", "demo", "--db", db, "--out", str(out)])
    assert explained.exit_code == 0, explained.output
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["backend"] == backend and report["backend_choice"]["asked"] == "auto"
