"""Reading and writing images, with errors that name the file.

Inputs are whatever cameras, phones and editors produce: EXIF-rotated JPEGs, CMYK
JPEGs, 16-bit and float images, palette PNGs with a transparent index, images with
alpha. Every read, from a path or from bytes, goes through :func:`decode_image`, which
turns each of them into an upright RGB image plus an alpha plane when there is one,
and every failure (a missing, truncated or oversized file) into an FstError naming it.

Tensors are float (C, H, W) in [0, 1]: :func:`pil_to_tensor` and :func:`tensor_to_pil`
convert. Outputs are written through a temporary file in the target folder and moved
into place (:func:`fst.fsutil.atomic_path`), so an interrupted run never leaves half
an image, and an existing file is replaced only when asked to.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from fst.errors import FstError
from fst.fsutil import atomic_path

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm")
# Output formats by extension: Pillow format name and whether it can store alpha.
OUTPUT_FORMATS = {"jpg": ("JPEG", False), "jpeg": ("JPEG", False), "png": ("PNG", True), "webp": ("WEBP", True)}

_EXIF_ORIENTATION = 0x0112
# Modes whose ICC profile (if any) describes RGB values: a CMYK or grey profile must not
# be attached to the RGB image written from them.
_RGB_MODES = ("RGB", "RGBA", "P", "PA", "RGBX", "RGBa")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# What Pillow's plugins raise on corrupt or unsupported data.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, KeyError, IndexError)


# --- decoding ----------------------------------------------------------------------------------


@dataclass
class DecodedImage:
    """An upright image: ``rgb`` ("RGB"), ``alpha`` ("L") or None, and what a copy should keep.

    ``icc_profile`` is kept only when it describes the RGB values; ``exif`` has its
    orientation tag removed, as the pixels are already upright.
    """

    rgb: Image.Image
    alpha: Image.Image | None
    icc_profile: bytes | None
    exif: bytes | None


def decode_image(source: str | Path | bytes, *, name: str | None = None, min_side: int = 0) -> DecodedImage:
    """Decode a file, or encoded bytes, into an upright RGB image (plus alpha); FstError otherwise.

    ``name`` is what messages call the image (default: the path, or "image data" for
    bytes). ``min_side`` lets a JPEG decoder skip DCT detail that a downscale would throw
    away (much faster on 24 MP files): the result is then smaller, but never below
    ``min_side`` on either side, so callers that resize to that size lose nothing.
    """
    is_bytes = isinstance(source, (bytes, bytearray, memoryview))
    label = name or ("image data" if is_bytes else str(source))
    try:
        with Image.open(io.BytesIO(source) if is_bytes else Path(source)) as img:
            if min_side and img.format == "JPEG":
                img.draft(img.mode, (min_side, min_side))
            return upright(img)
    except FileNotFoundError:
        raise FstError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise FstError(f"{label}: is a directory") from None
    except Image.DecompressionBombError as exc:
        raise FstError(f"{label}: refused, too many pixels ({exc})") from None
    except _DECODE_ERRORS as exc:
        reason = str(exc) or type(exc).__name__
        raise FstError(f"{label}: not a readable image ({reason})") from None


def upright(img: Image.Image) -> DecodedImage:
    """An opened image, decoded: EXIF orientation applied, colours as 8-bit RGB, alpha split off.

    The part of :func:`decode_image` after opening, for images that arrive already open
    (the Python API takes PIL images).
    """
    icc = img.info.get("icc_profile") if img.mode in _RGB_MODES else None
    img = ImageOps.exif_transpose(img)
    img.load()
    rgb, alpha = _split_alpha(img)
    return DecodedImage(rgb=rgb, alpha=alpha, icc_profile=icc or None, exif=_exif_without_orientation(img))


def _split_alpha(img: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """(RGB image, "L" alpha or None) for any Pillow mode."""
    if img.mode.startswith("I") or img.mode == "F":
        return _high_bit_depth_to_l(img).convert("RGB"), None
    if img.mode == "P" and img.has_transparency_data:
        img = img.convert("RGBA")  # the transparent palette index becomes an alpha plane
    if img.mode in _ALPHA_MODES:
        img = img.convert("RGBA")
        return img.convert("RGB"), img.getchannel("A")
    return img.convert("RGB"), None  # CMYK, YCbCr, L, 1, P, RGB


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


def _exif_without_orientation(img: Image.Image) -> bytes | None:
    exif = img.getexif()
    if not exif:
        return None
    exif.pop(_EXIF_ORIENTATION, None)  # pixels are already upright
    return exif.tobytes()


# --- the readers -------------------------------------------------------------------------------


@dataclass
class Photo:
    """A photo ready to stylize: ``rgb`` (3, H, W) in [0, 1], optional ``alpha`` (1, H, W) in [0, 1]."""

    rgb: torch.Tensor
    alpha: torch.Tensor | None
    icc_profile: bytes | None
    exif: bytes | None


def open_rgb(path: str | Path) -> Image.Image:
    """``path`` as an upright RGB PIL image (alpha dropped); FstError if unreadable."""
    return decode_image(path).rgb


def read_photo(path: str | Path, long_side: int | None = None) -> Photo:
    """Decode ``path`` upright, optionally resized so that its long side is ``long_side``."""
    decoded = decode_image(path, min_side=long_side or 0)
    rgb, alpha = decoded.rgb, decoded.alpha
    if long_side:
        rgb = resize_long_side(rgb, long_side)
        alpha = resize_long_side(alpha, long_side) if alpha is not None else None
    return Photo(
        rgb=pil_to_tensor(rgb),
        alpha=pil_to_tensor(alpha) if alpha is not None else None,
        icc_profile=decoded.icc_profile,
        exif=decoded.exif,
    )


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


# --- tensors and sizes -------------------------------------------------------------------------


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL image -> float tensor (C, H, W) in [0, 1]: C = 1 for "L" (alpha planes), else 3 (RGB)."""
    # Through numpy rather than torchvision's converters (the same values, x / 255): importing
    # torchvision.transforms takes seconds, a large share of a short fst-infer run.
    if img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    array = np.array(img, dtype=np.uint8)
    planes = torch.from_numpy(array[None] if array.ndim == 2 else array.transpose(2, 0, 1).copy())
    return planes.to(torch.float32).mul_(1 / 255)  # as torchvision scales: bit-identical


