"""The `hyinf explain` command end to end, and its one-line errors for bad input."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from hyinf.cli import main
from hyinf.demo.scenes import scene


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def assert_one_line_error(result, *words: str) -> None:
    """One 'Error:' line naming the problem (click adds its usage lines for malformed options)."""
    assert result.exit_code != 0
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in errors[0], errors[0]


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(path)
    return path


def test_demo_default_run_lands_on_the_object(tmp_path) -> None:
    out = tmp_path / "out"
    result = invoke("explain", "--out", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["target_label"] == "triangle"
    heatmap, attribution = np.load(out / "heatmap.npy"), np.load(out / "attribution.npy")
    assert heatmap.shape == tuple(report["positions"]) and attribution.shape == (3, 128, 128)
    assert set(report["node_modes"].values()) <= {"incremental", "full", "unchanged"}
    assert Image.open(out / "overlay.png").format == "PNG"
    # The bundled sample is the scene below; the strongest evidence must lie on its shape.
    _, (left, top, right, bottom) = scene(2, random.Random(12345))
    row, col = np.unravel_index(attribution[0].argmax(), attribution[0].shape)
    assert top - 16 <= row <= bottom + 16 and left - 16 <= col <= right + 16


def test_torchvision_model_on_a_photo_matches_naive(tmp_path, photo) -> None:
    runs = {}
    for mode in ("naive", "hybrid"):
        out = tmp_path / mode
        result = invoke("explain", "torchvision:resnet18", str(photo), "--image-size", "48", "64", "--patch", "8x12", "--stride", "6",
                        "--mode", mode, "--out", str(out), "--quiet")
        assert result.exit_code == 0, result.output
        runs[mode] = np.load(out / "heatmap.npy")
    assert runs["naive"].shape == (8, 10)
    scale = max(np.abs(runs["naive"]).max(), 1e-6)
    assert np.abs(runs["hybrid"] - runs["naive"]).max() <= 1e-4 * max(scale, 1.0)


def test_exported_and_scripted_models_run(tmp_path, photo) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    example = torch.randn(1, 3, 32, 32)
    torch.export.save(torch.export.export(net, (example,)), tmp_path / "net.pt2")
    torch.jit.save(torch.jit.trace(net, example), tmp_path / "net.ts")
    maps = []
    for name in ("net.pt2", "net.ts"):
        out = tmp_path / f"out-{name}"
        result = invoke("explain", str(tmp_path / name), str(photo), "--image-size", "32", "32", "--out", str(out), "--quiet")
        assert result.exit_code == 0, result.output
        maps.append(np.load(out / "heatmap.npy"))
    np.testing.assert_allclose(maps[0], maps[1], atol=1e-5)


def test_approximate_run_reports_its_distance_from_exact(tmp_path) -> None:
    out = tmp_path / "approx"
    result = invoke("explain", "--approx-threshold", "0.3", "--drill-down", "0.4", "--coarse-stride", "16", "--check-exact", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "approximate (projective-field threshold 0.3, drill-down 0.4 from stride 16x16" in result.output
    assert "distance from exact" in result.output and "SSIM" in result.output
    approx = json.loads((out / "report.json").read_text())["approximation"]
    assert approx["approx_threshold"] == 0.3 and approx["coarse_stride"] == [16, 16]
    assert approx["occluded_images"] < approx["exact_occluded_images"] == 15 * 15
    assert 0 < approx["quality"]["ssim"] <= 1 and approx["quality"]["top_k"] == 23
    plan = tmp_path / "plan.json"
    assert invoke("plan", "demo", "--approx-threshold", "0.3", "-o", str(plan), "--db", f"sqlite:///{tmp_path / 'p.db'}").exit_code == 0
    assert json.loads(plan.read_text())["settings"]["approx_threshold"] == 0.3
    same = invoke("explain", "--approx-threshold", "0.3", "--plan", str(plan), "--out", str(tmp_path / "p"), "--quiet")
    assert same.exit_code == 0, same.output
    assert_one_line_error(invoke("explain", "--plan", str(plan), "--out", str(tmp_path / "q")), "projective-field threshold 0.3", "this run uses")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--patch", "300"], ["patch", "larger than the image"]),
        (["--stride", "0"], ["stride", "at least 1"]),
        (["--target", "99"], ["target 99", "outside"]),
        (["--mode", "magic"], ["magic"]),
        (["--device", "cuda"], ["cuda"] if not torch.cuda.is_available() else []),
        (["--approx-threshold", "0"], ["threshold", "(0, 1]"]),
        (["--approx-threshold", "0.5", "--mode", "naive"], ["threshold", "mode 'naive'"]),
        (["--drill-down", "1.5"], ["drill-down ratio", "(0, 1]"]),
        (["--drill-down", "0.5", "--coarse-stride", "4"], ["coarse stride", "at least the fine stride"]),
    ],
    ids=["patch-too-big", "stride-0", "target-outside", "unknown-mode", "no-cuda", "threshold-0", "threshold-naive", "ratio-big", "coarse-small"],
)
def test_bad_settings_give_one_line(args, words) -> None:
    if not words:
        pytest.skip("a GPU is present")
    assert_one_line_error(invoke("explain", "demo", *args), *words)


def test_bad_files_give_one_line(tmp_path, photo) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    assert_one_line_error(invoke("explain", "demo", str(text)), "not an image")
    assert_one_line_error(invoke("explain", "demo", str(tmp_path / "missing.png")), "does not exist")
    pickled = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)
    assert_one_line_error(invoke("explain", str(pickled), str(photo)), "never unpickles")
    assert_one_line_error(invoke("explain", "torchvision:nosuchnet", str(photo)), "nosuchnet")
    weights = tmp_path / "w.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, weights)
    assert_one_line_error(invoke("explain", "torchvision:resnet18", str(photo), "--weights", str(weights)), "do not fit")


@pytest.mark.parametrize(("name", "size"), [("inception_v3", 139), ("googlenet", 96)])
def test_random_weight_models_respond_to_occlusion(name: str, size: int) -> None:
    """torchvision's inits leave these two with scores that occlusion moves only by float noise."""
    from hyinf.models import load_model

    model = load_model(f"torchvision:{name}").module
    image = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    occluded = image.clone()
    occluded[..., 32:48, 32:48] = 0
    with torch.no_grad():
        scores, changed = model(image), model(occluded)
    assert float((scores - changed).abs().max()) > 1e-3 * float(scores.abs().max())


def test_untraceable_model_is_a_clear_error() -> None:
    import hyinf
    from hyinf.errors import ModelError

    class DataDependent(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean((2, 3)) if x.sum() > 0 else -x.mean((2, 3))

    with pytest.raises(ModelError, match="cannot trace DataDependent"):
        hyinf.explain(DataDependent(), torch.rand(3, 8, 8), patch=2, stride=2)
    naive = hyinf.explain(DataDependent(), torch.rand(3, 8, 8), patch=2, stride=2, mode="naive")
    assert naive.scores.shape == (4, 4)
