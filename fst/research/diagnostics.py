"""Diagnostics for choosing loss weights: how much each style layer drives training."""

from __future__ import annotations

import torch

from fst.loss.perceptual import PerceptualLoss


def style_gradient_shares(loss: PerceptualLoss, image: torch.Tensor, normalised: bool = True) -> dict[str, float]:
    """Each style layer's share of the style gradient at ``image`` (shares sum to 1).

    The gradient with respect to the image is what a style layer contributes to
    training, so a layer whose share is ~0 is listed but does nothing. With
    ``normalised=False`` the per-layer terms are the raw Gram MSEs (no relative
    normalisation, unit layer weights) for comparison.
    """
    image = image.detach().clone().requires_grad_(True)
    features = loss.vgg(image)
    terms = loss.style_targets.layer_losses(features)
    norms = {}
    for layer, value in terms.items():
        if normalised:
            value = value * loss.style_layer_weights[layer]
        else:
            value = value / getattr(loss.style_targets, f"scale_{layer}")
        (grad,) = torch.autograd.grad(value, image, retain_graph=True)
        norms[layer] = grad.norm().item()
    total = sum(norms.values())
    return {layer: norm / total for layer, norm in norms.items()}
