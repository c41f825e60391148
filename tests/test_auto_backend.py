"""`backend="auto"` counts what ORT has left to build: it runs torch until ORT's saving pays for it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import assert_close_to, seeded
from torch import nn

import hyinf
from hyinf.auto_backend import AutoBackend, OrtOutlook
from hyinf.graph.fingerprint import graph_fingerprint
from hyinf.graph.geometry import OcclusionGrid
from hyinf.graph.torch_frontend import trace_torch
from hyinf.planner.document import settings_key
from hyinf.planner.select import BackendChoice, make_plan
from hyinf.plans_db import Database
from hyinf.profiler.machine import fingerprint
from hyinf.runtime.onnx_export import weight_bytes
from hyinf.runtime.ort_growth import BUILD_S, BUILD_S_PER_NODE, BUILD_TRACE_SHARE, open_s, predicted_build_s

CPU = torch.device("cpu")
ORT_FASTER = BackendChoice("ort", {"torch": 3.0, "ort": 2.0}, "ort: predicted faster")


def test_a_faster_ort_runs_once_its_saving_repays_the_build() -> None:
    auto = AutoBackend(ORT_FASTER)
    build = OrtOutlook(2.5, 1.0, "build its graphs")
    first, why = auto.pick(1, build)
    assert first == "torch" and "predicted 2.5 s" in why and "about 2 more images" in why
    assert auto.pick(1, build)[0] == "torch" and auto.saved_s == 2.0
    backend, why = auto.pick(1, build)  # 2 s saved so far and 1 s now reach the 2.5 s build
    assert backend == "ort" and why.startswith(ORT_FASTER.reason) and "earlier ones" in why
    assert AutoBackend(ORT_FASTER).pick(3, build)[0] == "ort"  # three images repay it within the call
    assert AutoBackend(ORT_FASTER).pick(1, OrtOutlook(0.0, 1.0, "build nothing")) == ("ort", ORT_FASTER.reason)


def test_torch_choices_and_a_slow_first_graph_stay_on_torch() -> None:
    chose_torch = BackendChoice("torch", {"torch": 1.0, "ort": 2.0}, "torch: predicted faster")
    assert AutoBackend(chose_torch).pick(100, None) == ("torch", chose_torch.reason)
    backend, why = AutoBackend(ORT_FASTER).pick(100, OrtOutlook(1.0, 1.6, "build its graphs"))  # one block: 3.2 s
    assert backend == "torch" and "no faster than torch's" in why


def test_predicted_builds_count_weights_once_and_the_rest_per_block() -> None:
    one = predicted_build_s(100 << 20, 70, 4.0)
    assert one == pytest.approx(open_s(100 << 20) + BUILD_S + BUILD_S_PER_NODE * 70 + BUILD_TRACE_SHARE * 4.0)
    assert predicted_build_s(100 << 20, 70, 4.0, blocks=9) - open_s(100 << 20) == pytest.approx(9 * (one - open_s(100 << 20)))
    model = nn.Sequential(nn.Conv2d(3, 64, 3), nn.Conv2d(64, 2, 1))  # 1728 and 128 weights: below WEIGHT_ELEMENTS
    assert weight_bytes(model) == 0 and weight_bytes(nn.Linear(100, 100)) == 100 * 100 * 4


def _cnn() -> nn.Module:
    seeded(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 64, 3, padding=1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 5)).eval()  # 4608 weights: kept out of graphs


def test_auto_runs_torch_until_ort_pays_then_ort_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stored choice of ORT saving 0.1 s an image: torch runs while the images' savings stay under ORT's
    predicted build, then ORT, each equal to naive re-inference; a new Explainer then finds the built graphs in
    the disk cache and predicts only their opening."""
    monkeypatch.setenv("HYINF_CACHE_DIR", str(tmp_path / "cache"))
    model, image = _cnn(), torch.rand(1, 3, 32, 32)
    fp, grid = fingerprint(CPU), OcclusionGrid.make((32, 32), 6, 4)
    program = trace_torch(model, (1, 3, 32, 32), CPU)
    url = str(tmp_path / "plans.db")
    choice = BackendChoice("ort", {"torch": 0.2, "ort": 0.1}, "ort: chosen for this test")
    with Database(url) as db:
        document = make_plan(program.graph, grid, fp, model_name="cnn", db=None, backend="ort")
        db.save_plan(graph_fingerprint(program.graph), settings_key(document.settings), fp, None,
                     {**document.body, "backend_choice": choice.to_json()})
    blocks = len(document.body["blocks"])
    build = predicted_build_s(weight_bytes(model), len(program.graph.nodes), 0.2, blocks)
    naive = hyinf.Explainer(model, patch=6, stride=4, mode="naive", backend="torch").explain(image)
    explainer = hyinf.Explainer(model, patch=6, stride=4, backend="auto", db=url)
    first = explainer.explain(image, naive.target)
    assert first.backend == "torch" and f"predicted {build:.1f} s" in first.backend_reason
    assert_close_to(naive.heatmap, first.heatmap, "auto before ORT pays")
    # What ORT would have saved is kept across processes (in the disk cache): a new Explainer goes on from it.
    other = hyinf.Explainer(model, patch=6, stride=4, backend="auto", db=url)
    assert other.explain(image).backend == "torch" and other._auto[(1, 3, 32, 32)].saved_s == pytest.approx(0.2)
    images = int(build / 0.1)  # with its first image's saving, enough to repay the build
    runs = explainer.explain_batch([image] * images, [naive.target] * images)
    assert {r.backend for r in runs} == {"ort"} and "and the earlier ones" in runs[0].backend_reason
    assert_close_to(naive.heatmap, runs[-1].heatmap, "auto once ORT paid")
    assert explainer.explain(image).backend == "ort"  # built in this process: nothing left to pay
    again = hyinf.Explainer(model, patch=6, stride=4, backend="auto", db=url).explain(image)
    assert again.backend == "ort" and "open its cached graphs (predicted 0.0 s)" in again.backend_reason


