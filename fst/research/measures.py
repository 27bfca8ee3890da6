"""Image-quality measures of a stylized photo, against its photo and the painting.

Each works on images resized so the long side is 384 px; L is luminance 0-255:

* contrast  = std(L_out) / std(L_photo): washout is well below 1.
* colour    = SWD(out, painting) / SWD(photo, painting), the sliced Wasserstein distance
              between Lab pixel distributions over 64 random directions: well below 1
              when the output took the painting's colours.
* structure = Pearson r of the blurred gradient magnitudes of L_photo and L_out: the
              photo's layout kept.
* blobs     = % of 8x8 blocks that are flat (std < 4) and black or white (mean < 25 or
              > 245) in the output but not flat in the photo.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

MEASURE_SIDE = 384
SWD_DIRECTIONS = 64
SWD_QUANTILES = 1024
BLOCK = 8
FLAT_STD = 4.0
DARK, BRIGHT = 25.0, 245.0
GRADIENT_BLUR = 2.0


def at_measure_size(img: Image.Image, side: int = MEASURE_SIDE) -> Image.Image:
    """RGB copy whose long side is ``side`` pixels."""
    img = img.convert("RGB")
    w, h = img.size
    scale = side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return img if size == img.size else img.resize(size, Image.Resampling.LANCZOS)


def luminance(img: Image.Image) -> np.ndarray:
    """ITU-R 601 luma, 0-255, as float64 (H, W)."""
    return np.asarray(img.convert("L"), dtype=np.float64)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) sRGB in 0-255 -> CIE Lab (D65): L in 0-100, a/b roughly -128..127."""
    c = rgb.astype(np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124564, 0.3575761, 0.1804375],
                  [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])
    xyz = linear @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def lab_pixels(img: Image.Image) -> np.ndarray:
    return srgb_to_lab(np.asarray(img.convert("RGB"))).reshape(-1, 3)


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, directions: int = SWD_DIRECTIONS, seed: int = 0) -> float:
    """Sliced Wasserstein-1 distance between two (N, 3) point clouds of any sizes.

    Each projection's distance is the mean gap between matching quantiles, so clouds
    of different sizes compare exactly; the directions are fixed by ``seed``.
    """
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(directions, a.shape[1]))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    return float(np.abs(_quantiles(a @ dirs.T) - _quantiles(b @ dirs.T)).mean())


def _quantiles(projections: np.ndarray) -> np.ndarray:
    """SWD_QUANTILES evenly spaced order statistics of each column (nearest rank)."""
    ordered = np.sort(projections, axis=0)
    n = ordered.shape[0]
    ranks = np.minimum(((np.arange(SWD_QUANTILES) + 0.5) * n / SWD_QUANTILES).astype(np.int64), n - 1)
    return ordered[ranks]


def contrast(out: Image.Image, photo: Image.Image) -> float:
    return float(luminance(out).std() / max(luminance(photo).std(), 1e-6))


def colour(out: Image.Image, photo: Image.Image, painting: Image.Image) -> float:
    target = lab_pixels(painting)
    return sliced_wasserstein(lab_pixels(out), target) / max(sliced_wasserstein(lab_pixels(photo), target), 1e-6)


def gaussian_blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a 2-D array (edges reflected), kernel radius 3 sigma."""
    radius = max(1, int(3 * sigma + 0.5))
    x = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(a, radius, mode="reflect")
    rows = sum(kernel[i] * padded[:, i : i + a.shape[1]] for i in range(kernel.size))
    return sum(kernel[i] * rows[i : i + a.shape[0], :] for i in range(kernel.size))


def _gradient_magnitude(lum: np.ndarray) -> np.ndarray:
    gy, gx = np.gradient(gaussian_blur(lum, GRADIENT_BLUR))
    return np.hypot(gx, gy)


def structure(out: Image.Image, photo: Image.Image) -> float:
    a, b = _gradient_magnitude(luminance(photo)).ravel(), _gradient_magnitude(luminance(out)).ravel()
    if a.std() < 1e-9 or b.std() < 1e-9:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def block_stats(lum: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and spread of each whole 8x8 block of ``lum``, as (rows, cols) grids."""
    rows, cols = lum.shape[0] // BLOCK, lum.shape[1] // BLOCK
    blocks = lum[:rows * BLOCK, :cols * BLOCK].reshape(rows, BLOCK, cols, BLOCK).swapaxes(1, 2)
    blocks = blocks.reshape(rows, cols, BLOCK * BLOCK)
    return blocks.mean(axis=2), blocks.std(axis=2)


def blob_blocks(out: Image.Image, photo: Image.Image) -> np.ndarray:
    """(rows, cols) mask of the 8x8 blocks that went flat black/white where the photo had texture."""
    out_mean, out_std = block_stats(luminance(out))
    _, photo_std = block_stats(luminance(photo))
    return (out_std < FLAT_STD) & ((out_mean < DARK) | (out_mean > BRIGHT)) & (photo_std >= FLAT_STD)


def blobs(out: Image.Image, photo: Image.Image) -> float:
    """Percentage of 8x8 blocks that went flat black/white where the photo had texture."""
    bad = blob_blocks(out, photo)
    return float(100.0 * bad.mean()) if bad.size else 0.0


def measure(out: Image.Image, photo: Image.Image, painting: Image.Image) -> dict[str, float]:
    """Every measure for one stylized photo (all three images resized to MEASURE_SIDE)."""
    photo = at_measure_size(photo)
    out = at_measure_size(out).resize(photo.size, Image.Resampling.LANCZOS)
    painting = at_measure_size(painting)
    return {
        "contrast": contrast(out, photo),
        "colour": colour(out, photo, painting),
        "structure": structure(out, photo),
        "blobs": blobs(out, photo),
    }
