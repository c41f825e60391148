"""`hyinf.Occlusion` against `captum.attr.Occlusion` on captum's own fixtures, every input form, and CNNs."""

from __future__ import annotations

import pytest
import torch
import torchvision
from captum.attr import Occlusion as CaptumOcclusion
from captum.testing.helpers.basic_models import (
    BasicModel,
    BasicModel_ConvNet,
    BasicModel_ConvNet_One_Conv,
    BasicModel_ConvNetWithPaddingDilation,
    BasicModel_MultiLayer,
    BasicModel_MultiLayer_MultiInput,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from conftest import seeded

import hyinf
from hyinf.errors import CaptumArgumentError

#: captum's own tolerance for its small fixtures: summed absolute error.
FIXTURE_TOLERANCE = 1e-4
#: On CNNs: max absolute error relative to the largest attribution.
CNN_RELATIVE_TOLERANCE = 1e-4


def both(model, inputs, **kwargs):
    ours = hyinf.Occlusion(model)
    mine = ours.attribute(inputs, **kwargs)
    theirs = CaptumOcclusion(model).attribute(inputs, **kwargs)
    return mine, theirs, ours.last_run


def assert_same(mine, theirs, tolerance: float = FIXTURE_TOLERANCE) -> None:
    assert type(mine) is type(theirs)
    pairs = zip(mine, theirs) if isinstance(mine, tuple) else [(mine, theirs)]
    for a, b in pairs:
        assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
        assert float((a - b).abs().sum()) <= tolerance, (a, b)


def test_conv_fixture_runs_on_the_engine() -> None:
    seeded(0)
    x = torch.randn(3, 1, 10, 10)
    for kwargs in ({"sliding_window_shapes": (1, 3, 3), "target": 4},
                   {"sliding_window_shapes": (1, 4, 2), "strides": (1, 3, 2), "target": [0, 5, 9], "baselines": 0.25}):
        mine, theirs, run = both(BasicModel_ConvNet(), x, **kwargs)
        assert run.path == "engine", run
        assert_same(mine, theirs)


def test_conv_fixture_with_one_conv_and_optional_second_input() -> None:
    x = 10 * torch.rand(2, 1, 4, 4)
    mine, theirs, run = both(BasicModel_ConvNet_One_Conv(), x, sliding_window_shapes=(1, 2, 2), strides=(1, 1, 1), target=torch.tensor([1, 3]))
    assert run.path == "engine"
    assert_same(mine, theirs)
    second = torch.rand(2, 1, 4, 4)
    mine, theirs, run = both(BasicModel_ConvNet_One_Conv(), x, sliding_window_shapes=(1, 2, 2), target=0, additional_forward_args=(second,))
    assert run.path == "re-inference"
    assert_same(mine, theirs)


def test_padding_dilation_fixture() -> None:
    seeded(1)
    x = torch.randn(2, 1, 5, 5)
    mine, theirs, _ = both(BasicModel_ConvNetWithPaddingDilation(), x, sliding_window_shapes=(1, 2, 3), strides=(1, 2, 1), target=2)
    assert_same(mine, theirs)


def test_linear_fixture_with_targets_and_additional_args() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 4.0]])
    net = BasicModel_MultiLayer()
    for kwargs in (
        {"sliding_window_shapes": (2,), "target": 0},
        {"sliding_window_shapes": (1,), "target": [1, 0], "baselines": torch.tensor([[0.5, 0.5, 0.5], [1.0, 1.0, 1.0]])},
        {"sliding_window_shapes": (2,), "strides": 2, "target": torch.tensor([1, 1]), "baselines": torch.tensor([0.1, 0.2, 0.3])},
        {"sliding_window_shapes": (3,), "target": 1, "additional_forward_args": (torch.ones(2, 3),)},
        {"sliding_window_shapes": (2,), "target": (1, 0, 1), "additional_forward_args": (None, True)},
        {"sliding_window_shapes": (1,), "target": [(0, 1, 0), (1, 0, 1)], "additional_forward_args": (None, True), "perturbations_per_eval": 2},
    ):
        mine, theirs, run = both(net, x, **kwargs)
        assert run.path == "re-inference"
        assert_same(mine, theirs)


def test_tuple_of_inputs_with_per_input_windows_strides_and_baselines() -> None:
    net = BasicModel_MultiLayer_MultiInput()
    x1, x2, x3 = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([[2.0, -1.0, 1.0]])
    mine, theirs, _ = both(
        net, (x1, x2, x3), sliding_window_shapes=((1,), (2,), (3,)), strides=(1, (1,), 2),
        baselines=(0.5, torch.tensor([[1.0, 1.0, 1.0]]), 0), target=0, additional_forward_args=(2,),
    )
    assert isinstance(mine, tuple) and len(mine) == 3
    assert_same(mine, theirs)


def test_integer_and_zero_d_and_one_d_features() -> None:
    ints = torch.tensor([[2, 7, 1, 4], [3, 0, 5, 9]])
    mine, theirs, _ = both(lambda x: (x * torch.arange(4)).sum(1), ints, sliding_window_shapes=(2,), baselines=1)
    assert_same(mine, theirs)
    scalars = torch.tensor([0.5, -2.0, 3.0])
    mine, theirs, _ = both(lambda x: torch.sigmoid(x * 3), scalars, sliding_window_shapes=((),))
    assert_same(mine, theirs)
    mine, theirs, _ = both(BasicModel(), torch.tensor([[0.2, 1.5, -0.3]]), sliding_window_shapes=(1,))
    assert_same(mine, theirs)


