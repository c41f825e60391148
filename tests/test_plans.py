"""Plans end to end: planned runs equal naive re-inference, plan files and the database, bad plans."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import hyinf
from conftest import assert_close_to
from hyinf.cli import main
from hyinf.errors import PlanError, PlanWarning
from hyinf.graph.geometry import OcclusionGrid
from hyinf.graph.torch_frontend import trace_torch
from hyinf.planner.document import PlanDocument, settings_key
from hyinf.planner.select import make_plan
from hyinf.plans_db import Database
from hyinf.profiler.cost_model import FORMAT_VERSION, AnalyticCosts, LearnedCosts
from hyinf.profiler.machine import DeviceFingerprint, fingerprint

CPU = torch.device("cpu")


def _residual_cnn() -> nn.Module:
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
            self.branch = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
            self.down = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
            self.head = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.stem(x)
            x = torch.relu(x + self.branch(x))
            return self.head(self.down(x).mean((2, 3)))

    return Net().eval()


def _document(model: nn.Module, size: int = 32, patch: int = 6, stride: int = 4, device: DeviceFingerprint | None = None) -> PlanDocument:
    program = trace_torch(model, (1, 3, size, size), CPU)
    grid = OcclusionGrid.make((size, size), patch, stride)
    return make_plan(program.graph, grid, device or fingerprint(CPU), model_name="residual", db=None)


def test_planned_runs_equal_naive_for_both_strategies() -> None:
    model, image = _residual_cnn(), torch.randn(3, 32, 32)
    reference = hyinf.explain(model, image, patch=6, stride=4, mode="naive")
    program = trace_torch(model, (1, 3, 32, 32), CPU)
    grid = OcclusionGrid.make((32, 32), 6, 4)
    for strategy in ("optimal", "heuristic"):
        document = make_plan(program.graph, grid, fingerprint(CPU), model_name="residual", db=None, strategy=strategy)
        result = hyinf.explain(model, image, patch=6, stride=4, plan=document)
        assert_close_to(reference.scores, result.scores, strategy)
        assert "given plan" in result.mode


def test_document_round_trip_and_contents() -> None:
    document = _document(_residual_cnn())
    again = PlanDocument.parse(document.to_json())
    assert again.body == json.loads(document.to_json())
    body = again.body
    assert body["schema_version"] == 3 and body["strategy"] == "optimal"
    assert body["chunk"] == 64  # the CPU runtime's largest chunk: the calls the costs were predicted for
    assert set(body["predicted_s"]) == {"plan", "all-incremental", "all-full", "heuristic"}
    assert body["predicted_s"]["plan"] <= min(body["predicted_s"].values()) * (1 + 1e-6)
    assert sum(b["positions"] for b in body["blocks"]) == 8 * 8
    assert any(n["window"] is not None for n in body["nodes"])


def test_one_plan_serves_every_copy_of_an_architecture() -> None:
    document = _document(_residual_cnn())
    other_weights = _residual_cnn()
    with torch.no_grad():
        for p in other_weights.parameters():
            p.add_(1.0)
    image = torch.randn(3, 32, 32)
    reference = hyinf.explain(other_weights, image, patch=6, stride=4, mode="naive")
    assert_close_to(reference.scores, hyinf.explain(other_weights, image, patch=6, stride=4, plan=document).scores, "fine-tuned copy")


def test_plans_for_other_models_or_settings_are_refused() -> None:
    document = _document(_residual_cnn())
    image = torch.randn(3, 32, 32)
    wider = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    with pytest.raises(PlanError, match="another model"):
        hyinf.explain(wider, image, patch=6, stride=4, plan=document)
    with pytest.raises(PlanError, match="stride"):
        hyinf.explain(_residual_cnn(), image, patch=6, stride=2, plan=document)


def test_plans_are_made_for_the_chunks_the_runtime_will_run() -> None:
    """Costs per position include each call's fixed cost shared by its positions: planned for the
    device's runtime chunk (64 positions on a CPU, 512 on a GPU, fewer in a smaller block)."""
    from hyinf.planner.blocks import plan_grid

    program = trace_torch(_residual_cnn(), (1, 3, 64, 64), CPU)
    grid = OcclusionGrid.make((64, 64), 6, 2)
    model = AnalyticCosts.default("cpu")
    small, large = plan_grid(program.graph, grid, model, chunk=8), plan_grid(program.graph, grid, model, chunk=64)
    for a, b in zip(small, large, strict=True):
        ratio = a.predicted["all-full"] / b.predicted["all-full"]
        assert ratio > 1 if len(a.block) > 8 else ratio == pytest.approx(1), (len(a.block), ratio)
    gpu = _document(_residual_cnn(), device=DeviceFingerprint("cuda", "Some GPU", 132, "CUDA 13.0, sm_90", "2.14.1", ""))
    assert gpu.body["chunk"] == 512 and _document(_residual_cnn()).body["chunk"] == 64
    for bad in (0, -1, 2.5, True, "64"):
        with pytest.raises(PlanError, match="chunk must be a positive number"):
            PlanDocument.parse(json.dumps({**gpu.body, "chunk": bad}))
    older = {k: v for k, v in gpu.body.items() if k != "chunk"}  # version 2 had no chunk: predicted for 32
    assert "chunk" not in PlanDocument.parse(json.dumps({**older, "schema_version": 2})).body


