"""What the Stylize tab does, without the page: read uploads within limits, stylize them, write results.

Photos: the header is read first, so that a decompression bomb is refused before any
pixel is decoded; a photo over the pixel limit is scaled down, with a note saying so.
Clips go through :func:`fst.infer.video.stylize_video` (what ``Stylizer.stylize_video`` runs),
their long side capped.
Every output is written under one fresh folder of ``results/`` in the data folder.
"""

from __future__ import annotations

import math
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from fst.errors import FstError
from fst.fsutil import atomic_path
from fst.images import DecodedImage, decode_image
from fst.infer.backends import available_models
from fst.infer.stylizer import Stylizer
from fst.infer.video import expected_frames, is_video, probe, stylize_video

from fst.app.store import AppData, safe_stem, unique_path

# Photos over this many pixels are scaled down to it before stylizing (CPU time and memory
# grow with the pixel count: about 1 s per megapixel on one core).
DEFAULT_MAX_PIXELS = 16_000_000
# Photos over this many pixels are refused unread: a few kilobytes of PNG can claim
# gigapixels (a decompression bomb). Pillow's own limit, about 179 MP, refuses earlier ones.
DEFAULT_REFUSE_PIXELS = 100_000_000
# Clips are stylized with their long side at most this (unless a smaller output size is chosen).
DEFAULT_MAX_CLIP_SIDE = 1280
PREVIEW_SIDE = 1024
JPEG_QUALITY = 95
MAX_CACHED_MODELS = 4

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class Limits:
    """Size limits the app applies to what it is sent."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    refuse_pixels: int = DEFAULT_REFUSE_PIXELS
    max_clip_side: int = DEFAULT_MAX_CLIP_SIDE


@dataclass
class Options:
    """The Stylize tab's settings."""

    model: str
    strength: float = 1.0
    preserve_color: bool = False
    size: int | None = None  # long side of the output; None: the photo's own (within the pixel limit)
    style: str | dict[str, float] | None = None  # for models trained on several styles


@dataclass
class StylizeResult:
    """What one request produced: (input preview, output, caption) per photo, clips, notes and errors."""

    folder: Path
    pairs: list[tuple[Path, Path, str]] = field(default_factory=list)
    clips: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    archive: Path | None = None

    @property
    def outputs(self) -> list[Path]:
        return [out for _, out, _ in self.pairs] + self.clips


class ModelCache:
    """Loaded stylizers by model name, reloaded when the file changes; the newest few kept.

    ``inference`` is held around every forward pass the app makes: on a CPU one pass already
    uses every core (two at once only contend), and not every engine may be entered from two
    threads at once. Decoding, resizing and encoding run outside it, in parallel.
    """

    def __init__(self, size: int = MAX_CACHED_MODELS) -> None:
        self.size = size
        self._models: OrderedDict[str, tuple[tuple[str, int], Stylizer]] = OrderedDict()
        self._lock = threading.Lock()
        self.inference = threading.Lock()

    def get(self, name: str) -> Stylizer:
        """The model called ``name`` in the model folders (never a path: the page names models only)."""
        path = available_models().get(name)
        if path is None:
            raise FstError(f"unknown model {name!r}: choose one of {', '.join(sorted(available_models())) or 'none'}")
        key = (str(path), path.stat().st_mtime_ns)
        with self._lock:
            cached = self._models.get(name)
            if cached is not None and cached[0] == key:
                self._models.move_to_end(name)
                return cached[1]
            stylizer = Stylizer.load(path, device="cpu")
            self._models[name] = (key, stylizer)
            while len(self._models) > self.size:
                self._models.popitem(last=False)
            return stylizer


def style_names(stylizer: Stylizer) -> list[str]:
    """The styles a multi-style model can blend (empty for a model of one style)."""
    return list(getattr(stylizer, "styles", None) or [])


