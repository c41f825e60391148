"""The occluded images themselves: shared by naive re-inference and the engine's input node."""

from __future__ import annotations

import numpy as np
import torch

from hyinf.errors import SettingsError
from hyinf.graph.geometry import OcclusionGrid
from hyinf.runtime.windows import span_mask


def patch_fill(value: float | torch.Tensor, channels: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The patch's value as a (1, C, 1, 1) tensor, from a scalar or one value per channel."""
    fill = torch.as_tensor(value, dtype=dtype, device=device).flatten()
    if not torch.isfinite(fill).all():
        raise SettingsError(f"the patch value must be finite, got {value!r}")
    if fill.numel() not in (1, channels):
        raise SettingsError(f"patch value must be a scalar or {channels} per-channel values, got {fill.numel()}")
    return fill.expand(channels).reshape(1, channels, 1, 1)


class PatchSpans:
    """Per-position patch rows and columns on a device, indexed by grid row and grid column."""

    def __init__(self, grid: OcclusionGrid, device: torch.device) -> None:
        self.grid = grid
        (h, w), (ph, pw) = grid.image_size, grid.patch
        r0, c0 = grid.starts(0), grid.starts(1)
        self.row_lo = torch.as_tensor(r0, device=device)
        self.row_hi = torch.as_tensor(np.minimum(r0 + ph, h), device=device)
        self.col_lo = torch.as_tensor(c0, device=device)
        self.col_hi = torch.as_tensor(np.minimum(c0 + pw, w), device=device)

    def mask(self, i: torch.Tensor, j: torch.Tensor, top: torch.Tensor, left: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """(N, 1, rows, cols): which pixels of each window (at top, left) the patch covers."""
        mr = span_mask(self.row_lo[i], self.row_hi[i], top, rows)
        mc = span_mask(self.col_lo[j], self.col_hi[j], left, cols)
        return (mr[:, :, None] & mc[:, None, :])[:, None]

    def occlude(self, image: torch.Tensor, i: torch.Tensor, j: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
        """Whole occluded images (N, C, H, W) for grid positions (i[n], j[n])."""
        zeros = torch.zeros_like(i)
        mask = self.mask(i, j, zeros, zeros, *self.grid.image_size)
        return torch.where(mask, fill, image)
