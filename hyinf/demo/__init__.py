"""A small CNN with trained weights and a sample image, so the default run shows a meaningful heatmap.

The weights were trained by `python -m hyinf.demo.train` on generated scenes (one filled shape on
a cluttered background); nothing is downloaded. They are stored as safetensors (no code on load).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

CLASSES = ("circle", "square", "triangle", "cross")
IMAGE_SIZE = 128


def demo_cnn() -> nn.Module:
    """The demo architecture (untrained)."""

    def block(cin: int, cout: int, pool: bool) -> list[nn.Module]:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        return [*layers, nn.MaxPool2d(2)] if pool else layers

    return nn.Sequential(
        *block(3, 16, True), *block(16, 32, True), *block(32, 64, True), *block(64, 64, False),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, len(CLASSES)),
    )


def asset(name: str) -> Path:
    return Path(str(resources.files(__package__).joinpath(name)))


WEIGHTS = "demo_cnn.safetensors"
SAMPLE = "sample.png"


def load_demo() -> nn.Module:
    """The demo CNN with its trained weights, in eval mode."""
    model = demo_cnn()
    model.load_state_dict(load_file(asset(WEIGHTS)))
    return model.eval()


#: The demo model takes (pixels - MEAN) / STD, pixels in [0, 1].
MEAN = (0.5, 0.5, 0.5)
STD = (1.0, 1.0, 1.0)


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - torch.tensor(MEAN).view(-1, 1, 1)) / torch.tensor(STD).view(-1, 1, 1)