def test_plan_from_another_device_runs_with_a_warning() -> None:
    elsewhere = DeviceFingerprint("cuda", "Some GPU", 132, "CUDA 13.0, sm_90", "2.14.1", "")
    document = _document(_residual_cnn(), device=elsewhere)
    model, image = _residual_cnn(), torch.randn(3, 32, 32)
    with pytest.warns(PlanWarning, match="Some GPU"):
        result = hyinf.explain(model, image, patch=6, stride=4, plan=document)
    assert_close_to(hyinf.explain(model, image, patch=6, stride=4, mode="naive").scores, result.scores, "other device")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not JSON"),
        ('{"format": "something-else"}', "not a hyinf plan"),
        ('{"format": "hyinf-plan", "schema_version": 99}', "schema version 99"),
        ('{"format": "hyinf-plan", "schema_version": 1, "model": {}}', "malformed"),
    ],
)
def test_malformed_plans_are_refused(text: str, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        PlanDocument.parse(text, "plan.json")


def test_tampered_blocks_are_refused() -> None:
    body = json.loads(_document(_residual_cnn()).to_json())
    body["blocks"] = body["blocks"][:-1]  # some positions would never be evaluated
    with pytest.raises(PlanError, match="cover every position"):
        hyinf.explain(_residual_cnn(), torch.randn(3, 32, 32), patch=6, stride=4, plan=PlanDocument.parse(json.dumps(body)))


def test_plan_cli_database_and_sharing(tmp_path: Path) -> None:
    runner = CliRunner()
    db, other_db, file = str(tmp_path / "a.db"), str(tmp_path / "b.db"), tmp_path / "demo-plan.json"
    made = runner.invoke(main, ["plan", "demo", "--patch", "8", "--stride", "8", "-o", str(file), "--explain", "--db", db])
    assert made.exit_code == 0, made.output
    assert "predicted: plan" in made.output and "all-incremental" in made.output and "largest block" in made.output
    assert PlanDocument.parse(file.read_bytes()).body["model"]["name"] == "demo"
    listed = runner.invoke(main, ["plans", "list", "--db", db])
    assert listed.exit_code == 0 and "demo" in listed.output
    shown = runner.invoke(main, ["plans", "show", "1", "--db", db])
    assert json.loads(shown.output)["format"] == "hyinf-plan"
    exported = tmp_path / "exported.json"
    assert runner.invoke(main, ["plans", "export", "1", "-o", str(exported), "--db", db]).exit_code == 0
    imported = runner.invoke(main, ["plans", "import", str(exported), "--db", other_db])
    assert imported.exit_code == 0 and "plan 1" in imported.output
    out = tmp_path / "out"
    run = runner.invoke(main, ["explain", "demo", "--patch", "8", "--stride", "8", "--db", other_db, "--out", str(out), "--quiet"])
    assert run.exit_code == 0, run.output
    assert "stored plan 1" in json.loads((out / "report.json").read_text())["mode"]
    by_file = runner.invoke(main, ["explain", "demo", "--patch", "8", "--stride", "8", "--plan", str(file), "--out", str(out), "--quiet"])
    assert by_file.exit_code == 0 and "given plan" in json.loads((out / "report.json").read_text())["mode"]


def test_plan_cli_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "hyinf-plan", "schema_version": 7}')
    runner = CliRunner()
    for args in (["explain", "demo", "--plan", str(bad), "--out", str(tmp_path / "o"), "--quiet"],
                 ["plans", "import", str(bad), "--db", str(tmp_path / "x.db")],
                 ["plans", "show", "42", "--db", str(tmp_path / "x.db")],
                 ["plan", "demo", "--profile", "5", "--db", str(tmp_path / "x.db")]):
        result = runner.invoke(main, args)
        assert result.exit_code != 0, args
        assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output, result.output


