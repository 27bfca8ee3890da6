"""Python API for stylizing photos with a trained model.

>>> from fst import Stylizer
>>> s = Stylizer.load("starry_night")          # a name, or a .safetensors/.onnx/.pth path
>>> out = s(Image.open("photo.jpg"), size=1024)  # PIL in, PIL out (alpha kept)
>>> batch_out = s(torch.rand(4, 3, 256, 256))    # tensors in [0, 1], (3,H,W) or (B,3,H,W)
>>> fst.stylize("starry_night", "photo.jpg")     # one call: a path or PIL image in, RGB PIL out
>>> s.stylize_video("clip.mp4", "clip_starry.mp4")  # streamed, audio copied (fst.infer.video)
>>> g = Stylizer.load("gallery")                 # a multi-style model: g.styles lists its styles
>>> g(img, style="the_wave")                     # one of them, or a blend (fst.infer.styles):
>>> g(img, style={"starry_night": 0.7, "the_wave": 0.3})

Large images are tiled automatically (see :mod:`fst.infer.tiling`); tiny ones are padded
up to the network's minimum size and cropped back.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from fst.errors import FstError
from fst.images import open_rgb, pil_to_tensor, resize_long_side, tensor_to_pil, upright
from fst.infer.backends import Backend, CachedOnnxBackend, TorchBackend, load_backend
from fst.infer.color import blend, preserve_color as luminance_transfer
from fst.infer.styles import StyleChoice, style_weights, styles_in
from fst.infer.tiling import tiled_forward

# Below this many pixels per side reflection padding inside the network is impossible
# (it needs a side > pad at 1/4 resolution); smaller images are edge-padded up to it.
MIN_SIDE = 16
# "auto" tiling: images above this many pixels run in tiles of AUTO_TILE, which bounds
# activation memory (one full-resolution width-32 feature map is 128 bytes per pixel).
AUTO_TILE_PIXELS = 2048 * 2048
AUTO_TILE = 1024
DEFAULT_OVERLAP = 128
DEFAULT_STATS_SIZE = 1024

TileSpec = int | str | None


class Stylizer:
    """A loaded style model plus the pre/post-processing around it."""

    def __init__(self, backend: Backend, name: str = "model") -> None:
        self.backend = backend
        self.name = name

    @classmethod
    def load(cls, model: str | Path, device: str = "auto", precision: str = "auto", backend: str = "auto",
             compile: bool = False) -> Stylizer:
        """Load a model by name (``checkpoints/`` or ``$FST_MODELS``) or path.

        ``backend``: ``auto`` (ONNX Runtime on the CPU, PyTorch elsewhere), ``torch`` or
        ``onnx`` (fst.infer.backends); ``compile``: torch.compile the PyTorch network.
        """
        backend, path = load_backend(model, device=device, precision=precision, backend=backend, compile=compile)
        return cls(backend, name=path.name.rsplit(".", 1)[0])

    @property
    def metadata(self) -> dict[str, Any]:
        return self.backend.metadata

    @property
    def style(self) -> str:
        """The style name recorded at training time (the model's name if none was)."""
        return str(self.metadata.get("style_name") or self.name)

    @property
    def styles(self) -> list[str]:
        """The styles of a multi-style model, in the order of its weight vector; [] for a single-style one."""
        return styles_in(self.metadata)

    def style_weights(self, style: StyleChoice) -> torch.Tensor | None:
        """The network's style input for ``style`` (a name, a {name: weight} blend or its
        ``"a:0.7,b:0.3"`` text; see fst.infer.styles): (num_styles,) weights summing to 1,
        or None for a single-style model called without one. A multi-style model needs a
        style: without one, or with an unknown name or bad weights, an FstError lists its styles."""
        return style_weights(self.styles, style, self.name)

    @property
    def device(self) -> torch.device:
        return self.backend.device

    def __repr__(self) -> str:
        return f"Stylizer(name={self.name!r}, style={self.style!r}, device={self.device}, dtype={self.backend.dtype})"

    def __call__(
        self,
        image: Image.Image | torch.Tensor | Sequence[Image.Image],
        *,
        size: int | None = None,
        tile: TileSpec = "auto",
        overlap: int = DEFAULT_OVERLAP,
        preserve_color: bool = False,
        strength: float = 1.0,
        batch_size: int = 4,
        style: StyleChoice = None,
    ) -> Image.Image | torch.Tensor | list[Image.Image]:
        """Stylize a PIL image, a list of them, or a (3, H, W) / (B, 3, H, W) tensor in [0, 1].

        ``size`` resizes the long side first. PIL inputs are turned upright by their EXIF
        orientation and keep their alpha channel. Tensors come back on their own device.
        ``style``: for a multi-style model, which style or blend (see :meth:`style_weights`).
        """
        self.style_weights(style)  # a bad choice fails before any image is decoded or resized
        options = dict(tile=tile, overlap=overlap, preserve_color=preserve_color, strength=strength, style=style)
        if isinstance(image, Image.Image):
            return self._stylize_pils([image], size, batch_size, options)[0]
        if isinstance(image, torch.Tensor):
            return self._stylize_tensor_input(image, size, options)
        if isinstance(image, Sequence) and all(isinstance(i, Image.Image) for i in image):
            return self._stylize_pils(list(image), size, batch_size, options)
        raise TypeError(f"expected a PIL image, a list of them or a tensor, got {type(image).__name__}")

    def _stylize_tensor_input(self, image: torch.Tensor, size: int | None, options: dict) -> torch.Tensor:
        if image.dim() not in (3, 4) or image.shape[-3] != 3:
            raise ValueError(f"expected a (3, H, W) or (B, 3, H, W) tensor, got shape {tuple(image.shape)}")
        batch = image.unsqueeze(0) if image.dim() == 3 else image
        if size:
            h, w = batch.shape[-2:]
            scale = size / max(h, w)
            target = (max(1, round(h * scale)), max(1, round(w * scale)))
            batch = F.interpolate(batch.float(), size=target, mode="bicubic", antialias=True, align_corners=False)
            batch = batch.clamp(0, 1)
        out = self.stylize_batch(batch, **options).to(image.device)
        return out[0] if image.dim() == 3 else out

    def _stylize_pils(self, images: list[Image.Image], size: int | None, batch_size: int, options: dict) -> list[Image.Image]:
        rgbs, alphas = [], []
        for img in images:
            decoded = upright(img)
            rgb, alpha = decoded.rgb, decoded.alpha
            if size:
                rgb, alpha = resize_long_side(rgb, size), (resize_long_side(alpha, size) if alpha is not None else None)
            rgbs.append(pil_to_tensor(rgb))
            alphas.append(pil_to_tensor(alpha) if alpha is not None else None)
        outs = self.stylize_many(rgbs, batch_size=batch_size, **options)
        return [tensor_to_pil(out, alpha) for out, alpha in zip(outs, alphas)]

    def stylize_video(self, source: str | Path, dest: str | Path, **options: Any) -> Any:
        """Stylize a clip into ``dest`` (MP4, H.264), streamed frame batch by batch; returns a
        :class:`~fst.infer.video.VideoResult`. ``options``: see :func:`fst.infer.video.stylize_video`."""
        from fst.infer.video import stylize_video

        return stylize_video(self, source, dest, **options)

    def stylize_many(self, images: Sequence[torch.Tensor], batch_size: int = 4, **options: Any) -> list[torch.Tensor]:
        """Stylize (3, H, W) tensors, batching runs of equal-sized images; returns CPU tensors."""
        outs: list[torch.Tensor | None] = [None] * len(images)
        start = 0
        while start < len(images):
            end = start + 1
            shape = images[start].shape
            while end < len(images) and end - start < batch_size and images[end].shape == shape:
                end += 1
            batch = torch.stack(list(images[start:end]))
            for i, out in enumerate(self.stylize_batch(batch, **options).cpu(), start):
                outs[i] = out
            start = end
        return outs  # type: ignore[return-value]

    def stylize_batch(
        self,
        batch: torch.Tensor,
        *,
        tile: TileSpec = "auto",
        overlap: int = DEFAULT_OVERLAP,
        preserve_color: bool = False,
        strength: float = 1.0,
        stats_size: int = DEFAULT_STATS_SIZE,
        style: StyleChoice = None,
    ) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> stylized (B, 3, H, W) float32 in [0, 1] on the model's device."""
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        weights = self.style_weights(style)
        tile_size = self._tile_size(batch.shape[-2:], tile)
        if tile_size:
            stylized = torch.cat([self._tiled(img[None], tile_size, overlap, stats_size, weights) for img in batch])
        else:
            stylized = self._whole(batch, weights)
        photo = batch.to(stylized.device, torch.float32)
        stylized = stylized.clamp(0.0, 1.0)
        if preserve_color:
            stylized = luminance_transfer(stylized, photo)
        return blend(stylized, photo, strength)

    def _tile_size(self, hw: torch.Size | tuple[int, int], tile: TileSpec) -> int | None:
        """Tile edge to use for an image of size ``hw``, or None to run it whole."""
        h, w = int(hw[0]), int(hw[1])
        if tile in (None, 0, "0", "none", "off"):
            return None
        if tile == "auto":
            if h * w <= AUTO_TILE_PIXELS or not self.backend.supports_tiling:
                return None
            return AUTO_TILE
        tile_size = int(tile)
        if max(h, w) <= tile_size:
            return None
        if not self.backend.supports_tiling:
            raise FstError(f"{self.name}: tiling needs a PyTorch model (.safetensors or .pth), not ONNX")
        return tile_size

    def _run(self, batch: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """The backend on ``batch``, with the style weights of a multi-style model."""
        return self.backend(batch) if weights is None else self.backend(batch, style=weights)

    def _whole(self, batch: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """One forward pass; tiny images are edge-padded to MIN_SIDE and cropped back."""
        h, w = batch.shape[-2:]
        pad_h, pad_w = max(0, MIN_SIDE - h), max(0, MIN_SIDE - w)
        if pad_h or pad_w:
            padded = F.pad(batch.float(), (0, pad_w, 0, pad_h), mode="replicate")
            return self._run(padded, weights)[..., :h, :w]
        try:
            return self._run(batch, weights)
        except torch.OutOfMemoryError:
            if not self.backend.supports_tiling or max(h, w) <= 2 * MIN_SIDE:
                raise
            # Out of accelerator memory: fall back to tiles of half the long side.
            torch.cuda.empty_cache()
            tile = max(256, max(h, w) // 2 // 4 * 4)
            return torch.cat([self._tiled(img[None], tile, DEFAULT_OVERLAP, DEFAULT_STATS_SIZE, weights)
                              for img in batch])

    def _tiled(self, image: torch.Tensor, tile: int, overlap: int, stats_size: int,
               weights: torch.Tensor | None = None) -> torch.Tensor:
        backend = self.backend
        overlap = min(overlap, tile // 2) // 4 * 4  # more than half a tile only adds work
        if isinstance(backend, CachedOnnxBackend):
            return backend.tiled(image, tile, overlap, stats_size)
        assert isinstance(backend, TorchBackend)
        with torch.inference_mode():
            return tiled_forward(
                backend.net, image.to(backend.device, torch.float32), tile, overlap, stats_size=stats_size,
                run=lambda x: self._run(x, weights),
            )


def stylize(model: str | Path, image: str | Path | Image.Image, device: str = "cpu") -> Image.Image:
    """Stylize one photo (a path or a PIL image) with ``model`` (a name or a file); returns RGB.

    The one-call shortcut: loads the model each time, so use :class:`Stylizer` for many photos.
    """
    img = image.convert("RGB") if isinstance(image, Image.Image) else open_rgb(image)
    return Stylizer.load(model, device=device)(img)
