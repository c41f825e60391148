"""GPU settings: float32 and TF32 precision, and CUDA graphs. The switches are refused in one line
where they cannot apply (every machine checks that); what they compute is checked against naive
re-inference on a CUDA GPU only (`benchmarks/gpu_session.sh` runs these with the GPU suite)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import hyinf
from conftest import assert_close_to, seeded
from hyinf.errors import SettingsError
from hyinf.runtime.precision import distance, tensor_cores
from test_cli import assert_one_line_error, invoke

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


@pytest.mark.parametrize(("settings", "words"), [
    ({"precision": "tf32"}, "precision tf32 is a CUDA GPU's"),
    ({"precision": "float16"}, "precision must be one of float32, tf32"),
    ({"cuda_graphs": True}, "CUDA graphs replay hyinf's engine on a CUDA GPU"),
    ({"cuda_graphs": True, "mode": "naive", "device": "cuda"}, "mode other than naive"),
    ({"precision": "tf32", "backend": "ort", "device": "cuda"}, "runs on the torch backend"),
])
def test_gpu_settings_that_cannot_apply_are_refused(settings, words) -> None:
    if settings.get("device") == "cuda" and not CUDA:
        pytest.skip("the device check comes first without a GPU")
    with pytest.raises(SettingsError, match=words):
        hyinf.Explainer(nn.Conv2d(3, 2, 3), **settings)


@pytest.mark.parametrize(("args", "words"), [
    (["--precision", "tf32"], ["precision tf32", "leave out --precision"]),
    (["--cuda-graphs"], ["need device cuda"]),
    (["--precision", "bf16"], ["--precision"]),
])
def test_the_cli_refuses_them_before_the_model_loads(tmp_path, args, words) -> None:
    if CUDA and args != ["--precision", "bf16"]:
        pytest.skip("they apply on this machine")
    assert_one_line_error(invoke("explain", "demo", *args, "--out", str(tmp_path / "out")), *words)


def test_the_callers_tf32_flags_come_back_even_after_an_error() -> None:
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        with pytest.raises(ValueError), tensor_cores(False):
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
            raise ValueError("inside")
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    assert distance(torch.tensor([1.0, -4.0]), torch.tensor([1.0, -4.0])) == 0
    assert distance(torch.tensor([1.0, -3.0]), torch.tensor([1.0, -4.0])) == pytest.approx(0.25)


def test_report_json_records_the_precision(tmp_path) -> None:
    out = tmp_path / "out"
    assert invoke("explain", "demo", "--patch", "32", "--stride", "32", "--out", str(out), "--quiet").exit_code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["precision"] == "float32" and "precision_distance" not in report


def _tailed() -> nn.Module:
    """Convolutions, a residual sum and a linear tail (the shared, windowed tail path)."""
    seeded()

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
            self.b = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
            self.pool = nn.MaxPool2d(2)
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16 * 16, 32), nn.ReLU(), nn.Linear(32, 10))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.a(x)
            return self.head(self.pool(x + self.b(x)))

    return Net().eval()


def _pooled() -> nn.Module:
    seeded(1)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()


@needs_cuda
@pytest.mark.parametrize("make", [_tailed, _pooled])
def test_cuda_graphs_equal_naive_over_images_batches_and_drill_downs(make) -> None:
    model = make().cuda()
    images = [torch.randn(3, 32, 32) for _ in range(3)]
    common = {"patch": 6, "stride": 2, "device": "cuda"}
    naive = [hyinf.explain(model, image, mode="naive", **common) for image in images]
    graphed = hyinf.Explainer(model, cuda_graphs=True, **common)
    for image, reference in zip(images, naive, strict=True):  # each image copied into the captured buffers
        assert_close_to(reference.scores, graphed.explain(image).scores.cpu(), "one image")
    for result, reference in zip(graphed.explain_batch(images), naive, strict=True):  # another batch shape
        assert_close_to(reference.scores, result.scores.cpu(), "a batch")
    for mode in ("incremental", "full"):
        alone = hyinf.Explainer(model, mode=mode, cuda_graphs=True, batch_size=7, **common)  # a short last chunk
        assert_close_to(naive[0].scores, alone.explain(images[0]).scores.cpu(), mode)
    drilled = dict(common, drill_down=0.4)
    eager = hyinf.explain(model, images[1], **drilled)
    assert_close_to(eager.scores, hyinf.Explainer(model, cuda_graphs=True, **drilled).explain(images[1]).scores.cpu(), "drill-down")


@needs_cuda
def test_float32_is_exact_whatever_the_process_set_and_tf32_reports_its_distance() -> None:
    model = _tailed().cuda()
    image = torch.randn(3, 32, 32)
    reference = hyinf.explain(model, image, patch=6, stride=4, mode="naive", device="cpu")  # float32 on the CPU
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        exact = hyinf.explain(model, image, patch=6, stride=4, device="cuda")
        assert exact.precision == "float32" and exact.precision_distance is None
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32  # the caller's, back
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    assert_close_to(reference.scores, exact.scores.cpu(), "float32 on the GPU")
    fast = hyinf.explain(model, image, patch=6, stride=4, device="cuda", precision="tf32")
    assert fast.precision == "tf32" and fast.precision_distance is not None and 0 <= fast.precision_distance < 1e-2
