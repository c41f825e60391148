"""Naive re-inference: the model itself on every occluded image, in batches. The reference."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from hyinf.graph.geometry import OcclusionGrid
from hyinf.runtime.memory import retain_freed_memory
from hyinf.runtime.occlusion import PatchSpans


def naive_chunks(
    model: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, grid: OcclusionGrid, fill: torch.Tensor, batch_size: int,
    only: torch.Tensor | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (images, positions, model outputs) for consecutive batches of occluded images of one image
    (at every position, or at those `only` marks)."""
    retain_freed_memory()  # as the engine does, so comparisons with it are fair
    spans = PatchSpans(grid, image.device)
    cols = grid.shape[1]
    positions = torch.arange(len(grid), device=image.device)
    if only is not None:
        positions = positions[only]
    for start in range(0, len(positions), batch_size):
        idx = positions[start : start + batch_size]
        yield torch.zeros_like(idx), idx, model(spans.occlude(image, idx // cols, idx % cols, fill))
