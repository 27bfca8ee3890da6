"""The perceptual loss with one painting per sample, for multi-style networks.

Every term is :class:`~fst.loss.perceptual.PerceptualLoss`'s, with the same weights, VGG16
and normalisation; only the style targets differ per sample: each painting's Gram
matrices are stacked into (num_styles, C, C) buffers per layer (and their normalisers
into (num_styles,)), each sample is compared with its own painting's row, and the
palette term compares each sample with its own painting's colours. A batch whose samples
all have one style gives exactly PerceptualLoss's terms for that painting.

Besides the batch terms (``total``, ``content``, ``style``, ``style/<layer>``, ``tv``,
``palette``, ``stability``) the loss reports each style present in the batch:
``styles/<name>/total`` and ``styles/<name>/style`` (Gram + palette), means over that
style's samples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fst.images import load_style_image
from fst.loss.perceptual import (PaletteTarget, PerceptualLoss, gram_matrix, perturb, sliced_palette_distance,
                                 stability_term, tone_error)

Painting = str | Path | torch.Tensor


class MultiStyleLoss(nn.Module):
    """``loss``'s terms (its VGG16, layers and weights) against ``styles``, one painting per sample.

    ``styles``: (name, painting) pairs, a painting being an image path (read at
    ``loss.style_size``) or a (1, 3, H, W) tensor in [0, 1]. ``forward`` needs each
    sample's style index, given as ``style_index`` or set beforehand with :meth:`select`.
    """

    def __init__(self, loss: PerceptualLoss, styles: Sequence[tuple[str, Painting]]) -> None:
        super().__init__()
        if not styles:
            raise ValueError("a multi-style loss needs at least one painting")
        names = [str(name) for name, _ in styles]
        if len(set(names)) != len(names):
            raise ValueError(f"style names must be unique, got {names}")
        self.names = names
        self.style_images = {name: None if isinstance(p, torch.Tensor) else str(p) for name, p in styles}
        self.content_layers = list(loss.content_layers)
        self.style_layer_weights = dict(loss.style_layer_weights)
        self.content_weight = loss.content_weight
        self.style_weight = loss.style_weight
        self.tv_weight = loss.tv_weight
        self.palette_weight = loss.palette_weight
        self.stability_weight = loss.stability_weight
        self.tone_weight = loss.tone_weight
        self.tone_mode = loss.tone_mode
        # Applied by the training module (beside the network's discriminator), as for PerceptualLoss.
        self.adversarial_weight = float(getattr(loss, "adversarial_weight", 0.0))
        self.style_size = loss.style_size
        self.vgg_source = loss.vgg_source
        self._loss_config = dict(loss.config)
        # The same frozen VGG16 modules (module names as in PerceptualLoss: checkpoints leave them out).
        self.vgg = loss.vgg
        self.content_vgg = loss.content_vgg

        grams: dict[str, list[torch.Tensor]] = {layer: [] for layer in self.style_layer_weights}
        palettes = []
        device = next(loss.vgg.parameters()).device
        for _, painting in styles:
            image = painting if isinstance(painting, torch.Tensor) else load_style_image(painting, self.style_size)
            image = image.to(device)
            with torch.no_grad():
                features = self.vgg(image)
            for layer in grams:
                grams[layer].append(gram_matrix(features[layer])[0])
            palettes.append(PaletteTarget(image))
        self.layers = list(grams)
        for layer, stack in grams.items():
            table = torch.stack(stack)  # (S, C, C)
            self.register_buffer(f"gram_{layer}", table)
            self.register_buffer(f"scale_{layer}", 1.0 / table.pow(2).mean(dim=(1, 2)).clamp_min(1e-12))
        self.palettes = nn.ModuleList(palettes)
        self.active: torch.Tensor | None = None

    @property
    def num_styles(self) -> int:
        return len(self.names)

    @property
    def config(self) -> dict[str, Any]:
        """The PerceptualLoss config, its ``style_image`` replaced by ``style_images`` (name -> path):
        each style's loss is that config with ``style_image`` set to its painting."""
        return {**self._loss_config, "style_image": None, "style_images": dict(self.style_images)}

    def select(self, style_index: torch.Tensor | None) -> None:
        """Each sample's style index (B,) for the following calls (the training step's batch)."""
        self.active = style_index

    def forward(
        self,
        output: torch.Tensor,
        content: torch.Tensor,
        net: Callable[[torch.Tensor], torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
        style_index: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The weighted terms for ``output`` = net(``content``) when sample b has style ``style_index[b]``."""
        index = style_index if style_index is not None else self.active
        batch = output.shape[0]
        if index is None or index.shape != (batch,):
            raise ValueError(f"a multi-style loss needs each sample's style index, shape ({batch},); got "
                             f"{None if index is None else tuple(index.shape)}")
        index = index.to(output.device, torch.long)
        out_features = self.vgg(output)
        with torch.no_grad():
            target_features = self.content_vgg(content)

        # Per-sample parts of every term: their batch mean is PerceptualLoss's term.
        content_b = output.new_zeros(batch, dtype=torch.float32)
        for layer in self.content_layers:
            out, target = out_features[layer].float(), target_features[layer].float()
            content_b = content_b + (out - target).pow(2).mean(dim=(1, 2, 3)) / target.pow(2).mean().clamp_min(1e-8)
        content_b = self.content_weight * content_b / len(self.content_layers)
        terms: dict[str, torch.Tensor] = {}
        gram_b = output.new_zeros(batch, dtype=torch.float32)
        for layer in self.layers:
            gram = gram_matrix(out_features[layer])
            target = getattr(self, f"gram_{layer}")[index]
            error = (gram - target).pow(2).mean(dim=(1, 2)) * getattr(self, f"scale_{layer}")[index]
            weighted = self.style_weight * self.style_layer_weights[layer] * error
            terms[f"style/{layer}"] = weighted.mean()
            gram_b = gram_b + weighted
        image = output.float()
        tv_b = self.tv_weight * ((image[..., 1:, :] - image[..., :-1, :]).pow(2).mean(dim=(1, 2, 3))
                                 + (image[..., :, 1:] - image[..., :, :-1]).pow(2).mean(dim=(1, 2, 3)))
        palette_b = output.new_zeros(batch, dtype=torch.float32)
        present = [int(s) for s in torch.unique(index).tolist()]
        if self.palette_weight:
            for s in present:
                mask = index == s
                palette = self.palettes[s]
                # One style's samples together: the mean over them is the single-style term.
                value = sliced_palette_distance(output[mask], palette.sorted_projections, palette.directions)
                palette_b = palette_b + mask.float() * value
            palette_b = self.palette_weight * palette_b

        terms["content"] = content_b.mean()
        terms["style"] = gram_b.mean()
        terms["tv"] = tv_b.mean()
        terms["palette"] = palette_b.mean()
        tone_b = (self.tone_weight * tone_error(output, content, self.tone_mode) if self.tone_weight
                  else output.new_zeros(batch, dtype=torch.float32))
        terms["tone"] = tone_b.mean()
        total_b = content_b + gram_b + tv_b + palette_b + tone_b
        terms["total"] = total_b.mean()
        for s in present:
            mask = index == s
            name = self.names[s]
            terms[f"styles/{name}/total"] = total_b[mask].mean()
            terms[f"styles/{name}/style"] = (gram_b + palette_b)[mask].mean()
        if self.stability_weight:
            if net is None:
                raise ValueError("stability_weight > 0 needs the network: call loss(output, photos, net=net)")
            perturbation = perturb(content, generator)
            terms["stability"] = self.stability_weight * stability_term(output, net(perturbation.photos), perturbation)
            terms["total"] = terms["total"] + terms["stability"]
        return terms
