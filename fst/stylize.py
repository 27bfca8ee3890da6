"""Minimal single-image stylization with a model file (see fst.infer.stylizer for the full API)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image


def stylize(model_path: str | Path, image: str | Path | Image.Image, device: str = "cpu") -> Image.Image:
    """Stylize one photo (a path or a PIL image) with the model at ``model_path``; returns RGB."""
    from fst.images import open_rgb
    from fst.infer.stylizer import Stylizer

    img = image.convert("RGB") if isinstance(image, Image.Image) else open_rgb(image)
    return Stylizer.load(model_path, device=device)(img)
