"""Vectorised window gathers and pastes over a batch of occlusion positions.

Windows move as rows of a "pixel-major" matrix: a value with spatial axes (rows, cols) and other
axes M is viewed as a (batch * rows * cols, M) matrix, one row per pixel. A window is then a set
of row indices, and a gather or paste is one `index_select` or `index_copy_` of contiguous rows,
which is several times faster than strided advanced indexing. A 4-D NCHW value in this layout is
simply channels_last, which is also the layout the CPU convolution kernels prefer.
"""

from __future__ import annotations

import math

import torch


def to_rows(t: torch.Tensor, spatial: tuple[int, int]) -> torch.Tensor:
    """(batch * rows * cols, M) view (or copy) of `t` with one row per pixel."""
    moved = t.movedim(spatial, (1, 2))
    return moved.reshape(-1, math.prod(moved.shape[3:]))


def from_rows(rows: torch.Tensor, batch: int, size: tuple[int, int], middle: tuple[int, ...], spatial: tuple[int, int]) -> torch.Tensor:
    """Inverse of `to_rows`: the value in its node's layout, as a view of `rows`."""
    return rows.view(batch, *size, *middle).movedim((1, 2), spatial)


def middle_shape(shape: tuple[int, ...], spatial: tuple[int, int]) -> tuple[int, ...]:
    """The axes of a node's value other than the batch and the two spatial axes."""
    return tuple(d for axis, d in enumerate(shape) if axis != 0 and axis not in spatial)


def window_index(top: torch.Tensor, left: torch.Tensor, rows: int, cols: int, map_cols: int, map_start: torch.Tensor | None = None) -> torch.Tensor:
    """Row indices of window n (rows x cols at (top[n], left[n])) in a pixel-major map.

    With `map_start`, window n is taken from the map whose first row is map_start[n] (a batch of maps).
    """
    dev = top.device
    start = top * map_cols + left
    if map_start is not None:
        start = start + map_start
    offsets = torch.arange(rows, device=dev)[:, None] * map_cols + torch.arange(cols, device=dev)[None, :]
    return (start[:, None, None] + offsets[None]).reshape(-1)


def each_map(count: int, pixels: int, device: torch.device) -> torch.Tensor:
    """First rows of `count` consecutive maps of `pixels` rows: window n from map n."""
    return torch.arange(count, device=device) * pixels


def gather(src_rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows `index` of a pixel-major map: the windows, stacked."""
    return src_rows.index_select(0, index)


def paste_index(dst_size: tuple[int, int], win_size: tuple[int, int], top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """Rows of a batch of maps that window n's rows land on, at (top[n], left[n]) of map n (each must fit)."""
    return window_index(top, left, *win_size, dst_size[1], each_map(len(top), dst_size[0] * dst_size[1], top.device))


def paste(dst_rows: torch.Tensor, dst_size: tuple[int, int], win_rows: torch.Tensor, win_size: tuple[int, int], top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """Write window n into map n of `dst_rows` at (top[n], left[n]); every window must fit. Returns `dst_rows`."""
    return dst_rows.index_copy_(0, paste_index(dst_size, win_size, top, left), win_rows)


def overlay_index(dst_size: tuple[int, int], win_size: tuple[int, int], top: torch.Tensor, left: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of a batch of maps with window n at (top[n], left[n]) of map n, windows allowed to stick
    out: whether a window covers it, and the window row that does (clamped where none does)."""
    (rows, cols), (h, w) = dst_size, win_size
    dev = top.device
    rr = torch.arange(rows, device=dev)[None] - top[:, None]  # row of the window seen at each map row
    cc = torch.arange(cols, device=dev)[None] - left[:, None]
    inside = ((rr >= 0) & (rr < h))[:, :, None] & ((cc >= 0) & (cc < w))[:, None, :]
    n = torch.arange(len(top), device=dev)[:, None, None]
    index = n * (h * w) + rr.clamp(0, h - 1)[:, :, None] * w + cc.clamp(0, w - 1)[:, None, :]
    return inside.reshape(-1), index.reshape(-1)


def overlay(dst_rows: torch.Tensor, dst_size: tuple[int, int], win_rows: torch.Tensor, win_size: tuple[int, int], top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """Like `paste`, but windows may stick out of their maps: only the overlap is written (new tensor)."""
    inside, index = overlay_index(dst_size, win_size, top, left)
    return torch.where(inside[:, None], win_rows.index_select(0, index), dst_rows)


def merged_index(read: torch.Tensor, sources: int, windows: int, dst_size: tuple[int, int], win_size: tuple[int, int],
                 top: torch.Tensor, left: torch.Tensor, fits: bool) -> torch.Tensor:
    """Rows of `cat([source, windows])` equal to gathering rows `read` of the source (`sources` rows) and
    then pasting (`fits`) or overlaying the windows (`windows` rows) at (top, left): one gather instead
    of a gather and a scatter. The result depends on the positions alone."""
    if fits:
        into = paste_index(dst_size, win_size, top, left)
        return read.index_copy(0, into, torch.arange(sources, sources + windows, device=read.device))
    inside, index = overlay_index(dst_size, win_size, top, left)
    return torch.where(inside, index + sources, read)


def span_mask(lo: torch.Tensor, hi: torch.Tensor, start: torch.Tensor, length: int) -> torch.Tensor:
    """(N, length) booleans: which of the rows start[n] .. start[n] + length lie in [lo[n], hi[n])."""
    rows = start[:, None] + torch.arange(length, device=start.device)
    return (rows >= lo[:, None]) & (rows < hi[:, None])
