"""Perceptual loss of Johnson et al. (2016): content + Gram style + total variation.

Normalisation (why the terms are scale-free):
At Caffe scale (0-255 BGR input) VGG activations are large and their size differs by
orders of magnitude between layers (mean square ~1e3 at relu1_2, ~1e5 at relu3_3), so a
raw sum of Gram differences is decided by relu2_2/relu3_3 alone and relu1_2/relu4_3 are
ornaments. Each style layer's loss is therefore divided by the mean square of its
target Gram matrix, and the content loss by the mean square of the content features:
every term is a *relative* squared error, each listed style layer contributes in
proportion to its weight, and the same weights work for the Caffe and torchvision VGGs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fst.errors import FstError
from fst.images import load_style_image
from fst.loss.vgg import VGG16Features
from fst.loss.weights import VGGWeights, VGGWeightsUnavailable, load_vgg16_weights


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Gram matrix of (B, C, H, W) features, normalised by C*H*W, always in fp32.

    Autocast is switched off here: in fp16 the sums of 0-255-scale activations
    overflow, and bf16 loses the precision the style loss needs.
    """
    b, c, h, w = features.shape
    with torch.autocast(device_type=features.device.type, enabled=False):
        flat = features.float().reshape(b, c, h * w)
        return torch.bmm(flat, flat.transpose(1, 2)) / (c * h * w)


def content_loss(output_features: torch.Tensor, target_features: torch.Tensor) -> torch.Tensor:
    """MSE between feature maps relative to the target's mean square (scale-free)."""
    out, target = output_features.float(), target_features.float()
    return F.mse_loss(out, target) / target.pow(2).mean().clamp_min(1e-8)


