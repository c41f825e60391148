"""Attribution equals captum.attr.Occlusion's; edge cases of the occlusion grid equal naive."""

from __future__ import annotations

import pytest
import torch
import torchvision
from captum.attr import Occlusion
from torch import nn

from conftest import assert_close_to, assert_matches_naive, seeded

import hyinf


def small_cnn() -> nn.Module:
    seeded(3)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()


@pytest.mark.parametrize(
    ("size", "patch", "stride"),
    [((20, 20), 4, 4), ((21, 17), (5, 3), (3, 2)), ((16, 16), 6, 4), ((13, 19), (13, 19), 1), ((12, 12), 1, 1)],
    ids=["aligned", "non-square-cut-off", "overlapping-cut-off", "whole-image", "one-pixel"],
)
def test_attribution_equals_captum(size: tuple[int, int], patch, stride) -> None:
    model = small_cnn()
    image = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(4))
    ph, pw = (patch, patch) if isinstance(patch, int) else patch
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    result = hyinf.explain(model, image, patch=patch, stride=stride, target=2, mode="incremental")
    expected = Occlusion(model).attribute(image, sliding_window_shapes=(3, ph, pw), strides=(3, sh, sw), target=2, baselines=0.0)
    assert result.attribution.shape == image.shape
    assert_close_to(expected, result.attribution, "attribution vs captum")


def test_attribution_keeps_unbatched_shape_and_patch_value() -> None:
    model = small_cnn()
    image = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(5))
    result = hyinf.explain(model, image, patch=4, stride=4, patch_value=0.5, target=1)
    expected = Occlusion(model).attribute(image[None], sliding_window_shapes=(3, 4, 4), strides=(3, 4, 4), target=1, baselines=0.5)
    assert result.attribution.shape == image.shape
    assert_close_to(expected[0], result.attribution, "attribution with patch value 0.5")


@pytest.mark.parametrize(
    ("size", "patch", "stride"),
    [
        ((32, 32), 8, 3),  # patch larger than the stride
        ((32, 32), 3, 8),  # patch smaller than the stride: pixels no window covers
        ((30, 27), 7, 5),  # (H - p) not a multiple of s: cut-off windows touch the bottom and right borders
        ((24, 40), (5, 9), (4, 7)),  # non-square image, patch and stride
        ((24, 24), 1, 5),  # a one-pixel patch
        ((24, 24), 24, 1),  # a patch as large as the image: a single position
        ((24, 24), (24, 3), (1, 3)),  # one row of positions
    ],
)
def test_grid_edge_cases_match_naive(size, patch, stride) -> None:
    model = small_cnn()
    image = torch.randn(3, *size, generator=torch.Generator().manual_seed(6))
    assert_matches_naive(model, image, patch=patch, stride=stride, plans=2)


def test_uncovered_pixels_get_zero_attribution() -> None:
    result = hyinf.explain(small_cnn(), torch.randn(3, 20, 20), patch=2, stride=5)
    covered = torch.zeros(20, 20, dtype=torch.bool)
    for r in range(0, 20, 5):
        for c in range(0, 20, 5):
            covered[r : r + 2, c : c + 2] = True
    assert (result.attribution[:, ~covered] == 0).all()


def test_per_channel_patch_value_matches_naive() -> None:
    image = torch.randn(3, 20, 20, generator=torch.Generator().manual_seed(7))
    assert_matches_naive(small_cnn(), image, patch=5, stride=3, patch_value=torch.tensor([0.1, -0.2, 0.3]))


def test_image_size_other_than_the_models_usual() -> None:
    seeded(8)
    model = torchvision.models.resnet18(weights=None, num_classes=7)
    image = torch.randn(3, 50, 70, generator=torch.Generator().manual_seed(8))
    assert_matches_naive(model, image, patch=12, stride=10)


def test_chunking_does_not_change_the_answer() -> None:
    model = small_cnn()
    image = torch.randn(3, 24, 24, generator=torch.Generator().manual_seed(9))
    one = hyinf.explain(model, image, patch=5, stride=2, mode="incremental", batch_size=1)
    for batch_size in (3, 64, 1000):
        other = hyinf.explain(model, image, patch=5, stride=2, mode="incremental", batch_size=batch_size)
        assert_close_to(one.scores, other.scores, f"batch size {batch_size}")
    limited = hyinf.explain(model, image, patch=5, stride=2, mode="incremental", max_memory=200_000)
    assert limited.batch_size < 64
    assert_close_to(one.scores, limited.scores, "memory-limited chunks")


class AliasedInplace(nn.Module):
    """Ops hyinf may run in place, whose input is still needed: an identity (dropout in eval) shares its
    input's memory, so running the ReLU in place would change y."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.relu = nn.ReLU(inplace=inplace)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        z = self.relu(self.drop(y))
        w = y - z
        w += 1.0  # in place on a value read nowhere else
        return self.head(torch.relu_(w).mean((2, 3)))


def test_inplace_kernels_never_overwrite_live_values() -> None:
    seeded(10)
    image = torch.randn(3, 18, 18, generator=torch.Generator().manual_seed(10))
    assert_matches_naive(AliasedInplace(), image, patch=4, stride=3, plans=3)


def test_a_model_that_reads_what_it_overwrote_is_refused() -> None:
    """With inplace=True the model itself overwrites y before reading it again; hyinf's graph could not
    reproduce that, so it says so instead of returning different numbers."""
    from hyinf.errors import ModelError

    seeded(10)
    with pytest.raises(ModelError, match="overwrites"):
        hyinf.explain(AliasedInplace(inplace=True), torch.randn(3, 18, 18), patch=4, stride=3)
