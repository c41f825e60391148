"""Each backend's own costs: the ONNX Runtime profiler (kernel times attributed to the runtime's nodes),
ORT's cost model, plans per backend, and backend `auto` (the plan search choosing the backend)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import assert_close_to, seeded
from onnx import helper
from torch import nn

import hyinf
from hyinf.cli import main
from hyinf.errors import PlanError, SettingsError
from hyinf.graph.fingerprint import graph_fingerprint
from hyinf.graph.geometry import OcclusionGrid, changed_regions
from hyinf.graph.torch_frontend import trace_torch
from hyinf.planner.blocks import plan_grid
from hyinf.planner.costs import folded_nodes, predict_costs
from hyinf.planner.document import PlanDocument, settings_key
from hyinf.planner.select import BackendChoice, choose_backend, make_plan
from hyinf.plans_db import Database
from hyinf.profiler.cost_model import AnalyticCosts
from hyinf.profiler.machine import fingerprint
from hyinf.profiler.measure import measure_program
from hyinf.profiler.ort_measure import SCOPE, kernel_owners, kernel_times, measure_ort
from hyinf.profiler.profile import device_costs, profile

CPU = torch.device("cpu")


def _cnn() -> nn.Module:
    seeded(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()


def test_ort_profile_times_what_the_torch_profile_times() -> None:
    program = trace_torch(_cnn(), (1, 3, 32, 32), CPU)
    grid = OcclusionGrid.make((32, 32), 6, 4)
    torch_samples = measure_program(program, grid, positions=8, repeats=2, source="model", config="cnn")
    ort_samples = measure_ort(program, grid, positions=8, repeats=2, source="model", config="cnn")
    keys = {(s.config, s.kind) for s in ort_samples}
    assert keys <= {(s.config, s.kind) for s in torch_samples}
    convs = {s.config for s in torch_samples if s.op.startswith("conv")}
    assert {(c, k) for c in convs for k in ("incremental", "full", "to_full", "to_win")} <= keys  # convs cost in every form
    for s in ort_samples:
        assert len(s.timing.times) == 2 and all(t > 0 for t in s.timing.times)
        assert s.features == next(t.features for t in torch_samples if (t.config, t.kind) == (s.config, s.kind))


def test_kernels_the_optimizer_made_belong_to_the_nodes_they_serve() -> None:
    scopes = {f"{SCOPE}0": ("conv", "full"), f"{SCOPE}1": ("relu", "to_win")}
    nodes = [
        helper.make_node("ReorderInput", ["x"], ["x_nchwc"], name="ReorderInput_token_3"),  # layout at a graph edge: nobody's
        helper.make_node("Conv", ["x_nchwc", "w"], ["y_nchwc"], name=f"/{SCOPE}0/Conv_output_0_nchwc"),
        helper.make_node("ReorderOutput", ["y_nchwc"], ["y"], name="ReorderOutput_token_4"),
        helper.make_node("Gather", ["y", "i"], ["z"], name=f"/{SCOPE}1/Gather"),
        helper.make_node("Relu", ["z"], ["r"], name="out0_nchwc"),  # renamed after its output: its input's maker's
        helper.make_node("Relu", ["q"], ["s"], name="out1"),  # no scope and no scoped input: nobody's
    ]
    owners = kernel_owners(helper.make_graph(nodes, "g", [], []), scopes)
    assert owners == {f"/{SCOPE}0/Conv_output_0_nchwc": ("conv", "full"), f"/{SCOPE}1/Gather": ("relu", "to_win"),
                      "out0_nchwc": ("relu", "to_win")}
    events = [{"cat": "Session", "name": "model_run", "ts": t, "dur": 50} for t in (0, 100, 200)]
    for run in (0, 100, 200):
        events += [{"cat": "Node", "name": f"{n.name}_kernel_time", "ts": run + 5 + k, "dur": 10 * (k + 1)} for k, n in enumerate(nodes)]
    times = kernel_times(events, owners, warmup=1)  # the first run is discarded
    assert times == {("conv", "full"): [pytest.approx(20e-6)] * 2, ("relu", "to_win"): [pytest.approx(90e-6)] * 2}


def test_ort_folds_batch_norm_and_activations_into_convolutions() -> None:
    seeded(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Hardswish(), nn.MaxPool2d(2), nn.ReLU()).eval()
    graph = trace_torch(model, (1, 3, 16, 16), CPU).graph
    folded = {graph[name].fn for name in folded_nodes(graph, "ort")}
    assert len(folded_nodes(graph, "ort")) == 3 and folded == {"batch_norm", "relu"}  # not hardswish, nor a ReLU after a pool
    assert folded_nodes(graph, "torch") == frozenset()
    grid = OcclusionGrid.make((16, 16), 4, 4)
    regions = [changed_regions(graph, grid)]
    costs = predict_costs(graph, regions, AnalyticCosts.default("cpu"), [len(grid)], folded=folded_nodes(graph, "ort"))[0]
    for name in folded_nodes(graph, "ort"):
        assert costs.nodes[name].full == costs.nodes[name].incremental == 0 and costs.nodes[name].to_full > 0


@pytest.fixture(scope="module")
def profiled(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database with a small profile of each backend on this CPU."""
    url = str(tmp_path_factory.mktemp("backends") / "hyinf.db")
    with Database(url) as db:
        for backend in ("torch", "ort"):
            profile(db, CPU, quick=True, backend=backend, configs=6)
    return url


