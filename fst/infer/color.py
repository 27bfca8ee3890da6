"""Colour post-processing of stylized images: luminance-only transfer and strength blending.

All functions take and return (..., 3, H, W) RGB tensors in [0, 1].
"""

from __future__ import annotations

import torch

# Full-range BT.601 (the JPEG/JFIF YCbCr): a photographer's "luminance" and the
# space in which JPEG stores chroma, so preserved chroma survives the final save well.
_RGB_TO_YCBCR = torch.tensor(
    [
        [0.299, 0.587, 0.114],
        [-0.168736, -0.331264, 0.5],
        [0.5, -0.418688, -0.081312],
    ]
)
_CHROMA_OFFSET = torch.tensor([0.0, 0.5, 0.5])


def rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] -> YCbCr with Y, Cb, Cr in [0, 1] (chroma centred on 0.5)."""
    matrix = _RGB_TO_YCBCR.to(rgb.device, rgb.dtype)
    offset = _CHROMA_OFFSET.to(rgb.device, rgb.dtype).view(3, 1, 1)
    return torch.einsum("ij,...jhw->...ihw", matrix, rgb) + offset


def ycbcr_to_rgb(ycbcr: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_ycbcr` (not clamped)."""
    matrix = torch.linalg.inv(_RGB_TO_YCBCR.double()).to(ycbcr.device, ycbcr.dtype)
    offset = _CHROMA_OFFSET.to(ycbcr.device, ycbcr.dtype).view(3, 1, 1)
    return torch.einsum("ij,...jhw->...ihw", matrix, ycbcr - offset)


def preserve_color(stylized: torch.Tensor, photo: torch.Tensor) -> torch.Tensor:
    """The stylized luminance with the photo's chroma (Gatys et al. 2016, "luminance-only transfer").

    Where the new luminance pushes a colour out of gamut the result is clamped, which
    slightly desaturates that pixel; elsewhere the photo's Cb/Cr are kept exactly.
    """
    y = rgb_to_ycbcr(stylized.float())[..., :1, :, :]
    chroma = rgb_to_ycbcr(photo.float())[..., 1:, :, :]
    return ycbcr_to_rgb(torch.cat([y, chroma], dim=-3)).clamp(0.0, 1.0).to(stylized.dtype)


def blend(stylized: torch.Tensor, photo: torch.Tensor, strength: float) -> torch.Tensor:
    """``strength`` 1 is the full style, 0 is the photo; linear in between."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    if strength == 1.0:
        return stylized
    return torch.lerp(photo.to(stylized.dtype), stylized, strength)
