"""The image-quality measures on images whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from fst.research import measures as M
from fst.resources import STYLES_DIR, VAL_PHOTOS_DIR


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return M.at_measure_size(Image.open(VAL_PHOTOS_DIR / "skimage" / "astronaut.png"))


@pytest.fixture(scope="module")
def painting() -> Image.Image:
    return Image.open(STYLES_DIR / "the_wave.jpg")


def test_the_photo_itself_scores_neutral(photo, painting) -> None:
    scores = M.measure(photo, photo, painting)
    assert scores["contrast"] == pytest.approx(1.0, abs=1e-6)
    assert scores["colour"] == pytest.approx(1.0, abs=1e-6)
    assert scores["structure"] == pytest.approx(1.0, abs=1e-6)
    assert scores["blobs"] == 0.0


def test_washout_lowers_contrast(photo, painting) -> None:
    grey = Image.new("RGB", photo.size, (128, 128, 128))
    washed = Image.blend(photo, grey, 0.6)
    assert M.contrast(washed, photo) == pytest.approx(0.4, abs=0.02)


def test_the_painting_s_own_pixels_are_colour_zero(photo, painting) -> None:
    # The painting's pixels rearranged into the photo's frame: same Lab distribution.
    assert M.colour(M.at_measure_size(painting), photo, painting) < 0.05
    # Colours from far outside the painting's palette move away from it.
    magenta = Image.new("RGB", photo.size, (255, 0, 255))
    assert M.colour(magenta, photo, painting) > 1.0


def test_srgb_to_lab_known_values() -> None:
    lab = M.srgb_to_lab(np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0]], dtype=np.uint8))
    np.testing.assert_allclose(lab[0], [100.0, 0.0, 0.0], atol=0.05)
    np.testing.assert_allclose(lab[1], [0.0, 0.0, 0.0], atol=0.05)
    np.testing.assert_allclose(lab[2], [53.24, 80.09, 67.20], atol=0.1)


def test_structure_falls_when_the_layout_is_lost(photo) -> None:
    flipped = photo.transpose(Image.Transpose.ROTATE_180)
    assert M.structure(flipped, photo) < 0.3
    assert M.structure(photo.filter(ImageFilter.GaussianBlur(1)), photo) > 0.9


def test_blobs_count_flat_black_blocks_where_the_photo_had_texture(photo) -> None:
    out = np.asarray(photo).copy()
    h, w = out.shape[:2]
    bh, bw = (h // 8) // 4 * 8, (w // 8) // 4 * 8  # a quarter of the blocks each way: 1/16 of them
    out[:bh, :bw] = 0
    photo_std = M.block_stats(M.luminance(photo))[1]
    assert photo_std.shape == (h // 8, w // 8)
    textured = photo_std[: bh // 8, : bw // 8] >= M.FLAT_STD
    expected = 100.0 * textured.sum() / photo_std.size
    assert M.blobs(Image.fromarray(out), photo) == pytest.approx(expected)
    assert expected > 1.0
    mask = M.blob_blocks(Image.fromarray(out), photo)
    assert mask[: bh // 8, : bw // 8].tolist() == textured.tolist() and not mask[bh // 8:].any()
