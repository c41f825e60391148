"""`hyinf.Explainer`: one model and settings over many images; `explain_batch` equals naive re-inference
image by image, whatever images share its chunks."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import hyinf
from conftest import assert_close_to, seeded
from hyinf.demo import load_demo
from hyinf.errors import SettingsError
from test_onnx import _export


def _naive(model, image, target=None, **settings):
    return hyinf.explain(model, image, target=target, mode="naive", **settings)


@pytest.mark.parametrize("mode", ["hybrid", "incremental", "full"])
def test_batches_of_mixed_sizes_and_targets_equal_naive(mode: str) -> None:
    """Images of two sizes (two groups), given and predicted targets, softmax scores."""
    seeded()
    model = load_demo()
    images = [torch.rand(3, 64, 64) for _ in range(5)] + [torch.rand(3, 48, 56) for _ in range(3)]
    targets = [None, 1, 2, None, 0, 3, None, 1]
    explainer = hyinf.Explainer(model, patch=8, stride=4, mode=mode, output="softmax")
    results = explainer.explain_batch(images, targets)
    for image, target, result in zip(images, targets, results, strict=True):
        reference = _naive(model, image, target, patch=8, stride=4, output="softmax")
        assert result.target == reference.target and result.grid == reference.grid
        assert result.base_score == pytest.approx(reference.base_score, rel=1e-5)
        assert_close_to(reference.scores, result.scores, f"{mode}, target {target}, {tuple(image.shape)}")
        assert_close_to(reference.attribution, result.attribution, "attribution")
    assert results[1].target == 1 and results[4].target == 0  # given targets are kept


def test_groups_share_chunks_and_equal_one_by_one() -> None:
    """Group size follows the chunk; results are those of explaining each image alone."""
    seeded(1)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    images = [torch.rand(3, 32, 32) for _ in range(4)]
    explainer = hyinf.Explainer(model, patch=8, stride=4, batch_size=512, backend="torch")  # torch groups images
    assert explainer._group_size(images[0][None], len(images)) == len(images)  # 49 positions: all four fit one chunk
    batched = explainer.explain_batch(images)
    for image, result in zip(images, batched, strict=True):
        alone = explainer.explain(image)
        assert_close_to(alone.scores, result.scores, "batched against alone")
        assert_close_to(_naive(model, image, patch=8, stride=4).scores, result.scores, "batched against naive")


def test_an_onnx_file_with_a_fixed_batch_of_one_is_checked_image_by_image(tmp_path) -> None:
    seeded(2)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    path = tmp_path / "fixed.onnx"
    path.write_bytes(_export(model, 32, dynamo=False, dynamic_batch=False).SerializeToString())
    images = [torch.rand(3, 32, 32) for _ in range(3)]
    results = hyinf.Explainer(str(path), patch=8, stride=4).explain_batch(images)
    for image, result in zip(images, results, strict=True):
        assert_close_to(_naive(model, image, patch=8, stride=4).scores, result.scores, "onnx batch")


def test_threshold_approximations_batch_like_single_runs() -> None:
    seeded(3)
    model = load_demo()
    images = [torch.rand(3, 64, 64) for _ in range(3)]
    explainer = hyinf.Explainer(model, patch=8, stride=4, approx_threshold=0.5, check_exact=True)
    batched = explainer.explain_batch(images)
    for image, result in zip(images, batched, strict=True):
        alone = hyinf.explain(model, image, patch=8, stride=4, approx_threshold=0.5)
        assert_close_to(alone.scores, result.scores, "approximate batch")
        assert result.approximation is not None and result.approximation.quality is not None
        exact = _naive(model, image, patch=8, stride=4)
        assert result.approximation.quality.max_abs == pytest.approx(float((result.heatmap - exact.heatmap).abs().max()), abs=1e-4)


def test_drill_down_and_naive_run_image_by_image() -> None:
    seeded(4)
    model = load_demo()
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    for settings in ({"mode": "naive"}, {"drill_down": 0.5}):
        explainer = hyinf.Explainer(model, patch=8, stride=4, **settings)
        for image, result in zip(images, explainer.explain_batch(images), strict=True):
            alone = hyinf.explain(model, image, patch=8, stride=4, **settings)
            assert_close_to(alone.scores, result.scores, f"{settings}")


@pytest.mark.parametrize(("settings", "words"), [
    ({"mode": "fast"}, "mode must be one of"),
    ({"backend": "tensorrt"}, "backend must be one of"),
    ({"output": "logits"}, "output must be"),
    ({"batch_size": 0}, "batch_size must be at least 1"),
    ({"drill_down": 2}, "drill-down ratio must be in (0, 1]"),
    ({"device": "tpu"}, "device"),
])
def test_bad_settings_are_refused_at_construction(settings, words) -> None:
    with pytest.raises(SettingsError) as info:
        hyinf.Explainer(load_demo(), **settings)
    assert words in str(info.value)


def test_bad_batches_are_refused() -> None:
    explainer = hyinf.Explainer(load_demo(), patch=8, stride=4)
    with pytest.raises(SettingsError, match="3 images but 2 targets"):
        explainer.explain_batch([torch.rand(3, 64, 64)] * 3, [None, 1])
    with pytest.raises(SettingsError, match="outside the model's 4 outputs"):
        explainer.explain_batch([torch.rand(3, 64, 64)] * 2, [None, 7])
    with pytest.raises(SettingsError, match="model must be"):
        hyinf.Explainer(42)
    assert explainer.explain_batch([]) == []
