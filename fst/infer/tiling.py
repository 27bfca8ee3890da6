"""Tiled inference for images too large to stylize in one pass, without seams.

Two things make naive tiling visible:

* **Instance norm.** Each InstanceNorm layer normalises with the statistics of the
  image it sees. Run per tile, every tile gets its own statistics, so a sky tile and
  a foliage tile are normalised differently and their borders show. Here the whole
  image is first run once, downscaled to at most ``stats_size`` on its long side,
  recording every norm layer's per-channel mean and variance; every full-resolution
  tile then runs with those fixed statistics, as if it were part of one big image.
* **Borders.** Near a tile's inner edge the network sees reflection padding instead
  of the real neighbourhood. Tiles overlap by ``overlap`` pixels and are blended with
  weights that fall smoothly (raised cosine) to zero at inner edges, so each pixel
  is dominated by the tile in which it lies deepest. Tile origins are multiples of 4
  so the two stride-2 layers sample the same grid as the untiled network.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Stride of the encoder (two stride-2 convolutions): tile origins stay on this grid.
GRID = 4
# Share of each overlap given (almost) no weight; chosen by measuring tiled-vs-whole error
# (docs/inference.md): 3/8 of a 96-pixel overlap brought the largest error below 1e-3.
DEAD_FRACTION = 0.375


@dataclass(frozen=True)
class Tile:
    """A window ``[top:bottom, left:right]`` of the full image."""

    top: int
    bottom: int
    left: int
    right: int


def _spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """(start, end) of tiles covering ``[0, length)`` along one axis.

    Starts are multiples of GRID; the last tile runs to the end (up to GRID - 1 longer).
    """
    if length <= tile:
        return [(0, length)]
    step = max(GRID, (tile - overlap) // GRID * GRID)
    starts = list(range(0, length - tile, step))
    last = (length - tile) // GRID * GRID
    if last > starts[-1]:
        starts.append(last)
    return [(start, start + tile) for start in starts[:-1]] + [(starts[-1], length)]


def tile_grid(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """Tiles of at most ``tile`` (+ GRID - 1 on the last row/column) pixels covering the image."""
    if tile < 2 * GRID or overlap < 0 or overlap >= tile:
        raise ValueError(f"need tile >= {2 * GRID} and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    return [
        Tile(top, bottom, left, right)
        for top, bottom in _spans(height, tile, overlap)
        for left, right in _spans(width, tile, overlap)
    ]


def _ramp(length: int, fade_start: int, fade_end: int) -> torch.Tensor:
    """1-D weights: 0 -> 1 over ``fade_start`` pixels, 1 -> 0 over ``fade_end`` pixels.

    The first ``DEAD_FRACTION`` of each fade has (almost) zero weight, the rest is a
    raised cosine: pixels right at a tile's inner edge, which saw reflection padding
    instead of real context, then barely count. Weights stay positive so every pixel
    has some weight even where only one tile covers it.
    """
    weights = torch.ones(length)
    for fade, flip in ((fade_start, False), (fade_end, True)):
        fade = min(fade, length)
        if fade <= 0:
            continue
        dead = int(fade * DEAD_FRACTION)
        t = ((torch.arange(fade, dtype=torch.float32) + 0.5 - dead) / (fade - dead)).clamp(1e-3, 1.0)
        ramp = 0.5 - 0.5 * torch.cos(math.pi * t)
        if flip:
            weights[length - fade :] *= ramp.flip(0)
        else:
            weights[:fade] *= ramp
    return weights


def blend_weights(tile: Tile, height: int, width: int, overlap: int) -> torch.Tensor:
    """(h, w) blending window of ``tile``: faded only along edges shared with other tiles."""
    rows = _ramp(tile.bottom - tile.top, overlap if tile.top > 0 else 0, overlap if tile.bottom < height else 0)
    cols = _ramp(tile.right - tile.left, overlap if tile.left > 0 else 0, overlap if tile.right < width else 0)
    return rows[:, None] * cols[None, :]


def _norm_layers(net: nn.Module) -> list[nn.InstanceNorm2d]:
    return [m for m in net.modules() if isinstance(m, nn.InstanceNorm2d)]


@contextmanager
def recording_norm_stats(net: nn.Module) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Within the block, each forward of ``net`` appends every InstanceNorm layer's input
    (mean, var) per channel, shape (C,), pooled over the batch, to the yielded list."""
    stats: list[tuple[torch.Tensor, torch.Tensor]] = []

    def capture(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        var, mean = torch.var_mean(inputs[0].float(), dim=(0, 2, 3), unbiased=False)
        stats.append((mean, var))

    handles = [layer.register_forward_pre_hook(capture) for layer in _norm_layers(net)]
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def record_norm_stats(
    net: nn.Module, image: torch.Tensor, run: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Run ``net`` (through ``run`` if given) on one image (1, 3, H, W); its norm statistics."""
    with recording_norm_stats(net) as stats:
        (run or net)(image)
    return stats


@contextmanager
def fixed_norm_stats(net: nn.Module, stats: list[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[None]:
    """Within the block, every InstanceNorm layer of ``net`` normalises with the given statistics."""
    layers = _norm_layers(net)
    if len(layers) != len(stats):
        raise ValueError(f"{len(stats)} recorded statistics for {len(layers)} norm layers")

    def make_forward(layer: nn.InstanceNorm2d, mean: torch.Tensor, var: torch.Tensor) -> Callable:
        fixed_forward = getattr(layer, "fixed_forward", None)
        if fixed_forward is not None:  # a layer that uses the statistics otherwise (fst.nets.transformer.ImageStats)
            def forward_with(x: torch.Tensor) -> torch.Tensor:
                return fixed_forward(x, mean.to(x.device), var.to(x.device))

            return forward_with

        def forward(x: torch.Tensor) -> torch.Tensor:
            scale = torch.rsqrt(var.to(x.device) + layer.eps)
            shift = -mean.to(x.device) * scale
            if layer.affine:
                scale = scale * layer.weight
                shift = shift * layer.weight + layer.bias
            return x * scale.to(x.dtype).view(1, -1, 1, 1) + shift.to(x.dtype).view(1, -1, 1, 1)

        return forward

    for layer, (mean, var) in zip(layers, stats):
        layer.forward = make_forward(layer, mean, var)  # instance attribute shadows the class method
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def downscale_for_stats(image: torch.Tensor, stats_size: int) -> torch.Tensor:
    """``image`` with its long side reduced to ``stats_size`` (antialiased), or unchanged if smaller."""
    height, width = image.shape[-2:]
    scale = stats_size / max(height, width)
    if scale >= 1.0:
        return image
    size = (max(GRID * 4, round(height * scale)), max(GRID * 4, round(width * scale)))
    return F.interpolate(image.float(), size=size, mode="bilinear", antialias=True, align_corners=False).to(image.dtype)


@torch.no_grad()
def tiled_forward(
    net: nn.Module,
    image: torch.Tensor,
    tile: int,
    overlap: int,
    stats_size: int = 1024,
    run: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Stylize one image (1, 3, H, W) tile by tile; returns (1, 3, H, W) float32 on ``image``'s device.

    ``run`` calls the network (for autocast / memory layout); default ``net``.
    Peak memory is one tile's activations plus the float32 output and weight accumulators.
    """
    if image.shape[0] != 1:
        raise ValueError("tiled_forward takes one image at a time")
    run = run or net
    stats = record_norm_stats(net, downscale_for_stats(image, stats_size), run)
    with fixed_norm_stats(net, stats):
        return tiled_forward_with(run, image, tile, overlap)


@torch.no_grad()
def tiled_forward_with(
    run_tile: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, tile: int, overlap: int
) -> torch.Tensor:
    """The tiles of one image (1, 3, H, W), each stylized by ``run_tile`` (which normalises
    with the statistics of the whole image), blended into (1, 3, H, W) float32."""
    height, width = image.shape[-2:]
    output = torch.zeros(1, 3, height, width, device=image.device)
    total = torch.zeros(1, 1, height, width, device=image.device)
    for t in tile_grid(height, width, tile, overlap):
        out = run_tile(image[..., t.top : t.bottom, t.left : t.right]).float().to(image.device)
        weight = blend_weights(t, height, width, overlap).to(image.device)
        output[..., t.top : t.bottom, t.left : t.right] += out * weight
        total[..., t.top : t.bottom, t.left : t.right] += weight
    return output / total
