"""Quality targets: calibrating approximate settings, storing them in the plan, and explaining with them."""

from __future__ import annotations

import json

import pytest
import torch

import hyinf
from conftest import seeded
from hyinf.calibration import calibrate, find_calibrated, pixels_sha256
from hyinf.demo import load_demo
from hyinf.errors import PlanError, SettingsError
from hyinf.explainer import Explainer
from hyinf.graph.geometry import OcclusionGrid
from hyinf.graph.torch_frontend import trace_torch
from hyinf.planner.document import PlanDocument, settings_key
from hyinf.planner.quality_target import Candidate, Trial, choose
from hyinf.planner.select import make_plan
from hyinf.plans_db import Database
from hyinf.profiler.machine import fingerprint
from hyinf.quality import compare
from test_cli import assert_one_line_error, invoke

SIZE, PATCH, STRIDE = 64, 8, 4


def _images(count: int, seed: int = 0) -> list[torch.Tensor]:
    import random

    from hyinf.demo.scenes import scene, to_tensor
    from hyinf.models import LoadedModel
    from hyinf import demo

    rng = random.Random(seed)
    loaded = LoadedModel(load_demo(), (SIZE, SIZE), demo.MEAN, demo.STD)
    return [loaded.normalise(to_tensor(scene(i % 4, rng, SIZE)[0])) for i in range(count)]


def _explainer(model, db: str):
    def make(**approx) -> Explainer:
        return Explainer(model, **{"patch": PATCH, "stride": STRIDE, "db": db, **approx})

    return make


def _store(model, calibration, db_url: str) -> PlanDocument:
    graph = trace_torch(model, (1, 3, SIZE, SIZE)).graph
    grid = OcclusionGrid.make((SIZE, SIZE), PATCH, STRIDE, calibration.approx_threshold)
    with Database(db_url) as db:
        document = make_plan(graph, grid, fingerprint(torch.device("cpu")), model_name="demo", db=db).calibrated(calibration)
        db.save_plan(document.model_fingerprint, settings_key(document.settings), fingerprint(torch.device("cpu")), None, dict(document.body))
    return document


def test_a_calibration_meets_its_target_on_every_image_and_explains_with_it(tmp_path) -> None:
    seeded()
    model, db = load_demo(), str(tmp_path / "plans.db")
    images = _images(2)
    calibration = calibrate(_explainer(model, db), images, [pixels_sha256(i) for i in images], 0.85)
    assert calibration.ssim_min >= 0.85 and calibration.candidates > 50 and calibration.images == 2
    assert (calibration.approx_threshold, calibration.drill_down) != (1.0, 1.0)  # exact is never a candidate
    document = _store(model, calibration, db)
    again = PlanDocument.parse(document.to_json())  # a calibrated plan travels as a file
    assert again.calibration == calibration and again.settings["target_ssim"] == 0.85
    # Explaining with the target finds it, runs its settings, and its quality holds on the calibration images.
    explainer = hyinf.Explainer(model, patch=PATCH, stride=STRIDE, db=db, target_ssim=0.8)
    for image in images:
        result = explainer.explain(image)
        exact = hyinf.explain(model, image, patch=PATCH, stride=STRIDE, mode="naive")
        assert result.calibration == calibration and result.approximation is not None
        assert compare(result.heatmap, exact.heatmap).ssim >= 0.85 - 1e-6
    with pytest.raises(SettingsError, match="reach SSIM 0.85 at most, laxer than the 0.95"):
        hyinf.Explainer(model, patch=PATCH, stride=STRIDE, db=db, target_ssim=0.95).explain(images[0])
    with pytest.raises(SettingsError, match="no calibrated plan is stored .*hyinf plan MODEL --target-ssim 0.9"):
        hyinf.Explainer(model, patch=PATCH, stride=STRIDE + 1, db=db, target_ssim=0.9).explain(images[0])


