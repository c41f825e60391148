"""Image files as pixels in [0, 1], read faithfully or refused.

Every Pillow mode is scaled by its own range (8-bit by 255, 16-bit by 65535, float as given), the
EXIF orientation is applied so an image is explained as it is shown, and what cannot be read
faithfully (float pixels outside [0, 1], 32-bit integers, colour spaces Pillow cannot convert) is
refused in one line.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from hyinf.errors import InputError
from hyinf.paths import check_readable_file

#: Pixels beyond this are refused before decoding (Pillow's own decompression-bomb limit).
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}


def _planes(img: Image.Image, path: Path) -> list[Image.Image]:
    """The image as three float ('F') planes in [0, 1]."""
    mode = img.mode
    if mode in _SIXTEEN_BIT:
        array = np.asarray(img, dtype=np.float32) / 65535.0
        return [Image.fromarray(array, mode="F")] * 3
    if mode == "F":
        array = np.asarray(img, dtype=np.float32)
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise InputError(
                f"{path} holds float pixels in [{np.nanmin(array):.4g}, {np.nanmax(array):.4g}] (or NaN); "
                "hyinf reads float images as intensities in [0, 1]: scale it first"
            )
        return [img] * 3
    if mode == "I":  # 32-bit integers: Pillow's form of 16-bit PNGs in some versions, else no known range
        array = np.asarray(img)
        if array.min() < 0 or array.max() > 65535:
            raise InputError(
                f"{path} holds 32-bit integer pixels up to {array.max()}; hyinf reads 8- and 16-bit images: convert it"
            )
        return [Image.fromarray(array.astype(np.float32) / 65535.0, mode="F")] * 3
    try:
        rgb = img.convert("RGB")
    except (ValueError, OSError):
        raise InputError(
            f"{path} is in colour mode {mode}, which cannot be converted to RGB; save it as RGB"
        ) from None
    return [Image.fromarray(np.asarray(band, dtype=np.float32) / 255.0, mode="F") for band in rgb.split()]


def load_image(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """An image file as (3, H, W) pixels in [0, 1], as it is shown (EXIF orientation), resized to `size` (H, W)."""
    check_readable_file(path, "image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise InputError(
                        f"{path} is {img.width}x{img.height} ({img.width * img.height / 1e6:.0f} megapixels), "
                        f"over the {MAX_PIXELS / 1e6:.0f}-megapixel limit that guards against decompression bombs; "
                        "downscale it first"
                    )
                shown = ImageOps.exif_transpose(img)
                planes = _planes(shown, path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(found.group(1)) / 1e6:.0f} megapixels" if found else "more pixels"
        raise InputError(
            f"{path} decodes to {size}, over the {MAX_PIXELS / 1e6:.0f}-megapixel limit that guards "
            "against decompression bombs; downscale it first"
        ) from None
    except UnidentifiedImageError:
        raise InputError(f"{path} is not an image Pillow can read (PNG, JPEG, TIFF, ...)") from None
    except OSError as e:
        raise InputError(f"{path} cannot be decoded ({e}); is the file complete?") from None
    resized = [p.resize((size[1], size[0]), Image.Resampling.BILINEAR) for p in planes]
    return torch.from_numpy(np.stack([np.asarray(p, dtype=np.float32) for p in resized])).contiguous()
