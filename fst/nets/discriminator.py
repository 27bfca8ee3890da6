"""A small patch discriminator for the adversarial loss term (Isola et al. 2017's PatchGAN layout).

It judges (B, 3, H, W) images in [0, 1] patch by patch: the output is a (B, 1, h, w) map
of logits, one per overlapping patch of the input (70 x 70 px with ``num_layers`` = 3),
so it scores brushwork and texture rather than composition, and any crop size works.
Layout: ``num_layers`` 4x4 stride-2 convolutions (``width``, 2 x ``width``, ... channels,
at most 8 x ``width``), one 4x4 stride-1 convolution, then a 4x4 convolution to one
channel; LeakyReLU(0.2) between them, no normalisation layers.

Every convolution is spectrally normalised (Miyato et al. 2018,
``torch.nn.utils.parametrizations.spectral_norm``): each layer is 1-Lipschitz, which keeps
the discriminator's gradients, the only thing the style network learns from it, bounded
however well it separates paintings from stylized photos. The power-iteration vectors are
buffers, so checkpoints hold them and a resumed run continues bit for bit.

It is a training-only module: the model file holds the style network alone.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

NEGATIVE_SLOPE = 0.2


class PatchDiscriminator(nn.Module):
    """Patch logits (B, 1, h, w) for images (B, 3, H, W) in [0, 1]; higher means "painting"."""

    def __init__(self, width: int, num_layers: int) -> None:
        super().__init__()
        if width < 1 or num_layers < 1:
            raise ValueError(f"discriminator width and num_layers must be >= 1, got {width} and {num_layers}")
        self.width = int(width)
        self.num_layers = int(num_layers)
        layers: list[nn.Module] = []
        c_in = 3
        for i in range(num_layers):
            c_out = width * min(2**i, 8)
            layers += [spectral_norm(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)), nn.LeakyReLU(NEGATIVE_SLOPE)]
            c_in = c_out
        c_out = width * min(2**num_layers, 8)
        layers += [spectral_norm(nn.Conv2d(c_in, c_out, 4, stride=1, padding=1)), nn.LeakyReLU(NEGATIVE_SLOPE),
                   spectral_norm(nn.Conv2d(c_out, 1, 4, stride=1, padding=1))]
        self.layers = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # [0, 1] -> [-1, 1]: zero-centred input for the first layer.
        return self.layers(images * 2.0 - 1.0)
