"""Image files are read as they are shown, with each mode's own range, or refused in one line."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from hyinf.errors import InputError
from hyinf.images import load_image

GRADIENT = np.linspace(0, 1, 12 * 16, dtype=np.float64).reshape(12, 16)


def _expected(gray: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.repeat(gray[None].astype(np.float32), 3, 0))


def test_sixteen_bit_png_is_scaled_by_its_own_range(tmp_path) -> None:
    path = tmp_path / "deep.png"
    Image.fromarray((GRADIENT * 65535).round().astype(np.uint16)).save(path)
    pixels = load_image(path, (12, 16))
    torch.testing.assert_close(pixels, _expected(GRADIENT), atol=1e-4, rtol=0)
    assert (pixels == 1).float().mean() < 0.01  # was 99.5% before: every value clipped to 1


def test_float_tiff_is_read_as_intensities(tmp_path) -> None:
    path = tmp_path / "float.tiff"
    Image.fromarray(GRADIENT.astype(np.float32), mode="F").save(path)
    torch.testing.assert_close(load_image(path, (12, 16)), _expected(GRADIENT), atol=1e-6, rtol=0)


def test_float_tiff_outside_unit_range_is_refused(tmp_path) -> None:
    path = tmp_path / "hdr.tiff"
    Image.fromarray((GRADIENT * 300).astype(np.float32), mode="F").save(path)
    with pytest.raises(InputError, match=r"float pixels in \[0, 300\].*scale it"):
        load_image(path, (12, 16))


def test_eight_bit_rgb_is_unchanged(tmp_path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    path = tmp_path / "rgb.png"
    Image.fromarray(rgb).save(path)
    torch.testing.assert_close(
        load_image(path, (12, 16)), torch.from_numpy(rgb / 255.0).float().permute(2, 0, 1)
    )


def test_exif_orientation_is_applied(tmp_path) -> None:
    rgb = np.zeros((12, 16, 3), dtype=np.uint8)
    rgb[0, 0] = 255  # a white top-left corner as stored
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to show"
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif, quality=100)
    pixels = load_image(path, (16, 12))
    assert pixels.shape == (3, 16, 12)
    assert pixels[0, 0, -1] > 0.5 and pixels[0, 0, 0] < 0.5  # shown: the corner is now top-right


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: os.mkfifo(p), "not a regular file"),
        (lambda p: p.write_bytes(b"not an image at all"), "not an image Pillow can read"),
        (lambda p: None, "does not exist"),
    ],
)
def test_paths_that_are_not_images(tmp_path, make, words) -> None:
    path = tmp_path / "thing.png"
    make(path)
    with pytest.raises(InputError, match=words):
        load_image(path, (8, 8))


def test_unreadable_file_names_the_permission(tmp_path) -> None:
    path = tmp_path / "secret.png"
    Image.new("RGB", (4, 4)).save(path)
    path.chmod(0)
    if os.access(path, os.R_OK):
        pytest.skip("running as a user who reads every file (root)")
    with pytest.raises(InputError, match="Permission denied"):
        load_image(path, (4, 4))


def test_truncated_image(tmp_path) -> None:
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(InputError, match="cannot be decoded|not an image"):
        load_image(path, (8, 8))


def test_decompression_bomb_is_refused_before_decoding(tmp_path) -> None:
    path = tmp_path / "bomb.png"
    Image.new("1", (14_000, 14_000)).save(path)  # 196 megapixels, a few kB on disk
    with pytest.raises(InputError, match="196 megapixels"):
        load_image(path, (8, 8))
