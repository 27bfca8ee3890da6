"""Image transformation network of Johnson et al. (2016), "Perceptual Losses for
Real-Time Style Transfer and Super-Resolution", with the usual modern fixes:
instance norm instead of batch norm (Ulyanov et al. 2016), reflection padding
instead of zero padding, and resize-convolution upsampling (Odena et al. 2016)
to avoid the checkerboard artefacts of transposed convolutions.

Layout (``width`` = 32, ``num_residual`` = 5 gives Johnson's network):
c9s1-32, d64, d128, 5 x R128, u64, u32, c9s1-3.

The same forward pass runs in training, in inference and in the ONNX / TorchScript
exports: every size it uses is read off a tensor, so a traced graph keeps height and
width symbolic and takes any input size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fst.images import luminance
from fst.nets.conditional_norm import apply_norm, norm_layer

UPSAMPLE_MODES = ("resize_conv", "transposed")
OUTPUT_HEADS = ("none", "clamp", "tanh")


@dataclass(frozen=True)
class TransformerNetConfig:
    """Architecture of a :class:`TransformerNet`; stored in every exported model file."""

    width: int = 32
    num_residual: int = 5
    upsample: str = "resize_conv"
    output_head: str = "tanh"
    # 0: one style (affine instance norm); N > 0: N styles in conditional instance norm
    # (fst.nets.conditional_norm), chosen per call by a style-weight vector.
    num_styles: int = 0
    # True: the output is scaled and shifted by the photo's own brightness and contrast
    # (ToneConditioning), which the instance norms otherwise remove.
    tone: bool = False

    def __post_init__(self) -> None:
        if self.upsample not in UPSAMPLE_MODES:
            raise ValueError(f"model.upsample must be one of {UPSAMPLE_MODES}, got {self.upsample!r}")
        if self.output_head not in OUTPUT_HEADS:
            raise ValueError(f"model.output_head must be one of {OUTPUT_HEADS}, got {self.output_head!r}")
        if self.width < 1 or self.num_residual < 0:
            raise ValueError(f"model.width must be >= 1 and model.num_residual >= 0, got {self}")
        if self.num_styles < 0:
            raise ValueError(f"model.num_styles must be >= 0, got {self.num_styles}")

    def to_dict(self) -> dict[str, Any]:
        config = asdict(self)
        # Files without these options stay as earlier fst versions wrote (and read) them.
        if not self.num_styles:
            del config["num_styles"]
        if not self.tone:
            del config["tone"]
        return config


class ConvNormAct(nn.Module):
    """Reflection-padded conv, affine (or per-style) instance norm, optional ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, relu: bool = True,
                 num_styles: int = 0) -> None:
        super().__init__()
        self.pad = nn.ReflectionPad2d(kernel // 2)
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride)
        self.norm = norm_layer(c_out, num_styles)
        self.relu = relu

    def forward(self, x: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        x = apply_norm(self.norm, self.conv(self.pad(x)), style)
        return F.relu(x) if self.relu else x


class ResidualBlock(nn.Module):
    """Two 3x3 conv + instance norm layers with an identity skip (He et al. 2016)."""

    def __init__(self, channels: int, num_styles: int = 0) -> None:
        super().__init__()
        self.block1 = ConvNormAct(channels, channels, 3, num_styles=num_styles)
        self.block2 = ConvNormAct(channels, channels, 3, relu=False, num_styles=num_styles)

    def forward(self, x: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        return x + self.block2(self.block1(x, style), style)


class UpsampleBlock(nn.Module):
    """x2 upsampling to the size of the matching encoder tensor, then instance norm + ReLU.

    Upsampling to that exact size (not by a fixed factor 2) makes the decoder undo the
    encoder for any input size, odd ones included.
    """

    def __init__(self, c_in: int, c_out: int, mode: str, num_styles: int = 0) -> None:
        super().__init__()
        self.mode = mode
        if mode == "resize_conv":
            self.pad = nn.ReflectionPad2d(1)
            self.conv = nn.Conv2d(c_in, c_out, 3)
        else:
            # Always one extra row and column (2 x the input size), cropped in forward:
            # ConvTranspose2d(output_size=...) would turn the size into a constant at
            # trace time. Output padding only appends at the bottom/right, so the crop
            # computes exactly what output_size would.
            self.conv = nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1)
        self.norm = norm_layer(c_out, num_styles)

    def forward(self, x: torch.Tensor, like: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        height, width = like.shape[-2], like.shape[-1]
        if self.mode == "resize_conv":
            x = self.conv(self.pad(F.interpolate(x, size=(height, width), mode="nearest")))
        else:
            x = self.conv(x)[:, :, :height, :width]
        return F.relu(apply_norm(self.norm, x, style))


class OutputHead(nn.Module):
    """Maps the last convolution's output to the [0, 1] image range the loss network expects.

    ``none`` leaves it unbounded, ``clamp`` clips it, ``tanh`` is Johnson's scaled tanh
    written for [0, 1] images instead of 0-255. No parameters: the choice lives in the
    config, so state dicts are the same for every head.
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        if kind not in OUTPUT_HEADS:
            raise ValueError(f"output head must be one of {OUTPUT_HEADS}, got {kind!r}")
        self.kind = kind

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if self.kind == "clamp":
            return y.clamp(0.0, 1.0)
        if self.kind == "tanh":
            return 0.5 * (torch.tanh(y) + 1.0)
        return y

    def extra_repr(self) -> str:
        return self.kind


# The typical photo's luminance mean and standard deviation in [0, 1]: a photo with these
# has tone features (0, 0), and the output is what the network would paint without them.
REFERENCE_MEAN = 0.45
REFERENCE_STD = 0.22


class ImageStats(nn.InstanceNorm2d):
    """A one-channel map's mean and log standard deviation per image, (B, 2), relative to
    the reference photo's.

    It is an ``nn.InstanceNorm2d`` subclass (without parameters) for one reason: tiled
    inference records every instance norm layer's input statistics on the whole image and
    fixes them for the tiles (fst.infer.tiling), and ``fixed_forward`` is how this layer
    takes them, so every tile sees the whole photo's tone.
    """

    def __init__(self) -> None:
        super().__init__(1, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3))
        var = (x - mean[:, :, None, None]).square().mean(dim=(2, 3))
        return self.features(mean, var)

    def fixed_forward(self, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        """The features from given statistics (shape (1,)), for every image of ``x``."""
        batch = torch.zeros_like(x[:, :, 0, 0])  # (B, 1): the batch size, symbolic in traced graphs
        return self.features(batch + mean.view(1, 1), batch + var.view(1, 1))

    def features(self, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        log_std = 0.5 * torch.log(var + self.eps) - math.log(REFERENCE_STD)
        return torch.cat([mean - REFERENCE_MEAN, log_std], dim=1)


class ToneConditioning(nn.Module):
    """The photo's brightness and contrast, given back to the network at its output.

    Instance norm removes the input's mean and gain (Ulyanov et al. 2016), so without this
    the network paints every photo with one spread of brightness: a flat or dark photo
    comes out with several times its own contrast (QUALITY.md). Here the last
    convolution's output ``y`` (before the output head) becomes, per colour channel c,

        y_c * exp(f . scale_c) + f . shift_c,    f = (mean - 0.45, log(std / 0.22))

    of the photo's luminance: six numbers each for scale and shift, learned with the
    network under its own loss, zero at the start (the plain network).
    """

    def __init__(self) -> None:
        super().__init__()
        self.stats = ImageStats()
        self.scale = nn.Parameter(torch.zeros(2, 3))
        self.shift = nn.Parameter(torch.zeros(2, 3))

    def forward(self, y: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        features = self.stats(luminance(image.float()))  # (B, 2)
        scale = torch.exp(features @ self.scale)[:, :, None, None]
        shift = (features @ self.shift)[:, :, None, None]
        return y * scale.to(y.dtype) + shift.to(y.dtype)


class TransformerNet(nn.Module):
    """Feed-forward style network: RGB image in [0, 1] -> stylized RGB image of the same size."""

    def __init__(self, config: TransformerNetConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        self.config = config if config is not None else TransformerNetConfig(**kwargs)
        w, n = self.config.width, self.config.num_styles
        self.enc1 = ConvNormAct(3, w, 9, num_styles=n)
        self.enc2 = ConvNormAct(w, 2 * w, 3, stride=2, num_styles=n)
        self.enc3 = ConvNormAct(2 * w, 4 * w, 3, stride=2, num_styles=n)
        self.residuals = nn.Sequential(*[ResidualBlock(4 * w, n) for _ in range(self.config.num_residual)])
        self.up1 = UpsampleBlock(4 * w, 2 * w, self.config.upsample, n)
        self.up2 = UpsampleBlock(2 * w, w, self.config.upsample, n)
        self.pad_out = nn.ReflectionPad2d(4)
        self.conv_out = nn.Conv2d(w, 3, 9)
        self.head = OutputHead(self.config.output_head)
        # Registered last because it runs last: tiling pairs norm layers with recorded
        # statistics in registration order.
        self.tone = ToneConditioning() if self.config.tone else None

    def forward(self, image: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        """``style``: for a multi-style net (``config.num_styles`` > 0) the style weights,
        (num_styles,) for the batch or (B, num_styles) per image (fst.nets.conditional_norm);
        None for a single-style net."""
        h2 = self.enc2(self.enc1(image, style), style)
        h = self.enc3(h2, style)
        for block in self.residuals:
            h = block(h, style)
        h = self.up1(h, like=h2, style=style)
        h = self.up2(h, like=image, style=style)
        y = self._conv_out(self.pad_out(h))
        if self.tone is not None:
            y = self.tone(y, image)
        return self.head(y)

    def _conv_out(self, h: torch.Tensor) -> torch.Tensor:
        # On CPU the 32->3 9x9 conv is 2.3x faster (backward above all) in channels_last,
        # even inside an otherwise NCHW network: 8% of a whole training step (BENCHMARKS.md).
        # Not while exporting: the layout switch is an eager-mode speed trick, not part of the graph.
        if (
            h.device.type == "cpu"
            and not h.is_contiguous(memory_format=torch.channels_last)
            and not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())
        ):
            return self.conv_out(h.contiguous(memory_format=torch.channels_last)).contiguous()
        return self.conv_out(h)
