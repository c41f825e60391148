"""Quality targets: calibrating approximate settings, storing them in the plan, and explaining with them."""

from __future__ import annotations

import json

import pytest
import torch

import hyinf
from conftest import seeded
from hyinf.calibration import calibrate, pixels_sha256
from hyinf.demo import load_demo
from hyinf.errors import PlanError, SettingsError
from hyinf.explainer import Explainer
from hyinf.graph.geometry import OcclusionGrid
from hyinf.graph.torch_frontend import trace_torch
from hyinf.planner.document import PlanDocument, settings_key
from hyinf.planner.quality_target import EXACT, Calibration, Candidate, Trial, lower_bound, ranked
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
    assert calibration.ssim_bound >= 0.85 and calibration.ssim_min >= calibration.ssim_bound
    assert calibration.candidates > 50 and calibration.images == 2
    kept_exact = (calibration.approx_threshold, calibration.drill_down) == (1.0, 1.0)  # no approximation ran faster
    assert calibration.speedup == 1.0 if kept_exact else calibration.speedup > 1.0
    document = _store(model, calibration, db)
    again = PlanDocument.parse(document.to_json())  # a calibrated plan travels as a file
    assert again.calibration == calibration and again.settings["target_ssim"] == 0.85
    # Explaining with the target finds it, runs its settings, and its quality holds on the calibration images.
    explainer = hyinf.Explainer(model, patch=PATCH, stride=STRIDE, db=db, target_ssim=0.8)
    for image in images:
        result = explainer.explain(image)
        exact = hyinf.explain(model, image, patch=PATCH, stride=STRIDE, mode="naive")
        assert result.calibration == calibration and (result.approximation is None) == kept_exact
        assert compare(result.heatmap, exact.heatmap).ssim >= 0.85 - 1e-6
    with pytest.raises(SettingsError, match="reach SSIM 0.85 at most, laxer than the 0.95"):
        hyinf.Explainer(model, patch=PATCH, stride=STRIDE, db=db, target_ssim=0.95).explain(images[0])
    with pytest.raises(SettingsError, match="no calibrated plan is stored .*hyinf plan MODEL --target-ssim 0.9"):
        hyinf.Explainer(model, patch=PATCH, stride=STRIDE + 1, db=db, target_ssim=0.9).explain(images[0])


def test_the_predicted_worst_case_is_below_the_worst_seen_by_the_spread() -> None:
    assert lower_bound([0.9, 0.9, 0.9]) == 0.9  # no spread: the worst seen
    # Mean 0.9, sample deviation 0.1, 3 images: t(0.9, 2 dof) = 1.8856, sqrt(1 + 1/3) = 1.1547.
    assert lower_bound([0.8, 0.9, 1.0]) == pytest.approx(0.9 - 1.8856 * 0.1 * 1.1547, abs=1e-4)
    # More images with the same spread predict a tighter bound.
    assert lower_bound([0.8, 0.9, 1.0] * 4) > lower_bound([0.8, 0.9, 1.0])
    with pytest.raises(SettingsError, match="at least 2 images"):
        lower_bound([0.9])


def test_the_choice_needs_the_predicted_worst_case_and_names_the_best_when_none_reaches_it() -> None:
    trials = [Trial(Candidate(0.5, 1.0), (0.7, 0.9), (0.8, 1.0), 1.0), Trial(Candidate(0.9, 0.5), (0.85, 0.86), (0.9, 0.9), 2.0),
              Trial(Candidate(0.8, 1.0), (0.95, 0.96), (0.95, 0.9), 3.0)]
    assert [t.candidate for t in ranked(trials, 0.6, None)] == [Candidate(0.9, 0.5), Candidate(0.8, 1.0)]  # fastest first
    # The first one's worst image keeps 0.7, but the spread of its two predicts a new image far below.
    assert ranked(trials, 0.7, None)[0].candidate == Candidate(0.9, 0.5)
    assert ranked(trials, 0.9, None)[0].candidate == Candidate(0.8, 1.0)
    with pytest.raises(SettingsError, match=r"best predicted worst case is SSIM 0.9[0-9]+.*worst calibration image 0.950.*"
                                            r"exact evaluation is the way"):
        ranked(trials, 0.97, None)
    with pytest.raises(SettingsError, match="top-region agreement 0.95"):
        ranked(trials, 0.5, 0.95)


