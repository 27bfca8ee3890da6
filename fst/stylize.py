"""Minimal single-image stylization with an exported model file."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from fst.images import open_rgb, pil_to_tensor, tensor_to_pil


@torch.inference_mode()
def stylize(model_path: str | Path, image: str | Path | Image.Image, device: str = "cpu") -> Image.Image:
    """Stylize one photo (a path or a PIL image) with the model file at ``model_path``."""
    from fst.model_file import load_model

    net, _ = load_model(model_path, device=device)
    img = open_rgb(image) if not isinstance(image, Image.Image) else image.convert("RGB")
    out = net(pil_to_tensor(img).unsqueeze(0).to(device))
    return tensor_to_pil(out)