def test_a_target_nothing_reaches_names_the_best_and_exact() -> None:
    trials = [Trial(Candidate(0.5, 1.0), (0.7, 0.9), (0.8, 1.0), 1.0), Trial(Candidate(0.9, 0.5), (0.85, 0.95), (0.6, 0.9), 2.0)]
    assert choose(trials, 0.7, None).candidate == Candidate(0.5, 1.0)  # the faster of the two that meet it
    assert choose(trials, 0.8, None).candidate == Candidate(0.9, 0.5)
    with pytest.raises(SettingsError, match=r"best worst case is SSIM 0.850.*exact evaluation is the way"):
        choose(trials, 0.9, None)
    with pytest.raises(SettingsError, match="top-region agreement 0.9"):
        choose(trials, 0.5, 0.9)


def test_version_1_plans_still_load_and_calibrations_are_checked() -> None:
    model = load_demo()
    graph = trace_torch(model, (1, 3, SIZE, SIZE)).graph
    document = make_plan(graph, OcclusionGrid.make((SIZE, SIZE), PATCH, STRIDE), fingerprint(torch.device("cpu")), model_name="demo", db=None)
    old = {**document.body, "schema_version": 1}
    assert PlanDocument.parse(json.dumps(old)).body["schema_version"] == 2
    bad = {**document.body, "calibration": {"target_ssim": 2}}
    with pytest.raises(PlanError, match="malformed"):
        PlanDocument.parse(json.dumps(bad))
    with pytest.raises(PlanError, match="malformed"):
        PlanDocument.parse(json.dumps({**document.body, "settings": {**document.settings, "target_ssim": 0.9}}))


@pytest.mark.parametrize(("args", "words"), [
    (["plan", "demo", "--target-ssim", "0"], ["--target-ssim must be in (0, 1]"]),
    (["plan", "demo", "--target-ssim", "1.5", "--calibration-images", "{tmp}"], ["must be in (0, 1]"]),
    (["plan", "demo", "--target-ssim", "0.9"], ["give --calibration-images DIR"]),
    (["plan", "demo", "--calibration-images", "{tmp}"], ["give --target-ssim too"]),
    (["plan", "demo", "--target-ssim", "0.9", "--calibration-images", "{tmp}/empty"], ["no usable calibration images", "holds no image files"]),
    (["plan", "demo", "--target-ssim", "0.9", "--calibration-images", "{tmp}/junk"], ["no usable calibration images", "not an image"]),
    (["explain", "demo", "--target-ssim", "0.9"], ["no calibrated plan is stored", "hyinf plan MODEL --target-ssim 0.9"]),
    (["explain", "demo", "--target-ssim", "-1"], ["--target-ssim must be in (0, 1]"]),
    (["explain", "demo", "--target-ssim", "0.9", "--drill-down", "0.5"], ["takes its settings from a calibrated plan"]),
])
def test_bad_quality_targets_are_one_line(tmp_path, args, words) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_text("not a png")
    result = invoke(*[a.format(tmp=tmp_path) for a in args], "--db", str(tmp_path / "plans.db"),
                    *(["--out", str(tmp_path / "out")] if args[0] == "explain" else []))
    assert_one_line_error(result, *words)


def test_the_cli_calibrates_and_explains_with_the_target(tmp_path) -> None:
    from PIL import Image

    from hyinf.demo.scenes import scene

    import random

    rng = random.Random(1)
    folder = tmp_path / "cal"
    folder.mkdir()
    for i in range(2):
        scene(i, rng, SIZE)[0].save(folder / f"{i}.png")
    db = str(tmp_path / "plans.db")
    common = ["--image-size", str(SIZE), str(SIZE), "--patch", str(PATCH), "--stride", str(STRIDE), "--db", db]
    made = invoke("plan", "demo", "--target-ssim", "0.8", "--calibration-images", str(folder), *common)
    assert made.exit_code == 0 and "calibrated for SSIM 0.8 on 2 images" in made.output, made.output
    out = tmp_path / "out"
    ran = invoke("explain", "demo", str(folder / "0.png"), "--target-ssim", "0.8", "--out", str(out), *common)
    assert ran.exit_code == 0, ran.output
    report = json.loads((out / "report.json").read_text())
    assert report["calibration"]["target_ssim"] == 0.8 and report["calibration"]["ssim_min"] >= 0.8
    assert report["approximation"]["approx_threshold"] == report["calibration"]["approx_threshold"]
    assert Image.open(out / "overlay.png").size[0] > 0
