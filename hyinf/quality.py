"""How far an approximate heatmap is from the exact one."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from skimage.metrics import structural_similarity

TOP_FRACTION = 0.1  # top-k agreement compares the 10% of positions with the largest drops


@dataclass(frozen=True)
class Quality:
    """Distance of an approximate heatmap from the exact one (both on the same grid).

    `ssim`: structural similarity (1 = identical structure), over the exact heatmap's value range;
    `max_abs` / `mean_abs`: absolute differences of the score drops; `top_agreement`: the share of
    the exact heatmap's `top_k` most important positions that the approximate heatmap also ranks top.
    """

    ssim: float
    max_abs: float
    mean_abs: float
    top_agreement: float
    top_k: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def summary(self) -> str:
        return (f"SSIM {self.ssim:.3f}, max |diff| {self.max_abs:.3g}, mean |diff| {self.mean_abs:.3g}, "
                f"top-{self.top_k} agreement {self.top_agreement:.0%}")


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    side = min(a.shape)
    if side < 3:  # too small for a window: fall back to equality of the values
        return float(np.allclose(a, b))
    span = float(b.max() - b.min())
    if span == 0:
        return float(np.allclose(a, b))
    window = min(7, side if side % 2 else side - 1)  # scikit-image's default window, shrunk for small grids
    return float(structural_similarity(a, b, win_size=window, data_range=span))


def compare(approx: torch.Tensor, exact: torch.Tensor) -> Quality:
    """The quality of heatmap `approx` against the exact heatmap `exact` (same shape)."""
    a, b = approx.double().cpu().numpy(), exact.double().cpu().numpy()
    diff = np.abs(a - b)
    k = max(1, math.ceil(TOP_FRACTION * b.size))
    top_a = set(np.argsort(-a.reshape(-1), kind="stable")[:k].tolist())
    top_b = set(np.argsort(-b.reshape(-1), kind="stable")[:k].tolist())
    return Quality(ssim=_ssim(a, b), max_abs=float(diff.max()), mean_abs=float(diff.mean()),
                   top_agreement=len(top_a & top_b) / k, top_k=k)
