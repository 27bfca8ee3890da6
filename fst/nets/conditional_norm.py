"""Conditional instance norm (Dumoulin et al. 2017, "A learned representation for artistic
style"): one network holds many styles, each owning only the scale and shift (gamma, beta)
of every instance norm layer; the convolutions are shared.

A style is chosen, or several are blended, by a weight vector over the styles: the
layer's (gamma, beta) are that vector times the (num_styles, channels) tables, so a
one-hot vector gives a style's own rows exactly and a blend mixes them. Weights are
(num_styles,) for the whole batch or (batch, num_styles) for one style mix per image.

The normalisation itself is a plain non-affine :class:`torch.nn.InstanceNorm2d`
submodule, so whatever handles instance norm layers (tiled inference swaps their
statistics, fst.infer.tiling) handles these too.
"""

from __future__ import annotations

import torch
from torch import nn


class ConditionalInstanceNorm2d(nn.Module):
    """Instance norm whose affine (gamma, beta) is chosen per style: tables of shape (num_styles, C)."""

    def __init__(self, num_features: int, num_styles: int) -> None:
        super().__init__()
        if num_styles < 1:
            raise ValueError(f"num_styles must be >= 1, got {num_styles}")
        self.num_styles = num_styles
        self.norm = nn.InstanceNorm2d(num_features, affine=False)
        # The single-style layer's initialisation (nn.InstanceNorm2d affine=True), for every style.
        self.gamma = nn.Parameter(torch.ones(num_styles, num_features))
        self.beta = nn.Parameter(torch.zeros(num_styles, num_features))

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, H, W) normalised, then scaled and shifted by ``style`` @ (gamma, beta).

        ``style``: weights (num_styles,) for the whole batch or (B, num_styles) per image.
        """
        style = style.to(self.gamma.dtype)
        gamma = (style @ self.gamma).unsqueeze(-1).unsqueeze(-1)  # (C, 1, 1) or (B, C, 1, 1)
        beta = (style @ self.beta).unsqueeze(-1).unsqueeze(-1)
        y = self.norm(x)
        return y * gamma.to(y.dtype) + beta.to(y.dtype)

    def extra_repr(self) -> str:
        return f"num_styles={self.num_styles}"


def norm_layer(channels: int, num_styles: int) -> nn.Module:
    """The norm layer of a TransformerNet: affine instance norm for one style (``num_styles`` 0),
    conditional instance norm for several."""
    if num_styles == 0:
        return nn.InstanceNorm2d(channels, affine=True)
    return ConditionalInstanceNorm2d(channels, num_styles)


def apply_norm(norm: nn.Module, x: torch.Tensor, style: torch.Tensor | None) -> torch.Tensor:
    """``norm(x)``, with the style weights when ``norm`` is conditional."""
    if isinstance(norm, ConditionalInstanceNorm2d):
        if style is None:
            raise ValueError(f"this network holds {norm.num_styles} styles: pass style weights "
                             f"of shape ({norm.num_styles},) or (batch, {norm.num_styles})")
        return norm(x, style)
    if style is not None:
        raise ValueError("this network holds one style: it takes no style weights")
    return norm(x)


def style_tables(net: nn.Module) -> dict[str, nn.Parameter]:
    """Every per-style table of ``net`` by its state-dict name (``enc1.norm.gamma`` ...)."""
    return {f"{name}.{kind}": getattr(module, kind)
            for name, module in net.named_modules() if isinstance(module, ConditionalInstanceNorm2d)
            for kind in ("gamma", "beta")}


def one_hot(index: torch.Tensor | int, num_styles: int) -> torch.Tensor:
    """Style weights selecting one style: (num_styles,) for an int, (B, num_styles) for indices (B,)."""
    index = torch.as_tensor(index, dtype=torch.long)
    return torch.nn.functional.one_hot(index, num_styles).float()