def test_stored_plans_are_found_by_structure_settings_and_device(tmp_path: Path) -> None:
    db = Database(str(tmp_path / "p.db"))
    document = _document(_residual_cnn())
    from hyinf.planner.document import settings_key

    db.save_plan(document.model_fingerprint, settings_key(document.settings), document.device, None, dict(document.body))
    assert db.find_plan(document.model_fingerprint, settings_key(document.settings), document.device.key) is not None
    assert db.find_plan(document.model_fingerprint, "other-settings", document.device.key) is None
    assert db.find_plan("other-model", settings_key(document.settings), document.device.key) is None


def _stored_costs(db: Database, incremental_cost: float) -> None:
    """A cost model in `db` under which a window costs `incremental_cost` seconds per FLOP (and whole maps
    1e-11): expensive windows make full plans, cheap ones incremental plans."""
    full = (1e-6, 1e-11, 1e-11)
    analytic = AnalyticCosts({"incremental": (1e-6, incremental_cost, 1e-11), "full": full, "to_full": full, "to_win": full})
    body = LearnedCosts(analytic, 0.0, 0.0, (), frozenset()).to_body()
    db.save_cost_model(db.device_id(fingerprint(CPU)), "torch", FORMAT_VERSION, [], body, {})


def test_kept_plans_follow_the_database(tmp_path: Path) -> None:
    """Decoded cost models and plans are kept per process, yet a run plans with the database's newest
    cost model at once, also when the database is recreated under the same name (ids start again)."""
    program = trace_torch(_residual_cnn(), (1, 3, 32, 32), CPU)
    grid = OcclusionGrid.make((32, 32), 6, 4)
    path = tmp_path / "hyinf.db"

    def planned(db: Database) -> tuple[int, set[str]]:
        body = make_plan(program.graph, grid, fingerprint(CPU), model_name="residual", db=db).body
        return body["cost_model"]["id"], {mode for b in body["blocks"] for mode in b["modes"].values()}

    db = Database(str(path))
    _stored_costs(db, 1e-6)
    assert planned(db) == planned(db) == (1, {"full"})
    _stored_costs(db, 1e-14)
    assert planned(db) == (2, {"incremental"})
    path.unlink()
    db = Database(str(path))
    _stored_costs(db, 1e-14)
    assert planned(db) == (1, {"incremental"})


def _rename_node(body: dict) -> None:
    name = next(iter(body["blocks"][0]["modes"]))
    for b in body["blocks"]:
        b["modes"][name + "_x"] = b["modes"].pop(name)


def _rename_everywhere(body: dict) -> None:
    """Consistently renamed: the form is valid, but it fits no model (found when it is used)."""
    name = next(iter(body["blocks"][0]["modes"]))
    for b in body["blocks"]:
        b["modes"][name + "_x"] = b["modes"].pop(name)
    for n in body["nodes"]:
        if n["name"] == name:
            n["name"] = name + "_x"


