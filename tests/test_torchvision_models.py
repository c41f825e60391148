"""Every torchvision classification family: all modes and random mixed plans equal naive re-inference."""

from __future__ import annotations

import pytest
import torch
import torchvision

from conftest import assert_matches_naive, seeded

# (constructor, image size): reduced sizes keep the suite fast; inception_v3 needs at least 75 pixels.
FAMILIES = [
    ("vgg11_bn", 48),
    ("resnet18", 64),
    ("resnet50", 64),
    ("resnext50_32x4d", 48),
    ("wide_resnet50_2", 48),
    ("densenet121", 64),
    ("googlenet", 64),
    ("inception_v3", 80),
    ("mobilenet_v2", 64),
    ("mobilenet_v3_small", 64),
    ("efficientnet_b0", 64),
    ("regnet_y_400mf", 64),
    ("shufflenet_v2_x0_5", 64),
    ("squeezenet1_1", 64),
    ("mnasnet0_5", 64),
    ("convnext_tiny", 64),
]


def enliven(model: torch.nn.Module) -> torch.nn.Module:
    """Weights that make every layer matter: some torchvision inits give near-constant outputs,
    and identity batch norms would not test that batch norm is evaluated at all."""
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                torch.nn.init.uniform_(m.bias, -0.1, 0.1)
        elif isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.running_mean, -0.1, 0.1)
            torch.nn.init.uniform_(m.running_var, 0.5, 1.5)
            torch.nn.init.uniform_(m.weight, 0.5, 1.0)
            torch.nn.init.uniform_(m.bias, -0.1, 0.1)
    return model


def build(name: str) -> torch.nn.Module:
    seeded(0)
    extra = {"init_weights": False} if name in ("googlenet", "inception_v3") else {}
    if name == "inception_v3":
        extra["aux_logits"] = False
    return enliven(getattr(torchvision.models, name)(weights=None, **extra)).eval()


@pytest.mark.parametrize(("name", "size"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_family_matches_naive(name: str, size: int) -> None:
    model = build(name)
    image = torch.randn(3, size, size, generator=torch.Generator().manual_seed(1))
    assert_matches_naive(model, image, patch=11, stride=9, plans=1)


def test_softmax_output_matches_naive() -> None:
    model = build("resnet18")
    image = torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(2))
    assert_matches_naive(model, image, patch=16, stride=12, output="softmax")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vgg16", "resnet18", "inception_v3"])
def test_full_size_matches_naive(name: str) -> None:
    """Full-size images, as users run them (minutes; run with -m slow)."""
    model = build(name)
    size = 299 if name == "inception_v3" else 224
    image = torch.randn(3, size, size, generator=torch.Generator().manual_seed(3))
    assert_matches_naive(model, image, patch=16, stride=24, plans=1)