def target_size(width: int, height: int, size: int | None, max_pixels: float) -> tuple[int, int]:
    """(width, height) with the long side at ``size`` (if given), then within ``max_pixels``."""
    scale = size / max(width, height) if size else 1.0
    if width * height * scale * scale > max_pixels:
        scale = math.sqrt(max_pixels / (width * height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _readable_reason(exc: FstError, path: Path, name: str) -> str:
    # Pillow names the file by its upload path; the user knows it by its own name.
    return str(exc).replace(str(path), name)


def read_photo(path: str | Path, name: str, limits: Limits, size: int | None = None) -> tuple[DecodedImage, str | None]:
    """Decode an uploaded photo at the size it will be stylized; (image, note or None), FstError if refused."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            width, height = img.size
    except Exception:  # noqa: BLE001 - decode_image reports it in one line naming the file
        try:
            decode_image(path, name=name)
        except FstError as exc:
            raise FstError(_readable_reason(exc, path, name)) from None
        raise FstError(f"{name}: not a readable image") from None
    pixels = width * height
    if pixels > limits.refuse_pixels:
        raise FstError(f"{name}: refused: {width}x{height} px ({pixels / 1e6:.0f} MP) is over the "
                       f"{limits.refuse_pixels / 1e6:.0f} MP this app reads")
    new_w, new_h = target_size(width, height, size, limits.max_pixels)
    wanted_w, wanted_h = target_size(width, height, size, math.inf)  # what was asked for
    try:
        # A JPEG decoder can skip detail that the downscale throws away (much faster).
        decoded = decode_image(path, name=name, min_side=min(new_w, new_h) if new_w < width else 0)
    except FstError as exc:
        raise FstError(_readable_reason(exc, path, name)) from None
    if (decoded.rgb.width < decoded.rgb.height) != (width < height):  # turned upright by its EXIF tag
        width, height, new_w, new_h = height, width, new_h, new_w
    note = None
    if wanted_w * wanted_h > limits.max_pixels:
        note = (f"{name}: {width}x{height} px is over the {limits.max_pixels / 1e6:g} MP limit: "
                f"stylized at {new_w}x{new_h}")
    if decoded.rgb.size != (new_w, new_h):
        decoded.rgb = decoded.rgb.resize((new_w, new_h), Image.Resampling.LANCZOS)
        if decoded.alpha is not None:
            decoded.alpha = decoded.alpha.resize((new_w, new_h), Image.Resampling.LANCZOS)
    return decoded, note


def _save_output(image: Image.Image, folder: Path, stem: str, icc: bytes | None) -> Path:
    has_alpha = image.mode == "RGBA"
    path = unique_path(folder, stem, ".png" if has_alpha else ".jpg")
    options: dict[str, Any] = {"icc_profile": icc} if icc else {}
    with atomic_path(path, overwrite=False) as tmp:
        if has_alpha:
            image.save(tmp, format="PNG", **options)
        else:
            image.save(tmp, format="JPEG", quality=JPEG_QUALITY, **options)
    return path


def _save_preview(image: Image.Image, folder: Path, stem: str) -> Path:
    preview = image.convert("RGB")
    preview.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE), Image.Resampling.LANCZOS)
    path = unique_path(folder, stem, ".jpg")
    with atomic_path(path, overwrite=False) as tmp:
        preview.save(tmp, format="JPEG", quality=90)
    return path


def _call_options(stylizer: Stylizer, options: Options) -> dict[str, Any]:
    if not 0.0 <= options.strength <= 1.0:
        raise FstError(f"strength must be between 0 and 1, got {options.strength}")
    kwargs: dict[str, Any] = {"strength": float(options.strength), "preserve_color": bool(options.preserve_color)}
    if options.style and style_names(stylizer):
        kwargs["style"] = options.style
    return kwargs


def stylize_uploads(
    uploads: Sequence[tuple[str | Path, str]],
    options: Options,
    data: AppData,
    models: ModelCache,
    limits: Limits = Limits(),
    progress: Progress | None = None,
) -> StylizeResult:
    """Stylize each upload ((path, original name): photos and clips) with ``options``.

    One unreadable upload is reported in ``errors`` and the others still go through; an
    unknown model or a bad option is an FstError for the whole request.
    """
    if not uploads:
        raise FstError("add a photo or a clip first (upload, drop or take one with the webcam)")
    stylizer = models.get(options.model)
    kwargs = _call_options(stylizer, options)
    folder = data.new_result_folder()
    previews = folder / "inputs"
    previews.mkdir()
    result = StylizeResult(folder)
    for index, (path, name) in enumerate(uploads):
        path = Path(path)
        name = Path(name or path.name).name
        stem = f"{safe_stem(name)}_{safe_stem(options.model, 'model')}"
        if progress is not None:
            progress(index / len(uploads), f"{name} ({index + 1} of {len(uploads)})")
        try:
            if is_video(name):
                frames = _SerializedFrames(stylizer, models.inference)
                result.clips.append(_stylize_clip(frames, path, name, folder, stem, options, kwargs, limits,
                                                  result.notes, progress, index, len(uploads)))
                continue
            decoded, note = read_photo(path, name, limits, options.size)
        except FstError as exc:
            result.errors.append(str(exc))
            continue
        if note:
            result.notes.append(note)
        photo = decoded.rgb if decoded.alpha is None else Image.merge("RGBA", (*decoded.rgb.split(), decoded.alpha))
        with models.inference:
            out = stylizer(photo, **kwargs)
        out_path = _save_output(out, folder, stem, decoded.icc_profile)
        result.pairs.append((_save_preview(photo, previews, safe_stem(name)), out_path, f"{name} → {options.model}"))
    if len(result.outputs) > 1:
        result.archive = write_archive(result.outputs, folder / f"fst_{safe_stem(options.model, 'model')}.zip")
    if progress is not None:
        progress(1.0, "done")
    return result


class _SerializedFrames:
    """A stylizer whose frame batches take the inference lock one batch at a time (a long clip
    does not hold up photos sent meanwhile)."""

    def __init__(self, stylizer: Stylizer, lock: threading.Lock) -> None:
        self.stylizer, self.lock = stylizer, lock

    def stylize_batch(self, batch: Any, **options: Any) -> Any:
        with self.lock:
            return self.stylizer.stylize_batch(batch, **options)


def _stylize_clip(frames: _SerializedFrames, path: Path, name: str, folder: Path, stem: str, options: Options,
                  kwargs: dict[str, Any], limits: Limits, notes: list[str], progress: Progress | None,
                  index: int, count: int) -> Path:
    try:
        info = probe(path)
    except FstError as exc:
        raise FstError(_readable_reason(exc, path, name)) from None
    size = options.size
    if max(info.width, info.height) > limits.max_clip_side and (size is None or size > limits.max_clip_side):
        size = limits.max_clip_side
        notes.append(f"{name}: {info.width}x{info.height} clip stylized with its long side at {size} px "
                     f"(the limit for clips)")
    total = expected_frames(info) or 0
    done = 0

    def frames_done(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None and total:
            progress((index + min(done / total, 1.0)) / count, f"{name}: frame {done} of {total}")

    dest = unique_path(folder, stem, ".mp4")
    try:
        stylize_video(frames, path, dest, size=size, progress=frames_done, **kwargs)
    except FstError as exc:
        raise FstError(_readable_reason(exc, path, name)) from None
    return dest


def write_archive(files: Sequence[Path], dest: Path) -> Path:
    """A zip of ``files`` (stored under their own names), written atomically."""
    with atomic_path(dest, overwrite=False) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
            for path in files:
                archive.write(path, arcname=path.name)
    return dest
