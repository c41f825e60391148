"""Naive re-inference: the model itself on every occluded image, in batches. The reference."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from hyinf.graph.geometry import OcclusionGrid
from hyinf.runtime.memory import retain_freed_memory
from hyinf.runtime.occlusion import PatchSpans


def naive_chunks(
    model: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, grid: OcclusionGrid, fill: torch.Tensor, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (images, positions, model outputs) for consecutive batches of occluded images of one image."""
    retain_freed_memory()  # as the engine does, so comparisons with it are fair
    spans = PatchSpans(grid, image.device)
    cols, total = grid.shape[1], len(grid)
    for start in range(0, total, batch_size):
        idx = torch.arange(start, min(start + batch_size, total), device=image.device)
        yield torch.zeros_like(idx), idx, model(spans.occlude(image, idx // cols, idx % cols, fill))
