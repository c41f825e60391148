"""Adaptive drill-down: a coarse pass, then the fine grid only where the coarse heatmap is highest.

Every fine position belongs to the cell of the coarse position whose patch start is nearest along
each axis. The fine pass evaluates the fine positions of the top `ratio` of coarse cells (ranked by
the coarse heatmap, the score drop); the others take the coarse scores interpolated (bilinearly,
over patch starts) at their position. Fine positions that are coarse positions too are copied from
the coarse pass (the same occluded image). Ratio 1 evaluates every fine position: the exact heatmap.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from hyinf.errors import SettingsError
from hyinf.graph.geometry import OcclusionGrid


def check_ratio(ratio: float) -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
        raise SettingsError(f"the drill-down ratio must be in (0, 1] (1 = exact), got {ratio!r}")


def check_drill_down(ratio: float, coarse_stride: tuple[int, int], fine: OcclusionGrid) -> None:
    check_ratio(ratio)
    if any(c < s for c, s in zip(coarse_stride, fine.stride)):
        raise SettingsError(f"the coarse stride {coarse_stride} must be at least the fine stride {fine.stride}; "
                            "use a larger --coarse-stride")


def _nearest(fine: OcclusionGrid, coarse: OcclusionGrid, axis: int) -> np.ndarray:
    """For each fine grid index along `axis`, the coarse grid index whose patch start is nearest."""
    f, c = fine.all_starts(axis), coarse.all_starts(axis)
    return np.abs(f[:, None] - c[None, :]).argmin(axis=1)


def cells(fine: OcclusionGrid, coarse: OcclusionGrid) -> np.ndarray:
    """(fine rows, fine cols) coarse position numbers (row-major) each fine position belongs to."""
    rows, cols = _nearest(fine, coarse, 0), _nearest(fine, coarse, 1)
    return rows[:, None] * coarse.shape[1] + cols[None, :]


def nested(fine: OcclusionGrid, coarse: OcclusionGrid) -> bool:
    """Whether every coarse position is a fine one (e.g. stride 16 over stride 8 when both grids end
    at the same start): then the fine grid's engine evaluates the coarse pass too."""
    return all(np.isin(coarse.all_starts(a), fine.all_starts(a)).all() for a in (0, 1))


def shared(fine: OcclusionGrid, coarse: OcclusionGrid) -> np.ndarray:
    """(fine positions,) booleans: which fine positions have a coarse position's patch."""
    axes = [np.isin(fine.all_starts(a), coarse.all_starts(a)) for a in (0, 1)]
    return (axes[0][:, None] & axes[1][None, :]).reshape(-1)


def selected(coarse_heatmap: torch.Tensor, fine: OcclusionGrid, coarse: OcclusionGrid, ratio: float) -> np.ndarray:
    """(fine positions,) booleans: the fine positions in the top `ratio` of coarse cells."""
    drops = coarse_heatmap.reshape(-1).double().cpu().numpy()
    keep = math.ceil(ratio * len(drops))
    top = np.zeros(len(drops), dtype=bool)
    top[np.argsort(-drops, kind="stable")[:keep]] = True
    return top[cells(fine, coarse)].reshape(-1)


def _interpolation(fine: OcclusionGrid, coarse: OcclusionGrid, axis: int) -> np.ndarray:
    """(fine, coarse) weights that interpolate linearly between coarse patch starts along `axis`."""
    f, c = fine.all_starts(axis), coarse.all_starts(axis)
    if len(c) == 1:
        return np.ones((len(f), 1))
    return np.stack([np.interp(f, c, unit) for unit in np.eye(len(c))], axis=1)


def combine(fine_scores: torch.Tensor, computed: torch.Tensor, coarse_scores: torch.Tensor, fine: OcclusionGrid,
            coarse: OcclusionGrid) -> torch.Tensor:
    """Fine-grid scores: computed ones where `computed`, else the coarse scores interpolated there
    (exactly the coarse score where the position is a coarse one)."""
    rows, cols = (torch.as_tensor(_interpolation(fine, coarse, a), dtype=torch.float64, device=coarse_scores.device) for a in (0, 1))
    filled = rows @ coarse_scores.reshape(coarse.shape).double() @ cols.T
    return torch.where(computed, fine_scores, filled.reshape(-1).to(fine_scores.dtype))
