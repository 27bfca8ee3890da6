"""Reading and writing images as [0, 1] RGB tensors, with errors that name the file.

Inputs are whatever cameras, phones and editors produce: EXIF-rotated JPEGs, CMYK
JPEGs, 16-bit and palette PNGs, images with alpha. Every one becomes an RGB float
tensor (plus an alpha plane when there is one); every failure becomes an FstError
that names the file. Outputs are written through a temporary file in the target
folder and moved into place, so an interrupted run never leaves half an image, and
an existing file is replaced only when asked to.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from fst.errors import FstError
from fst.fsutil import umask

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


# Output formats by extension: Pillow format name and whether it can store alpha.
OUTPUT_FORMATS = {"jpg": ("JPEG", False), "jpeg": ("JPEG", False), "png": ("PNG", True), "webp": ("WEBP", True)}
_EXIF_ORIENTATION = 0x0112
_RGB_MODES = ("RGB", "RGBA", "P", "PA", "RGBX", "RGBa")


@dataclass
class Photo:
    """A decoded photo: ``rgb`` (3, H, W) in [0, 1], optional ``alpha`` (1, H, W) in [0, 1]."""

    rgb: torch.Tensor
    alpha: torch.Tensor | None
    icc_profile: bytes | None
    exif: bytes | None


def _high_bit_depth_to_l(img: Image.Image) -> Image.Image:
    """16/32-bit integer or float grayscale -> 8-bit "L" (Pillow's own convert clips at 255)."""
    array = np.asarray(img)
    if img.mode == "F":
        peak = 1.0 if float(np.nanmax(array, initial=0.0)) <= 1.0 else 255.0
        scaled = np.nan_to_num(array / peak)
    else:
        # 16-bit PNGs open as I;16* or as 32-bit "I" holding 0..65535.
        scaled = array.astype(np.float64) / 65535.0
    return Image.fromarray((np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))


def split_alpha(img: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """(RGB image, "L" alpha or None) for any Pillow mode."""
    if img.mode.startswith("I") or img.mode == "F":
        return _high_bit_depth_to_l(img).convert("RGB"), None
    if img.mode == "P" and img.has_transparency_data:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        alpha = img.getchannel("A")
        return img.convert("RGB"), alpha
    return img.convert("RGB"), None


def _exif_without_orientation(img: Image.Image) -> bytes | None:
    exif = img.getexif()
    if not exif:
        return None
    exif.pop(_EXIF_ORIENTATION, None)  # pixels are already upright
    return exif.tobytes()


def read_photo(path: str | Path, long_side: int | None = None) -> Photo:
    """Decode ``path`` upright (EXIF orientation applied), optionally resized so its long side is ``long_side``."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            if long_side and img.format == "JPEG":
                # Let the decoder skip DCT detail we would throw away (much faster on 24 MP files).
                img.draft(img.mode, (long_side, long_side))
            icc = img.info.get("icc_profile") if img.mode in _RGB_MODES else None
            img = ImageOps.exif_transpose(img)
            img.load()
            exif = _exif_without_orientation(img)
            rgb, alpha = split_alpha(img)
    except FileNotFoundError:
        raise FstError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise FstError(f"{path}: is a directory") from None
    except Image.DecompressionBombError as exc:
        raise FstError(f"{path}: refused, too many pixels ({exc})") from None
    except (OSError, ValueError, SyntaxError, EOFError, KeyError, IndexError) as exc:
        # Pillow's plugins raise any of these on corrupt data.
        reason = str(exc) or type(exc).__name__
        raise FstError(f"{path}: not a readable image ({reason})") from None
    if long_side:
        rgb = resize_long_side(rgb, long_side)
        alpha = resize_long_side(alpha, long_side) if alpha is not None else None
    return Photo(rgb=image_to_tensor(rgb), alpha=image_to_tensor(alpha) if alpha is not None else None, icc_profile=icc, exif=exif)


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    array = np.asarray(img, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return image.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()


def to_pil(rgb: torch.Tensor, alpha: torch.Tensor | None = None) -> Image.Image:
    """(3, H, W) [+ (1, H, W) alpha] in [0, 1] -> RGB or RGBA PIL image."""
    img = Image.fromarray(_to_uint8(rgb))
    if alpha is not None:
        img.putalpha(Image.fromarray(_to_uint8(alpha)[:, :, 0]))
    return img


def output_format(path: Path) -> tuple[str, bool]:
    """(Pillow format, supports alpha) for an output path's extension; FstError if unsupported."""
    ext = path.suffix.lower().lstrip(".")
    if ext not in OUTPUT_FORMATS:
        raise FstError(f"{path}: unsupported output format .{ext} (use one of {', '.join(sorted(OUTPUT_FORMATS))})")
    return OUTPUT_FORMATS[ext]


def write_photo(
    path: str | Path,
    rgb: torch.Tensor,
    alpha: torch.Tensor | None = None,
    *,
    quality: int = 92,
    icc_profile: bytes | None = None,
    exif: bytes | None = None,
    overwrite: bool = False,
) -> Path:
    """Write atomically; FstError if ``path`` exists and ``overwrite`` is false.

    Alpha is dropped for formats without it (JPEG). The photo's ICC profile and EXIF
    (orientation removed) are carried over so colours and capture data survive.
    """
    path = Path(path)
    fmt, has_alpha = output_format(path)
    img = to_pil(rgb, alpha if has_alpha else None)
    options: dict = {}
    if fmt in ("JPEG", "WEBP"):
        options["quality"] = int(quality)
    if icc_profile:
        options["icc_profile"] = icc_profile
    if exif:
        options["exif"] = exif
    if not overwrite and path.exists():
        raise FstError(f"{path}: already exists (pass --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp's 0600 would make results private to this user
        img.save(tmp, format=fmt, **options)
        _move_into_place(Path(tmp), path, overwrite)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _move_into_place(tmp: Path, path: Path, overwrite: bool) -> None:
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if the name appeared meanwhile: never clobbers
    except FileExistsError:
        raise FstError(f"{path}: already exists (pass --overwrite to replace it)") from None
    except OSError:
        # No hard links on this filesystem: check-then-rename is the best left.
        if path.exists():
            raise FstError(f"{path}: already exists (pass --overwrite to replace it)") from None
        os.replace(tmp, path)