# ITU-R BT.601 luma weights, for tensors: the same luma as PIL's "L" (the quality measures) and
# the Y row of fst.infer.color's YCbCr.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def luminance(images: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of RGB images (B, 3, H, W) -> (B, 1, H, W), same range and dtype."""
    weights = torch.tensor(LUMA_WEIGHTS, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def tensor_to_pil(rgb: torch.Tensor, alpha: torch.Tensor | None = None) -> Image.Image:
    """(3, H, W) or (1, 3, H, W) [+ (1, H, W) alpha] in [0, 1] -> RGB or RGBA PIL image (values clamped)."""
    if rgb.dim() == 4:
        rgb = rgb[0]
    planes = rgb if alpha is None else torch.cat([rgb, alpha.to(rgb.device)])
    return Image.fromarray(np.ascontiguousarray(_to_uint8(planes).permute(1, 2, 0).numpy()),
                           "RGB" if planes.shape[0] == 3 else "RGBA")


def _to_uint8(image: torch.Tensor) -> torch.Tensor:
    # Rounded, not truncated as to_dtype and to_pil_image would: half the error per pixel.
    return image.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu()


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


# --- writing -----------------------------------------------------------------------------------


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
    img = tensor_to_pil(rgb, alpha if has_alpha else None)
    options: dict = {}
    if fmt in ("JPEG", "WEBP"):
        options["quality"] = int(quality)
    if icc_profile:
        options["icc_profile"] = icc_profile
    if exif:
        options["exif"] = exif
    try:
        with atomic_path(path, overwrite=overwrite) as tmp:
            img.save(tmp, format=fmt, **options)
    except FileExistsError:
        raise FstError(f"{path}: already exists (pass --overwrite to replace it)") from None
    return path