def test_scalar_output_forward() -> None:
    x = torch.rand(3, 4)
    mine, theirs, run = both(lambda x: x.pow(2).sum(), x, sliding_window_shapes=(2,))
    assert run.path == "re-inference"
    assert_same(mine, theirs)


def torchvision_cnn(name: str) -> nn.Module:
    seeded(2)
    model = getattr(torchvision.models, name)(weights=None, num_classes=10).eval()
    for m in model.modules():  # distinct outputs, so every window matters
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight)
    return model


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_torchvision_cnns_batch_of_examples(name: str) -> None:
    model = torchvision_cnn(name)
    x = torch.randn(2, 3, 40, 36, generator=torch.Generator().manual_seed(3))
    mine, theirs, run = both(model, x, sliding_window_shapes=(3, 8, 6), strides=(3, 6, 5), target=[3, 7], baselines=0.0, perturbations_per_eval=16)
    assert run.path == "engine"
    scale = float(theirs.abs().max())
    assert mine.shape == theirs.shape and mine.dtype == theirs.dtype
    assert float((mine - theirs).abs().max()) <= CNN_RELATIVE_TOLERANCE * scale


@settings(max_examples=25, deadline=None)
@given(
    window=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    stride=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    baseline=st.sampled_from([0.0, -1.0, "per-channel", "per-example"]),
    target=st.sampled_from([0, 5, "list", "tensor"]),
)
def test_random_windows_strides_baselines_targets(window, stride, baseline, target) -> None:
    stride = (min(stride[0], window[0]), min(stride[1], window[1]))
    seeded(4)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 6)).eval()
    x = torch.randn(2, 3, 12, 10, generator=torch.Generator().manual_seed(5))
    baselines = {"per-channel": torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1), "per-example": torch.tensor([0.5, -0.5]).view(2, 1, 1, 1)}.get(baseline, baseline)
    targets = {"list": [1, 4], "tensor": torch.tensor([2, 3])}.get(target, target)
    kwargs = {"sliding_window_shapes": (3, *window), "strides": (3, *stride), "baselines": baselines, "target": targets}
    mine, theirs, run = both(model, x, **kwargs)
    assert run.path == "engine"
    assert_same(mine, theirs, FIXTURE_TOLERANCE * max(1.0, float(theirs.abs().sum())))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sliding_window_shapes": (1, 11, 3)}, "larger than the input"),
        ({"sliding_window_shapes": (1, 3)}, "tuple of 3 ints"),
        ({"sliding_window_shapes": (1, 3, 3), "strides": (1, 4, 1)}, "larger than its sliding window"),
        ({"sliding_window_shapes": (1, 3, 3), "strides": (1, 1)}, "tuple of 3 ints"),
        ({"sliding_window_shapes": (1, 3, 3), "target": 10}, "outside the model's output"),
        ({"sliding_window_shapes": (1, 3, 3), "target": [1, 2]}, "one entry per example"),
        ({"sliding_window_shapes": (1, 3, 3), "perturbations_per_eval": 0}, "perturbations_per_eval"),
        ({"sliding_window_shapes": (1, 3, 3), "baselines": torch.zeros(2, 2)}, "does not broadcast"),
    ],
)
def test_bad_arguments_are_assertion_errors(kwargs, message) -> None:
    x = torch.randn(3, 1, 10, 10)
    with pytest.raises(AssertionError, match=message) as info:
        hyinf.Occlusion(BasicModel_ConvNet()).attribute(x, **{"target": 0, **kwargs})
    assert isinstance(info.value, CaptumArgumentError) and isinstance(info.value, ValueError)


def test_captum_surface(capsys) -> None:
    occlusion = hyinf.Occlusion(BasicModel_ConvNet())
    assert occlusion.has_convergence_delta() is False
    assert occlusion.multiplies_by_inputs is CaptumOcclusion(BasicModel_ConvNet()).multiplies_by_inputs
    with pytest.raises(NotImplementedError):
        occlusion.attribute_future()
    occlusion.attribute(torch.randn(1, 1, 10, 10), sliding_window_shapes=(1, 3, 3), target=0, show_progress=True)
    assert "Occlusion attribution" in capsys.readouterr().err


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it, captum's way still works."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).mean((2, 3))
        return y if y.sum() > 0 else -y


def test_models_the_engine_cannot_take_fall_back_to_re_inference() -> None:
    seeded(6)
    x = torch.randn(2, 1, 8, 8)
    mine, theirs, run = both(Untraceable(), x, sliding_window_shapes=(1, 3, 3), target=1)
    assert run.path == "re-inference" and "cannot trace" in run.reason
    assert_same(mine, theirs)
    training = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(72, 3)).train()
    mine, theirs, run = both(training, x, sliding_window_shapes=(1, 2, 2), target=0)
    assert run.path == "re-inference" and "training mode" in run.reason
    assert_same(mine, theirs)