def test_each_backend_plans_with_its_own_cost_model(profiled: str) -> None:
    fp = fingerprint(CPU)
    with Database(profiled) as db:
        (torch_costs, torch_info), (ort_costs, ort_info) = (device_costs(db, fp, b) for b in ("torch", "ort"))
        assert torch_info["kind"] == ort_info["kind"] == "learned" and torch_info["id"] != ort_info["id"]
        assert db.cost_model(ort_info["id"]).body != db.cost_model(torch_info["id"]).body  # type: ignore[union-attr]
        program = trace_torch(_cnn(), (1, 3, 32, 32), CPU)
        grid = OcclusionGrid.make((32, 32), 6, 4)
        document = make_plan(program.graph, grid, fp, model_name="cnn", db=db, backend="ort")
        assert document.settings["backend"] == "ort" and document.body["cost_model"] == ort_info
        assert "backend_choice" not in document.body


def test_auto_plans_for_the_backend_predicted_faster_and_records_both_predictions(profiled: str) -> None:
    fp = fingerprint(CPU)
    program = trace_torch(_cnn(), (1, 3, 32, 32), CPU)
    grid = OcclusionGrid.make((32, 32), 6, 4)
    with Database(profiled) as db:
        choice = choose_backend(program.graph, grid, fp, db)
        predicted = {b: sum(p.predicted["plan"] for p in plan_grid(program.graph, grid, device_costs(db, fp, b)[0], backend=b, chunk=64))
                     for b in ("torch", "ort")}
        assert choice.predicted_s == predicted and choice.backend == min(predicted, key=lambda b: predicted[b])
        document = make_plan(program.graph, grid, fp, model_name="cnn", db=db, backend="auto")
    assert document.settings["backend"] == choice.backend and document.body["backend_choice"] == choice.to_json()
    assert PlanDocument.parse(document.to_json()).body["backend_choice"] == choice.to_json()  # it travels with the plan
    other = "ort" if choice.backend == "torch" else "torch"
    forged = {**document.body, "backend_choice": {**choice.to_json(), "backend": other}}
    with pytest.raises(PlanError, match="backend_choice must name the plan's backend"):
        PlanDocument.parse(json.dumps(forged))
    for predicted in ({"ort": 1.0}, {"torch": 1.0, "ort": -1.0}, {"torch": 1.0, "ort": 1.0, "tvm": 1.0}, [1.0, 2.0]):
        forged = {**document.body, "backend_choice": {**choice.to_json(), "predicted_s": predicted}}
        with pytest.raises(PlanError, match="predicted_s must map each of torch, ort to seconds"):
            PlanDocument.parse(json.dumps(forged))