def test_auto_is_the_default_and_a_given_plan_runs_on_its_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYINF_CACHE_DIR", str(tmp_path / "cache"))
    model, image = _cnn(), torch.rand(1, 3, 32, 32)
    program, grid = trace_torch(model, (1, 3, 32, 32), CPU), OcclusionGrid.make((32, 32), 6, 4)
    document = make_plan(program.graph, grid, fingerprint(CPU), model_name="cnn", db=None, backend="ort")
    given = hyinf.Explainer(model, patch=6, stride=4, plan=document).explain(image)
    assert given.backend == "ort" and given.backend_reason == "ort: the backend the given plan was made for"
    plain = hyinf.Explainer(model, patch=6, stride=4, db=str(tmp_path / "none.db")).explain(image)
    assert plain.backend == "torch" and "never profiled" in plain.backend_reason
    assert 0 < plain.timings["choose_s"] < plain.timings["total_s"]  # tracing for the choice is counted
    assert_close_to(plain.heatmap, given.heatmap, "a given ORT plan under auto")


def test_the_cli_chooses_by_default_and_says_why(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from hyinf.cli import main

    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["explain", "demo", "--out", str(out), "--db", str(tmp_path / "p.db")])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["backend"] == "torch" and report["backend_choice"]["asked"] == "auto"
    assert "never profiled" in report["backend_choice"]["reason"]


def test_the_stored_saving_survives_processes_and_bad_values_read_as_none(tmp_path: Path) -> None:
    from hyinf.auto_backend import KIND, StoredSaving
    from hyinf.runtime.disk_cache import DiskCache

    cache = DiskCache(tmp_path, 1 << 20)
    stored = StoredSaving(cache, "k")
    auto = AutoBackend(ORT_FASTER, stored.load(), stored)
    assert auto.saved_s == 0.0 and auto.pick(1, OrtOutlook(2.5, 1.0, "build its graphs"))[0] == "torch"
    assert StoredSaving(cache, "k").load() == 1.0 and AutoBackend(ORT_FASTER, 1.0).pick(2, OrtOutlook(2.5, 1.0, "x"))[0] == "ort"
    for bad in (-1.0, float("nan"), "3", True, None):
        cache.discard(KIND, "k")
        cache.put(KIND, "k", {}, {"saved_s": bad})
        assert StoredSaving(cache, "k").load() == 0.0
    assert StoredSaving(None, "k").load() == 0.0
