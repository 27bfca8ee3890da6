"""Test fixtures for inference: tiny random models and a corpus of good and broken photos."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fst.nets import TransformerNet, TransformerNetConfig, save_model
from fst.resources import ASSETS_DIR

ROOT_DIR = Path(__file__).resolve().parents[1]  # the checkout (scripts/, cwd of subprocesses)

PHOTO_DIR = ASSETS_DIR / "photos" / "val" / "skimage"
EXIF_ORIENTATION = 0x0112


def photo(index: int = 0) -> Image.Image:
    """A bundled real photo (RGB)."""
    files = sorted(p for p in PHOTO_DIR.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    with Image.open(files[index % len(files)]) as img:
        return img.convert("RGB")


def random_model(path: Path, width: int = 8, seed: int = 0, style: str = "teststyle", **config) -> Path:
    """A randomly initialised TransformerNet saved as an fst model file."""
    torch.manual_seed(seed)
    net = TransformerNet(TransformerNetConfig(width=width, **config))
    return save_model(net, path, {"style_name": style, "style_sha256": None, "loss": {}, "steps": 0})


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_png_rgb16(path: Path, array: np.ndarray) -> None:
    """A 48-bit (16 bits per channel) RGB PNG, which Pillow cannot write itself."""
    height, width, _ = array.shape
    rows = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(rows))
        + _png_chunk(b"IEND", b"")
    )


def jpeg_bytes(img: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", **options)
    return buffer.getvalue()


def rotated_photo() -> tuple[Image.Image, bytes]:
    """(stored pixels, JPEG bytes tagged EXIF orientation 6: display rotated 90 degrees clockwise)."""
    stored = photo(1).resize((96, 64))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    return stored, jpeg_bytes(stored, quality=95, exif=exif.tobytes())


def build_corpus(folder: Path, huge: bool = True) -> tuple[dict[str, str], dict[str, str]]:
    """Write the corpus into ``folder``; returns ({good name: note}, {bad name: note})."""
    folder.mkdir(parents=True, exist_ok=True)
    base = photo(0).resize((120, 80))
    good: dict[str, str] = {}
    bad: dict[str, str] = {}

    (folder / "plain.jpg").write_bytes(jpeg_bytes(base, quality=90))
    good["plain.jpg"] = "RGB JPEG"
    (folder / "cmyk.jpg").write_bytes(jpeg_bytes(base.convert("CMYK"), quality=90))
    good["cmyk.jpg"] = "CMYK JPEG"
    base.convert("L").save(folder / "gray.png")
    good["gray.png"] = "8-bit grayscale"
    ramp = np.linspace(0, 65535, 80 * 120).reshape(80, 120).astype(np.uint16)
    Image.fromarray(ramp).save(folder / "gray16.png")
    good["gray16.png"] = "16-bit grayscale PNG"
    write_png_rgb16(folder / "rgb16.png", np.asarray(base, dtype=np.uint16) * 257)
    good["rgb16.png"] = "48-bit RGB PNG"
    rgba = base.convert("RGBA")
    alpha = np.full((80, 120), 255, np.uint8)
    alpha[:, :60] = 0
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(folder / "alpha.png")
    good["alpha.png"] = "RGBA PNG, left half transparent"
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(folder / "palette.png", transparency=0)
    good["palette.png"] = "palette PNG with a transparent index"
    Image.new("RGB", (1, 1), (200, 30, 30)).save(folder / "dot.png")
    good["dot.png"] = "1x1 image"
    (folder / "rotated.jpg").write_bytes(rotated_photo()[1])
    good["rotated.jpg"] = "EXIF orientation 6"
    if huge:
        # 6000x4000 (24 MP): a smooth photo upscaled, low quality to keep the file small.
        photo(2).resize((6000, 4000), Image.Resampling.BILINEAR).save(folder / "huge.jpg", quality=60)
        good["huge.jpg"] = "6000x4000"

    full = jpeg_bytes(base, quality=90)
    (folder / "truncated.jpg").write_bytes(full[: len(full) // 2])
    bad["truncated.jpg"] = "JPEG cut in half"
    (folder / "empty.jpg").write_bytes(b"")
    bad["empty.jpg"] = "0-byte file"
    (folder / "notes.jpg").write_text("this is not a picture\n")
    bad["notes.jpg"] = "text named .jpg"
    return good, bad


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes under ``folder`` (to prove inputs were left untouched)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
