"""Impossible settings given to the Python API raise hyinf's errors, with messages that say what to fix."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hyinf
from hyinf.errors import SettingsError


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "fast"}, "mode must be one of"),
        ({"output": "logits"}, "output must be"),
        ({"backend": "tvm"}, "backend must be one of torch, ort, auto, got 'tvm'"),
        ({"patch": 0}, "at least 1 pixel"),
        ({"stride": (2, 0)}, "at least 1 pixel"),
        ({"patch": (3, 3, 3)}, "(height, width) pair"),
        ({"patch": 17}, "larger than the image"),
        ({"target": 3}, "outside the model's 3 outputs"),
        ({"target": -1}, "outside the model's 3 outputs"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"max_memory": -5}, "max_memory must be a positive"),
        ({"plan": hyinf.Plan({"no_such_node": hyinf.Mode.FULL})}, "made for another model"),
        ({"patch_value": torch.zeros(2)}, "per-channel"),
    ],
)
def test_bad_settings(kwargs, message) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        hyinf.explain(tiny(), torch.rand(3, 16, 16), **{"patch": 4, "stride": 4, **kwargs})


@pytest.mark.parametrize("shape", [(16, 16), (2, 3, 16, 16), (1, 1, 3, 16, 16)])
def test_bad_image_shapes(shape) -> None:
    with pytest.raises(SettingsError, match="image must have shape"):
        hyinf.explain(tiny(), torch.rand(shape), patch=4, stride=4)
