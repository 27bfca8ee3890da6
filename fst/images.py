"""Reading and writing images as [0, 1] RGB tensors, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from fst.errors import FstError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm")


def open_rgb(path: str | Path) -> Image.Image:
    """Open ``path`` as an RGB PIL image with EXIF orientation applied; FstError if unreadable."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            img.load()
            return img.convert("RGB")
    except FileNotFoundError:
        raise FstError(f"{path}: no such file") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise FstError(f"{path}: not a readable image ({exc})") from None


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor (3, H, W) in [0, 1]."""
    array = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) or (1, 3, H, W) float tensor in [0, 1] -> RGB PIL image (values clamped)."""
    if image.dim() == 4:
        image = image[0]
    array = image.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, mode="RGB")


def resize_short_side(img: Image.Image, size: int) -> Image.Image:
    """Resize so that the shorter side equals ``size`` (aspect ratio kept)."""
    w, h = img.size
    scale = size / min(w, h)
    return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)


def resize_long_side(img: Image.Image, size: int) -> Image.Image:
    """Resize so that the longer side equals ``size`` (aspect ratio kept)."""
    w, h = img.size
    scale = size / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    return img if new == img.size else img.resize(new, Image.Resampling.LANCZOS)


def load_style_image(path: str | Path, size: int | None) -> torch.Tensor:
    """The style image as (1, 3, H, W) in [0, 1], its longer side resized to ``size``."""
    img = open_rgb(path)
    if size:
        img = resize_long_side(img, size)
    return pil_to_tensor(img).unsqueeze(0)


def list_images(root: str | Path) -> list[Path]:
    """Every image file under ``root`` (recursive), sorted so that runs are reproducible."""
    root = Path(root)
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