POISONS = {
    "renamed node": (_rename_node, "names nodes the plan does not list"),
    "missing block": (lambda b: b["blocks"].pop(), "cover every position"),
    "edited stride": (lambda b: b["settings"].update(stride=[5, 5]), "do not fit|cover every position"),
    "edited image size": (lambda b: b["settings"].update(image_size=[4, 4]), "settings are impossible"),
    "no predicted_s": (lambda b: b.pop("predicted_s"), "predicted_s"),
    "NaN predicted": (lambda b: b["predicted_s"].update(plan=float("nan")), "predicted_s"),
    "node count": (lambda b: b["model"].update(nodes=3), "model.nodes"),
    "bad backend": (lambda b: b["settings"].update(backend="tvm"), "settings.backend"),
    "device name a number": (lambda b: b["device"].update(name=5), "device.name must be a string"),
    "device cores a string": (lambda b: b["device"].update(cores="two"), "device.cores must be an integer"),
}


def _poisoned(tmp_path: Path, edit) -> Path:
    body = json.loads(_document(_residual_cnn(), size=32, patch=6, stride=4).to_json())
    edit(body)
    path = tmp_path / "poisoned.json"
    path.write_text(json.dumps(body))
    return path


@pytest.mark.parametrize("poison", list(POISONS))
def test_poisoned_plans_are_refused_on_import_and_nothing_is_stored(tmp_path: Path, poison: str) -> None:
    edit, words = POISONS[poison]
    db = str(tmp_path / "p.db")
    result = CliRunner().invoke(main, ["plans", "import", str(_poisoned(tmp_path, edit)), "--db", db])
    assert result.exit_code != 0 and len(result.output.strip().splitlines()) == 1, result.output
    assert "Traceback" not in result.output
    assert re.search(words, result.output), result.output
    assert Database(db).plans() == []


def test_a_bad_stored_plan_is_skipped_with_a_warning_listed_and_deleted(tmp_path: Path) -> None:
    """A plan stored before imports were checked (or edited in the database) never stops a run."""
    db_path = str(tmp_path / "p.db")
    model, image = _residual_cnn(), torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0))
    document = _document(model)
    body = json.loads(document.to_json())
    _rename_everywhere(body)
    db = Database(db_path)
    good_key = settings_key(document.settings)
    plan_id = db.save_plan(document.model_fingerprint, good_key, fingerprint(CPU), None, body)
    broken = db.save_plan("f" * 64, good_key, fingerprint(CPU), None, {"format": "hyinf-plan"})
    with pytest.warns(PlanWarning, match=f"skipped stored plan {plan_id} .*plans delete {plan_id}"):
        result = hyinf.explain(model, image, patch=6, stride=4, db=db_path)
    assert_close_to(hyinf.explain(model, image, patch=6, stride=4, mode="naive").scores, result.scores, "after a skipped plan")
    assert "planned now" in result.mode
    runner = CliRunner()
    listed = runner.invoke(main, ["plans", "list", "--db", db_path])
    assert listed.exit_code == 0, listed.output
    assert f"{broken}  invalid:" in listed.output and "residual" in listed.output
    deleted = runner.invoke(main, ["plans", "delete", str(plan_id), "--db", db_path])
    assert deleted.exit_code == 0 and f"deleted plan {plan_id}" in deleted.output
    assert [row.id for row in Database(db_path).plans()] == [broken]
    again = runner.invoke(main, ["plans", "delete", str(plan_id), "--db", db_path])
    assert again.exit_code != 0 and "no plan" in again.output


def test_deeply_nested_and_huge_plans_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="nested too deeply"):
        PlanDocument.parse("[" * 100_000 + "]" * 100_000)
    with pytest.raises(PlanError, match="more than a plan's"):
        PlanDocument.parse(b" " * (65 * 2**20))