def test_exact_is_kept_where_no_candidate_is_faster(tmp_path) -> None:
    """On a network so small that fixed costs dominate, approximate runs are no faster; whatever the
    measured choice, its speed-up and quality are what the confirming runs measured."""
    from hyinf.calibration import measure, settle

    seeded()
    model, db = load_demo(), str(tmp_path / "plans.db")
    images = _images(3, seed=2)
    make = _explainer(model, db)
    measured = measure(make, images)
    found = settle(make, images, measured, [pixels_sha256(i) for i in images], 0.9)
    if (found.approx_threshold, found.drill_down) == (EXACT.threshold, EXACT.drill_down):
        assert found.speedup == 1.0 and found.ssim_min == 1.0 and found.coarse_stride is None
    else:
        assert found.speedup > 1.0 and found.ssim_bound >= 0.9
    document = _store(model, found, db)
    assert PlanDocument.parse(document.to_json()).calibration == found


def test_older_plans_still_load_and_calibrations_are_checked() -> None:
    model = load_demo()
    graph = trace_torch(model, (1, 3, SIZE, SIZE)).graph
    grid = OcclusionGrid.make((SIZE, SIZE), PATCH, STRIDE)
    document = make_plan(graph, grid, fingerprint(torch.device("cpu")), model_name="demo", db=None)
    old = {**document.body, "schema_version": 1}
    assert PlanDocument.parse(json.dumps(old)).body["schema_version"] == 3
    # A version-2 calibration has no predicted bounds: it loads with them null.
    calibration = Calibration(0.9, None, 1.0, 0.5, [8, 8], 0.95, 0.97, 0.9, 0.95, 1.5, 50, 2, ["0" * 64] * 2, 0.93, 0.85)
    version2 = {**document.calibrated(calibration).body, "schema_version": 2}
    version2["calibration"] = {k: v for k, v in version2["calibration"].items() if not k.endswith("_bound")}
    loaded = PlanDocument.parse(json.dumps(version2))
    assert loaded.body["schema_version"] == 3 and loaded.calibration.ssim_bound is None
    with pytest.raises(PlanError, match="malformed"):
        PlanDocument.parse(json.dumps({**version2, "calibration": calibration.to_json()}))  # bounds in a version-2 file
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
    (["plan", "demo", "--target-ssim", "0.9", "--calibration-images", "{tmp}/one"], ["at least 2 images (got 1)"]),
    (["explain", "demo", "--target-ssim", "0.9"], ["needs a calibrated plan and there is no plans database", "hyinf plan MODEL --target-ssim 0.9"]),
    (["explain", "demo", "--target-ssim", "-1"], ["--target-ssim must be in (0, 1]"]),
    (["explain", "demo", "--target-ssim", "0.9", "--drill-down", "0.5"], ["takes its settings from a calibrated plan"]),
])
def test_bad_quality_targets_are_one_line(tmp_path, args, words) -> None:
    from PIL import Image

    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_text("not a png")
    (tmp_path / "one").mkdir()
    Image.new("RGB", (SIZE, SIZE), (90, 120, 30)).save(tmp_path / "one" / "a.png")
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
    chosen = report["calibration"]
    if (chosen["approx_threshold"], chosen["drill_down"]) == (1.0, 1.0):  # exact: no approximation ran faster here
        assert "approximation" not in report and chosen["speedup"] == 1.0
    else:
        assert report["approximation"]["approx_threshold"] == chosen["approx_threshold"]
    assert Image.open(out / "overlay.png").size[0] > 0
