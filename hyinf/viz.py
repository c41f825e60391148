"""Pictures a person would rather see than read: the heatmap over the image."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def save_overlay(pixels: torch.Tensor, attribution: torch.Tensor, path: Path, title: str) -> None:
    """The image with the per-pixel score drop over it and a colour bar, as a PNG.

    `pixels` is (3, H, W) in [0, 1]; `attribution` is (H, W). Red marks regions whose occlusion
    lowers the target score (the evidence), blue regions whose occlusion raises it.
    """
    limit = float(attribution.abs().max()) or 1.0
    fig, ax = plt.subplots(figsize=(5.2, 4.4), dpi=120)
    ax.imshow(pixels.permute(1, 2, 0).clamp(0, 1).numpy())
    strength = (attribution.abs() / limit).numpy()  # transparent where occlusion changes nothing
    shown = ax.imshow(attribution.numpy(), cmap="coolwarm", vmin=-limit, vmax=limit, alpha=0.15 + 0.6 * strength)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="drop in target score")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
