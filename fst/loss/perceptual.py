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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fst.errors import FstError
from fst.images import load_style_image, luminance
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


TONE_MODES = ("above", "both")


def tone_error(output: torch.Tensor, content: torch.Tensor, mode: str = "both") -> torch.Tensor:
    """Per image (B,), the squared log ratio of the output's luminance spread to its photo's:
    0 when the output keeps the photo's contrast, the same for twice as much as for half.
    ``mode="above"`` counts only contrast above the photo's (0 for any lower contrast).

    Instance norm hides a photo's contrast from the network, which then paints every photo
    with the painting's spread of brightness (QUALITY.md); with tone conditioning
    (``TransformerNetConfig.tone``) this term is what teaches it to follow the photo's.
    """
    if mode not in TONE_MODES:
        raise ValueError(f"tone mode must be one of {TONE_MODES}, got {mode!r}")
    spread_out = luminance(output.float()).std(dim=(1, 2, 3), unbiased=False)
    spread_photo = luminance(content.float()).std(dim=(1, 2, 3), unbiased=False)
    log_ratio = torch.log(spread_out + 1e-3) - torch.log(spread_photo + 1e-3)
    return (log_ratio.clamp_min(0.0) if mode == "above" else log_ratio).square()


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


# The stability term's perturbations: Gaussian noise of this standard deviation (on photos
# in [0, 1], about 5 levels of 255), or a shift by SHIFT_PIXELS in one of four directions.
# A shifted output is compared without a border of SHIFT_MARGIN pixels beyond the shift,
# where the repeated edge row or column and the network's own padding differ anyway.
STABILITY_NOISE_STD = 0.02
SHIFT_PIXELS = 1
SHIFT_MARGIN = 4
PERTURBATION_KINDS = ("noise", "shift")


