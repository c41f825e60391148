"""Generated training scenes: one filled shape of a random colour on clutter (lines and dots)."""

from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image, ImageDraw

from hyinf.demo import CLASSES, IMAGE_SIZE


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return tuple(rng.randint(40, 255) for _ in range(3))  # type: ignore[return-value]


def scene(label: int, rng: random.Random, size: int = IMAGE_SIZE) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """An RGB scene of class `label` and the shape's bounding box (left, top, right, bottom)."""
    base = np.clip(np.asarray(Image.new("RGB", (1, 1), tuple(rng.randint(0, 90) for _ in range(3)))).astype(np.int16)
                   + np.random.default_rng(rng.randint(0, 2**31)).integers(-20, 21, (size, size, 3)), 0, 255)
    img = Image.fromarray(base.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(4, 10)):  # thin lines and dots: clutter, never a filled shape
        x0, y0, x1, y1 = (rng.randint(0, size) for _ in range(4))
        draw.line((x0, y0, x1, y1), fill=_colour(rng), width=rng.randint(1, 2))
    for _ in range(rng.randint(5, 15)):
        x, y = rng.randint(0, size), rng.randint(0, size)
        draw.ellipse((x, y, x + 3, y + 3), fill=_colour(rng))
    s = rng.randint(26, 42)
    x, y = rng.randint(2, size - s - 2), rng.randint(2, size - s - 2)
    box, fill = (x, y, x + s, y + s), _colour(rng)
    name = CLASSES[label]
    if name == "circle":
        draw.ellipse(box, fill=fill)
    elif name == "square":
        draw.rectangle(box, fill=fill)
    elif name == "triangle":
        draw.polygon([(x + s // 2, y), (x, y + s), (x + s, y + s)], fill=fill)
    else:
        t = s // 3
        draw.rectangle((x + t, y, x + 2 * t, y + s), fill=fill)
        draw.rectangle((x, y + t, x + s, y + 2 * t), fill=fill)
    return img, box


def to_tensor(img: Image.Image) -> torch.Tensor:
    """(3, H, W) float pixels in [0, 1]."""
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def dataset(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = random.Random(seed)
    labels = [i % len(CLASSES) for i in range(n)]
    rng.shuffle(labels)
    return torch.stack([to_tensor(scene(label, rng)[0]) for label in labels]), torch.tensor(labels)
