"""What the Models tab shows: every installed model with its style image, training facts and a sample.

Facts come from the model file's metadata (steps, batch, crop, photos, wall time, machine)
and, for models trained by the app, from its job record (the last training and validation
losses). The sample is a bundled validation photo stylized at 384 px, made once per model
file and kept in ``samples/``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from fst.errors import FstError
from fst.fsutil import atomic_path
from fst.images import list_images, open_rgb, resize_long_side
from fst.infer.backends import available_models
from fst.nets.model_file import read_metadata
from fst.resources import BUNDLED_MODELS_DIR, STYLES_DIR, VAL_PHOTOS_DIR

from fst.app.store import AppData
from fst.app.stylizing import ModelCache, style_names

SAMPLE_SIDE = 384
THUMB_SIDE = 512


@dataclass
class ModelCard:
    """One installed model as the Models tab describes it."""

    name: str
    path: Path
    source: str  # "bundled", "trained here" or "added" (copied into a models folder)
    metadata: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] | None = None
    error: str | None = None

    @property
    def style_name(self) -> str:
        return str(self.metadata.get("style_name") or self.name)

    @property
    def training(self) -> dict[str, Any]:
        """The schedule recorded in the file (older files have a sentence there: shown as the note)."""
        value = self.metadata.get("training")
        return dict(value) if isinstance(value, dict) else {}

    def style_image(self, data: AppData) -> Path | None:
        """The painting it was trained on, where it can be found."""
        if self.record is not None:
            stored = data.styles / f"{self.name}{Path(self.record.get('painting', 'x.jpg')).suffix}"
            if stored.is_file():
                return stored
        for candidate in (data.styles / f"{self.name}.jpg", STYLES_DIR / f"{self.style_name}.jpg",
                          Path(str((self.metadata.get("loss") or {}).get("style_image", "")))):
            if str(candidate) not in ("", ".") and candidate.is_file():
                return candidate
        return None

    def facts(self) -> list[tuple[str, str]]:
        """(label, value) rows: what made this model."""
        train = self.training
        steps = train.get("steps", self.metadata.get("steps"))
        rows = [("source", self.source), ("style", self.style_name),
                ("steps", str(steps) if steps is not None else "not recorded")]
        if train.get("batch_size") is not None:
            rows.append(("batch x crop", f"{train['batch_size']} x {train.get('crop')} px"))
        minutes = train.get("wall_minutes_this_run")
        if self.record is not None and self.record.get("started") and self.record.get("ended"):
            minutes = round((self.record["ended"] - self.record["started"]) / 60, 1)
        rows.append(("training time", f"{minutes} min" if minutes is not None else "not recorded"))
        if train.get("machine"):
            rows.append(("machine", str(train["machine"])))
        rows.append(("photos", str(train.get("photos") or "not recorded")))
        losses = (self.record or {}).get("losses") or {}
        if losses.get("train") is not None or losses.get("val") is not None:
            rows.append(("last losses", ", ".join(f"{k} {v:.3f}" for k, v in losses.items() if v is not None)))
        else:
            rows.append(("last losses", "not recorded"))
        styles = self.metadata.get("styles")
        if isinstance(styles, list) and styles:
            rows.append(("styles", ", ".join(map(str, styles))))
        arch = self.metadata.get("architecture") or {}
        if arch:
            rows.append(("network", f"width {arch.get('width')}, {arch.get('num_residual')} residual blocks"))
        rows.append(("file", str(self.path)))
        if isinstance(self.metadata.get("training"), str):
            rows.append(("note", self.metadata["training"]))
        if self.error:
            rows.append(("problem", self.error))
        return rows


def list_cards(data: AppData, finished: dict[str, dict[str, Any]]) -> list[ModelCard]:
    """Every model the model search finds, with its metadata; ``finished``: name -> the app's job record."""
    cards = []
    for name, path in sorted(available_models().items()):
        record = finished.get(name)
        if record is not None and Path(record.get("model", "")) != path:
            record = None  # another file of that name comes first in the search
        if record is not None:
            source = "trained here"
        elif path.parent.resolve() == BUNDLED_MODELS_DIR.resolve():
            source = "bundled"
        else:
            source = f"added ({path.parent})"
        card = ModelCard(name, path, source, record=record)
        if path.suffix == ".safetensors":
            try:
                card.metadata = read_metadata(path)
            except FstError as exc:
                card.error = str(exc)
        cards.append(card)
    return cards


def _key(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def style_thumbnail(card: ModelCard, data: AppData) -> Path | None:
    """The style image at THUMB_SIDE px in ``samples/`` (None if the painting is not found)."""
    source = card.style_image(data)
    if source is None:
        return None
    dest = data.samples / f"{card.name}-style-{_key(source)}.jpg"
    if not dest.is_file():
        image = open_rgb(source)
        image.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
        with atomic_path(dest) as tmp:
            image.save(tmp, format="JPEG", quality=90)
    return dest


def sample_photo() -> Path | None:
    photos = list_images(VAL_PHOTOS_DIR)
    return photos[0] if photos else None


def sample_output(card: ModelCard, data: AppData, models: ModelCache) -> tuple[Path | None, Path | None]:
    """(the sample photo, the model's output for it) at SAMPLE_SIDE px, made once per model file."""
    photo = sample_photo()
    if photo is None:
        return None, None
    photo_dest = data.samples / f"photo-{_key(photo)}.jpg"
    if not photo_dest.is_file():
        with atomic_path(photo_dest) as tmp:
            resize_long_side(open_rgb(photo), SAMPLE_SIDE).save(tmp, format="JPEG", quality=90)
    dest = data.samples / f"{card.name}-sample-{_key(card.path)}.jpg"
    if not dest.is_file():
        stylizer = models.get(card.name)
        styles = style_names(stylizer)
        # A multi-style model needs a choice: its first style stands for it.
        with models.inference:
            out = stylizer(open_rgb(photo_dest), **({"style": styles[0]} if styles else {}))
        with atomic_path(dest) as tmp:
            out.convert("RGB").save(tmp, format="JPEG", quality=90)
    return photo_dest, dest