@dataclass(frozen=True)
class Perturbation:
    """A perturbed copy of a batch of photos and how to line its output up with the original's.

    ``kind`` is ``noise`` (``photos`` plus Gaussian noise, already aligned) or ``shift``
    (``photos`` moved by ``(dy, dx)`` pixels, the uncovered edge repeated; :meth:`align`
    moves the output back and crops the shift plus ``margin`` pixels all round, so both
    are compared on the overlap).
    """

    kind: str
    photos: torch.Tensor
    dy: int = 0
    dx: int = 0
    margin: int = SHIFT_MARGIN

    def align(self, output: torch.Tensor, output_perturbed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(output, output_perturbed) cropped to the region where they should agree."""
        if self.kind == "noise":
            return output, output_perturbed
        back = torch.roll(output_perturbed, shifts=(-self.dy, -self.dx), dims=(-2, -1))
        m = max(abs(self.dy), abs(self.dx)) + self.margin
        return output[..., m:-m, m:-m], back[..., m:-m, m:-m]


def shift_image(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """(B, C, H, W) moved down by ``dy`` and right by ``dx`` pixels, the uncovered edge repeated."""
    h, w = images.shape[-2:]
    padded = F.pad(images, (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0)), mode="replicate")
    top, left = max(-dy, 0), max(-dx, 0)
    return padded[..., top:top + h, left:left + w]


def perturb(photos: torch.Tensor, generator: torch.Generator | None = None, *, kind: str | None = None,
            noise_std: float = STABILITY_NOISE_STD, shift: int = SHIFT_PIXELS) -> Perturbation:
    """A perturbed copy of ``photos`` (B, 3, H, W) in [0, 1] for the stability term.

    ``kind`` None draws noise or a shift with even odds from ``generator`` (a CPU
    generator: the draw stays the same on every device); noise is drawn on the photos'
    device, from ``generator`` only when it lives there too. Noisy photos are clamped to [0, 1].
    """
    if kind is None:
        kind = PERTURBATION_KINDS[int(torch.randint(2, (1,), generator=generator).item())]
    if kind == "noise":
        same_device = generator is not None and generator.device == photos.device
        noise = torch.randn(photos.shape, generator=generator if same_device else None, device=photos.device,
                            dtype=photos.dtype)
        return Perturbation("noise", (photos + noise_std * noise).clamp(0.0, 1.0))
    if kind == "shift":
        direction = int(torch.randint(4, (1,), generator=generator).item())
        dy, dx = [(0, shift), (0, -shift), (shift, 0), (-shift, 0)][direction]
        return Perturbation("shift", shift_image(photos, dy, dx), dy, dx)
    raise ValueError(f"unknown perturbation {kind!r}: choose one of {', '.join(PERTURBATION_KINDS)}")


def stability_term(output: torch.Tensor, output_perturbed: torch.Tensor, perturbation: Perturbation | None = None,
                   noise_std: float = STABILITY_NOISE_STD) -> torch.Tensor:
    """How much the network's output moved when its photo was perturbed (flicker, frame to frame).

    The mean squared difference between ``output`` and ``output_perturbed`` (lined up
    by ``perturbation`` when given: a shift is compared on the overlap), divided by
    ``noise_std ** 2``: a network that passes the photo's noise through unchanged scores
    about 1, one that ignores it 0. Gradients flow through both outputs.
    """
    if perturbation is not None:
        output, output_perturbed = perturbation.align(output, output_perturbed)
    return F.mse_loss(output.float(), output_perturbed.float()) / noise_std**2


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
    ``total``, ``content``, ``style``, ``tv``, ``palette`` and ``style/<layer>`` (weighted),
    plus ``stability`` when ``stability_weight`` > 0 (then ``forward`` needs ``net=``).

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
        stability_weight: float,
        adversarial_weight: float,
        tone_weight: float,
        tone_mode: str,
    ) -> None:
        super().__init__()
        self.content_layers = [str(layer) for layer in content_layers]
        self.style_layer_weights = {str(k): float(v) for k, v in style_layers.items()}
        self.content_weight = float(content_weight)
        self.style_weight = float(style_weight)
        self.tv_weight = float(tv_weight)
        self.palette_weight = float(palette_weight)
        self.stability_weight = float(stability_weight)
        self.tone_weight = float(tone_weight)
        if tone_mode not in TONE_MODES:
            raise FstError(f"loss.tone_mode={tone_mode}: choose one of {', '.join(TONE_MODES)}")
        self.tone_mode = str(tone_mode)
        # Recorded here, applied by fst.train.module: the term needs the discriminator, which
        # trains beside the network (forward never adds it; a model file's loss is the rest).
        self.adversarial_weight = float(adversarial_weight)
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
            "stability_weight": self.stability_weight,
            "tone_weight": self.tone_weight,
            "tone_mode": self.tone_mode,
            "adversarial_weight": self.adversarial_weight,
            "vgg_weights": self.vgg_spec,
        }

    def forward(
        self,
        output: torch.Tensor,
        content: torch.Tensor,
        net: Callable[[torch.Tensor], torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """The weighted terms for ``output`` = net(``content``).

        With ``stability_weight`` > 0 the loss needs ``net`` (the transformation network,
        or any callable running it) to stylize a perturbed copy of ``content`` (see
        :func:`perturb`, drawn from ``generator``); the ``stability`` term is then added.
        """
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
        terms["tone"] = (self.tone_weight * tone_error(output, content, self.tone_mode).mean() if self.tone_weight
                         else output.new_zeros((), dtype=torch.float32))
        terms["total"] = terms["content"] + terms["style"] + terms["tv"] + terms["palette"] + terms["tone"]
        if self.stability_weight:
            if net is None:
                raise ValueError("stability_weight > 0 needs the network: call loss(output, photos, net=net)")
            perturbation = perturb(content, generator)
            terms["stability"] = self.stability_weight * stability_term(output, net(perturbation.photos), perturbation)
            terms["total"] = terms["total"] + terms["stability"]
        return terms