def total_variation(image: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between neighbouring pixels (smoothness prior)."""
    image = image.float()
    dh = image[..., 1:, :] - image[..., :-1, :]
    dw = image[..., :, 1:] - image[..., :, :-1]
    return dh.pow(2).mean() + dw.pow(2).mean()


def sliced_palette_distance(output: torch.Tensor, target_sorted: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Sliced Wasserstein-2 distance between each output image's pixel colours and a painting's.

    ``directions`` (3, D) are unit vectors in RGB; ``target_sorted`` (N, D) the painting's
    pixels projected on them, sorted. Each image's projections are sorted and compared
    quantile by quantile (so any image size matches any painting size), and each
    direction's error is divided by the painting's variance along it: scale-free, like
    the other terms. It sees the whole colour distribution (how much of each colour),
    which the Gram matrices of the style term only constrain loosely.
    """
    batch = output.shape[0]
    pixels = output.float().permute(0, 2, 3, 1).reshape(batch, -1, 3)
    projected = torch.sort(pixels @ directions, dim=1).values  # (B, M, D)
    m, n = projected.shape[1], target_sorted.shape[0]
    quantiles = ((torch.arange(m, device=output.device) + 0.5) * (n / m)).long().clamp_max(n - 1)
    error = (projected - target_sorted[quantiles]).pow(2).mean(dim=(0, 1))
    return (error / target_sorted.var(dim=0).clamp_min(1e-8)).mean()


class PaletteTarget(nn.Module):
    """The painting's colours, projected on fixed random RGB directions and sorted, as buffers."""

    def __init__(self, painting: torch.Tensor, directions: int = 32, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        unit = torch.randn(3, directions, generator=generator)
        self.register_buffer("directions", unit / unit.norm(dim=0, keepdim=True))
        pixels = painting.detach().float()[0].permute(1, 2, 0).reshape(-1, 3)
        self.register_buffer("sorted_projections", torch.sort(pixels @ self.directions, dim=0).values)

    def forward(self, output: torch.Tensor) -> torch.Tensor:
        return sliced_palette_distance(output, self.sorted_projections, self.directions)


class StyleTargets(nn.Module):
    """Gram matrices of the style image at each style layer, kept as buffers.

    Computed once; ``scale_<layer>`` is 1 / mean(G_target^2), the per-layer
    normaliser described in the module docstring.
    """

    def __init__(self, grams: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.layers = list(grams)
        for layer, gram in grams.items():
            gram = gram.detach().float()
            self.register_buffer(f"gram_{layer}", gram)
            self.register_buffer(f"scale_{layer}", 1.0 / gram.pow(2).mean().clamp_min(1e-12))

    @classmethod
    def from_features(cls, features: Mapping[str, torch.Tensor], layers: Sequence[str]) -> StyleTargets:
        return cls({layer: gram_matrix(features[layer]) for layer in layers})

    def gram(self, layer: str) -> torch.Tensor:
        return getattr(self, f"gram_{layer}")

    def layer_losses(self, features: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Relative Gram error per style layer for a batch of output features."""
        losses = {}
        for layer in self.layers:
            gram = gram_matrix(features[layer])
            target = self.gram(layer).expand_as(gram)
            losses[layer] = F.mse_loss(gram, target) * getattr(self, f"scale_{layer}")
        return losses


class PerceptualLoss(nn.Module):
    """Weighted content + style + TV loss against a frozen VGG16.

    ``forward(output, content)`` returns a dict of detached-free loss terms:
    ``total``, ``content``, ``style``, ``tv`` and ``style/<layer>`` (weighted).

    Every argument is required: the values used for training live in
    ``configs/loss/*.yaml`` (instantiated by Hydra), nowhere else. :attr:`config` is
    that node again, resolved: ``hydra.utils.instantiate(loss.config)`` rebuilds this
    loss (when it was given a style image path and a weights spec, as configs do).
    """

    def __init__(
        self,
        style_image: str | Path | torch.Tensor,
        style_size: int | None,
        content_layers: Sequence[str],
        style_layers: Mapping[str, float],
        content_weight: float,
        style_weight: float,
        tv_weight: float,
        palette_weight: float,
        vgg_weights: str | VGGWeights,
    ) -> None:
        super().__init__()
        self.content_layers = [str(layer) for layer in content_layers]
        self.style_layer_weights = {str(k): float(v) for k, v in style_layers.items()}
        self.content_weight = float(content_weight)
        self.style_weight = float(style_weight)
        self.tv_weight = float(tv_weight)
        self.palette_weight = float(palette_weight)
        self.style_size = None if style_size is None else int(style_size)

        # The painting first: a wrong path should not wait for the VGG16 weights.
        self.style_image_path = None if isinstance(style_image, torch.Tensor) else str(style_image)
        if self.style_image_path is not None:
            style_image = load_style_image(self.style_image_path, self.style_size)

        if isinstance(vgg_weights, str):
            try:
                weights = load_vgg16_weights(vgg_weights)
            except VGGWeightsUnavailable as exc:
                raise FstError(str(exc)) from None
        else:
            weights = vgg_weights
        self.vgg_source = weights.source
        # What a user would pass to reproduce the loss: the spec, not this machine's cache path.
        self.vgg_spec = vgg_weights if isinstance(vgg_weights, str) else weights.preprocessing
        taps = list(dict.fromkeys([*self.content_layers, *self.style_layer_weights]))
        self.vgg = VGG16Features(taps, weights)
        # The photo only needs the content layer: a second, shallower view of the
        # same frozen weights saves most of VGG's cost on the target pass.
        self.content_vgg = VGG16Features(self.content_layers, weights)

        with torch.no_grad():
            features = self.vgg(style_image)
        self.style_targets = StyleTargets.from_features(features, list(self.style_layer_weights))
        self.palette = PaletteTarget(style_image)

    @property
    def config(self) -> dict[str, Any]:
        """The resolved config node this loss was built from (plain, JSON-serialisable)."""
        return {
            "_target_": f"{type(self).__module__}.{type(self).__qualname__}",
            "style_image": self.style_image_path,
            "style_size": self.style_size,
            "content_layers": list(self.content_layers),
            "style_layers": dict(self.style_layer_weights),
            "content_weight": self.content_weight,
            "style_weight": self.style_weight,
            "tv_weight": self.tv_weight,
            "palette_weight": self.palette_weight,
            "vgg_weights": self.vgg_spec,
        }

    def forward(self, output: torch.Tensor, content: torch.Tensor) -> dict[str, torch.Tensor]:
        out_features = self.vgg(output)
        with torch.no_grad():
            target_features = self.content_vgg(content)
        terms: dict[str, torch.Tensor] = {}
        content_term = sum(content_loss(out_features[l], target_features[l]) for l in self.content_layers)
        terms["content"] = self.content_weight * content_term / len(self.content_layers)
        style_total = output.new_zeros((), dtype=torch.float32)
        for layer, value in self.style_targets.layer_losses(out_features).items():
            weighted = self.style_weight * self.style_layer_weights[layer] * value
            terms[f"style/{layer}"] = weighted
            style_total = style_total + weighted
        terms["style"] = style_total
        terms["tv"] = self.tv_weight * total_variation(output)
        terms["palette"] = (self.palette_weight * self.palette(output) if self.palette_weight
                            else output.new_zeros((), dtype=torch.float32))
        terms["total"] = terms["content"] + terms["style"] + terms["tv"] + terms["palette"]
        return terms
