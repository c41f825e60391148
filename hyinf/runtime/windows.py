"""Vectorised window gathers and pastes over a batch of occlusion positions.

Tensors here have their two spatial axes last: (batch, *middle, rows, cols). Each function moves
whole windows with one indexing kernel, whatever the number of positions: a Python loop over
positions would dominate the run time.
"""

from __future__ import annotations

import torch


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1, t.shape[-2], t.shape[-1])


def gather_shared(src: torch.Tensor, top: torch.Tensor, left: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Window n of `src` (one map, batch 1) starting at (top[n], left[n]): (N, *middle, rows, cols)."""
    flat = _flat(src)[0]
    views = flat.unfold(1, rows, 1).unfold(2, cols, 1)  # (M, H-rows+1, W-cols+1, rows, cols)
    out = views.permute(1, 2, 0, 3, 4)[top, left]
    return out.reshape(len(top), *src.shape[1:-2], rows, cols)


def gather_each(src: torch.Tensor, top: torch.Tensor, left: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Window n of map n of `src` (batch N) starting at (top[n], left[n])."""
    views = _flat(src).unfold(2, rows, 1).unfold(3, cols, 1)  # (N, M, A, B, rows, cols)
    n = torch.arange(src.shape[0], device=src.device)
    out = views[n, :, top, left]
    return out.reshape(src.shape[0], *src.shape[1:-2], rows, cols)


def paste(dst: torch.Tensor, win: torch.Tensor, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """Write window n of `win` into `dst[n]` at (top[n], left[n]); every window must fit. Returns `dst`."""
    n_pos, h, w = win.shape[0], win.shape[-2], win.shape[-1]
    dev = win.device
    rows = (top[:, None] + torch.arange(h, device=dev))[:, :, None]
    cols = (left[:, None] + torch.arange(w, device=dev))[:, None, :]
    n = torch.arange(n_pos, device=dev)[:, None, None]
    _flat(dst)[n, :, rows, cols] = _flat(win).permute(0, 2, 3, 1)
    return dst


def overlay(dst: torch.Tensor, win: torch.Tensor, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """Like `paste`, but windows may stick out of `dst`: only their overlap is written (new tensor)."""
    n_pos, h, w = win.shape[0], win.shape[-2], win.shape[-1]
    rows_out, cols_out = dst.shape[-2], dst.shape[-1]
    dev = win.device
    rr = torch.arange(rows_out, device=dev)[None] - top[:, None]  # row of `win` seen at each row of `dst`
    cc = torch.arange(cols_out, device=dev)[None] - left[:, None]
    inside = ((rr >= 0) & (rr < h))[:, :, None] & ((cc >= 0) & (cc < w))[:, None, :]
    n = torch.arange(n_pos, device=dev)[:, None, None]
    picked = _flat(win)[n, :, rr.clamp(0, h - 1)[:, :, None], cc.clamp(0, w - 1)[:, None, :]]
    picked = picked.permute(0, 3, 1, 2).reshape(dst.shape)
    mask = inside.reshape(n_pos, *([1] * (dst.dim() - 3)), rows_out, cols_out)
    return torch.where(mask, picked, dst)


def span_mask(lo: torch.Tensor, hi: torch.Tensor, start: torch.Tensor, length: int) -> torch.Tensor:
    """(N, length) booleans: which of the rows start[n] .. start[n] + length lie in [lo[n], hi[n])."""
    rows = start[:, None] + torch.arange(length, device=start.device)
    return (rows >= lo[:, None]) & (rows < hi[:, None])