def test_auto_says_why_it_cannot_compare_unprofiled_backends(tmp_path: Path) -> None:
    fp = fingerprint(CPU)
    program = trace_torch(_cnn(), (1, 3, 32, 32), CPU)
    grid = OcclusionGrid.make((32, 32), 6, 4)
    with Database(str(tmp_path / "empty.db")) as db:
        choice = choose_backend(program.graph, grid, fp, db)
        assert choice.backend == "torch" and choice.predicted_s == {}
        assert "`hyinf profile` and `hyinf profile --backend ort`" in choice.reason
        profile(db, CPU, quick=True, configs=3)
        assert "ort never profiled" in choose_backend(program.graph, grid, fp, db).reason
        assert device_costs(db, fp, "ort")[1]["kind"] == "learned"  # an ort plan without its own costs: torch's
        assert device_costs(db, fp, "ort", fallback=False)[1]["kind"] == "analytic"


@pytest.mark.parametrize("backend", ["torch", "ort"])
def test_auto_runs_the_stored_choice_exactly(tmp_path: Path, backend: str) -> None:
    """Whichever backend the stored choice names runs, equal to naive re-inference, and says why."""
    model = _cnn()
    image = torch.rand(1, 3, 32, 32)
    fp = fingerprint(CPU)
    program = trace_torch(model, (1, 3, 32, 32), CPU)
    grid = OcclusionGrid.make((32, 32), 6, 4)
    url = str(tmp_path / "plans.db")
    with Database(url) as db:
        document = make_plan(program.graph, grid, fp, model_name="cnn", db=None, backend=backend)
        # ORT's saving pays for any build at once: what it has to build is tested in test_auto_backend.py
        predicted = {"torch": 1.0, "ort": 2.0} if backend == "torch" else {"torch": 100.0, "ort": 1.0}
        choice = BackendChoice(backend, predicted, f"{backend}: chosen for this test")
        body = {**document.body, "backend_choice": choice.to_json()}
        db.save_plan(graph_fingerprint(program.graph), settings_key(document.settings), fp, None, body)
    explainer = hyinf.Explainer(model, patch=6, stride=4, backend="auto", db=url)
    result = explainer.explain_batch([image] * 4)[0]  # four images repay ORT's build at 99 s an image
    assert result.backend == backend and result.backend_reason.startswith(choice.reason) and result.plan_source == "local"
    naive = hyinf.Explainer(model, patch=6, stride=4, mode="naive").explain(image, result.target)
    assert_close_to(naive.heatmap, result.heatmap, f"auto on {backend}")
    assert explainer.explain_batch([image, torch.rand(3, 40, 40)])[1].backend in ("torch", "ort")  # another size: chosen anew


def test_auto_in_the_cli_reports_the_backend_and_why(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["explain", "demo", "--backend", "auto", "--out", str(out), "--db", str(tmp_path / "p.db")])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["backend"] == "torch"
    assert report["backend_choice"]["asked"] == "auto" and "never profiled" in report["backend_choice"]["reason"]
    bad = CliRunner().invoke(main, ["plan", "demo", "--backend", "auto", "--profile", "1", "--db", str(tmp_path / "p.db")])
    assert bad.exit_code != 0 and "leave out one" in bad.output and "Traceback" not in bad.output
    profiled = CliRunner().invoke(main, ["profile", "--backend", "ort", "--configs", "3", "--db", str(tmp_path / "p.db"), "--quiet"])
    assert profiled.exit_code == 0, profiled.output
    assert "backend ort" in profiled.output and "cost model 1 saved" in profiled.output
    with Database(str(tmp_path / "p.db")) as db:
        assert db.cost_model_ref(device_key=fingerprint(CPU).key, backend="ort") is not None
        assert db.cost_model_ref(device_key=fingerprint(CPU).key, backend="torch") is None
    ort_model = CliRunner().invoke(main, ["profile", "--backend", "ort", "--model", "demo", "--db", str(tmp_path / "p.db")])
    assert ort_model.exit_code != 0 and "torch backend only" in ort_model.output and len(ort_model.output.strip().splitlines()) == 1
    with pytest.raises(SettingsError, match="backend must be one of torch, ort, auto"):
        hyinf.Explainer(_cnn(), backend="fastest")

