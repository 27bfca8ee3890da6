"""Exact, cheaper forms of two layers of a trained TransformerNet, for inference.

**Sub-pixel upsampling.** The decoder's resize-convolution (nearest x2 upsampling, then a
reflection-padded 3x3 convolution) reads every low-resolution pixel several times: after
nearest upsampling, each 3x3 window of the large map covers only 2x2 distinct source
pixels. Per output phase (even/odd row, even/odd column) the 3x3 kernel therefore folds
into a 2x2 kernel on the low-resolution map, e.g. along one axis

    output row 2i     = w0 L[i-1] + (w1 + w2) L[i]
    output row 2i + 1 = (w0 + w1) L[i] + w2 L[i+1]

which is a sub-pixel convolution (Shi et al. 2016): four 2x2 kernels, one per phase,
interleaved. It is computed as one 2x2 convolution over the edge-padded map to four times the
output channels (one group per phase), a depth-to-space interleave (pixel shuffle) and a crop
of one pixel on each side: 16 multiply-adds per 2x2 block of output pixels and channel pair
where the upsampled 3x3 convolution does 36, and the upsampled map is never built. The window
at padded row p covers source rows p-1 and p, which is what the even phase of output row 2p
and the odd phase of output row 2p-1 both read. With the odd phase first in the pixel
shuffle's order they land at rows 2p and 2p+1 of the shuffled map, one row below where they
belong, and the crop moves them back (the same along columns). The
same function as a stride-2 transposed convolution (the 4x4 kernel ``[w2, w1+w2, w0+w1, w0]``
per axis) ran no faster in ONNX Runtime on the CPU than the upsampled 3x3 convolution itself
(its transposed convolution has no blocked-layout kernel); this form takes 0.66-0.78x the time of
either (scripts/bench_subpixel.py). At the borders, reflection padding of the upsampled map repeats
the edge source pixel, which is exactly edge (replicate) padding of the low-resolution map by one.

That holds whenever the target side is twice the source side. The network upsamples to
the size of the matching encoder tensor, which is one less than twice for odd sides; the
last row (column) then sits next to a reflection of the row before it and cannot be written
with the folded kernels, so :class:`SubPixelUpsample` recomputes that one row (column)
with the original layer on a 2-pixel strip. The weight sums change the rounding, nothing
else (differences around 1e-6; tests/nets/test_subpixel.py).

**Separable output convolution.** The last 9x9 convolution (width -> 3 channels) is split
into a 9x1 convolution to 27 channels (one per output channel and kernel column) and a
1x9 grouped convolution that sums them: the same products and sums in another order. Three
output channels is the worst case for blocked convolution kernels (ONNX Runtime's NCHWc
kernels pad them to a block of 8 or 16); 27 fill the blocks.

:func:`rewrite_for_inference` applies both to a network in place of its layers; the
model file, its weights and the training code do not change.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from fst.nets.conditional_norm import apply_norm


def phase_taps(kernel: torch.Tensor, dim: int) -> torch.Tensor:
    """The 3 taps (w0, w1, w2) of ``kernel`` along ``dim`` -> a new axis ``dim`` of the two
    2-tap kernels that equal nearest x2 upsampling followed by them: first the odd output
    phase ``(w0 + w1, w2)``, then the even one ``(w0, w1 + w2)``, each over source rows
    (i, i + 1) of the edge-padded map; the taps are the next axis."""
    w0, w1, w2 = kernel.unbind(dim)
    odd = torch.stack([w0 + w1, w2], dim)
    even = torch.stack([w0, w1 + w2], dim)
    return torch.stack([odd, even], dim)


def subpixel_weight(conv: nn.Conv2d) -> torch.Tensor:
    """The (4 * c_out, c_in, 2, 2) weight of the 2x2 convolution whose pixel-shuffled output,
    cropped by one pixel on each side, equals upsample-then-``conv`` (3x3) on the edge-padded
    map. Channel ``4 * o + 2 * a + b`` is output ``o``'s phase (a, b) in pixel-shuffle order."""
    if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.groups != 1 or conv.dilation != (1, 1):
        raise ValueError(f"sub-pixel folding needs a plain 3x3 stride-1 convolution, got {conv}")
    c_out, c_in = conv.weight.shape[:2]
    with torch.no_grad():
        folded = phase_taps(phase_taps(conv.weight.float(), 2), 4)  # (c_out, c_in, a, row tap, b, column tap)
        return folded.permute(0, 2, 4, 1, 3, 5).reshape(4 * c_out, c_in, 2, 2).contiguous()


class SubPixelConv(nn.Module):
    """Nearest x2 upsampling + 3x3 convolution (with the upsampled map reflection-padded), as
    a 2x2 convolution to four phases, a pixel shuffle and a one-pixel crop. Takes the source
    map edge-padded by one: (h + 2, w + 2) -> (2h, 2w)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        c_out, c_in = conv.weight.shape[:2]
        self.conv = nn.Conv2d(c_in, 4 * c_out, 2)
        with torch.no_grad():
            self.conv.weight.copy_(subpixel_weight(conv))
            self.conv.bias.copy_(conv.bias.repeat_interleave(4))
        self.conv.to(conv.weight.device)

    def forward(self, padded: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.conv(padded), 2)[..., 1:-1, 1:-1]


class SubPixelUpsample(nn.Module):
    """Drop-in replacement for a ``resize_conv`` :class:`~fst.nets.transformer.UpsampleBlock`
    computing the same function with a :class:`SubPixelConv`.

    ``edges`` says when the last row and column are recomputed with the original kernel:
    ``"odd"`` (eager use: only for odd-sized targets, the only ones that need it),
    ``"always"`` (exported graphs for any input size: the same operations for every size;
    the recomputation is exact for even targets too) or ``"never"`` (graphs only for
    inputs whose sides are multiples of 4, where both decoder stages double exactly).
    """

    EDGES = ("odd", "always", "never")

    def __init__(self, block: nn.Module, edges: str = "odd") -> None:
        super().__init__()
        if getattr(block, "mode", None) != "resize_conv":
            raise ValueError("only resize-convolution upsampling folds into a sub-pixel convolution")
        if edges not in self.EDGES:
            raise ValueError(f"edges must be one of {self.EDGES}, got {edges!r}")
        self.edges = edges
        self.conv = SubPixelConv(block.conv)
        # The original 3x3 convolution: for the edge rows and columns, and for sizes that are not about 2x.
        self.edge_conv = copy.deepcopy(block.conv)
        self.norm = block.norm

    def forward(self, x: torch.Tensor, like: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        y = self.upsample_conv(x, like.shape[-2], like.shape[-1])
        return F.relu(apply_norm(self.norm, y, style))

    def upsample_conv(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """The pre-norm output: ``conv(reflect_pad(upsample(x, (height, width))))``."""
        y = self.conv(F.pad(x, (1, 1, 1, 1), mode="replicate"))
        if self.edges == "never":
            return y
        h, w = x.shape[-2], x.shape[-1]
        if self.edges == "odd":
            if height not in (2 * h - 1, 2 * h) or width not in (2 * w - 1, 2 * w) or min(h, w) < 2:
                return self.edge_conv(F.pad(F.interpolate(x, size=(height, width), mode="nearest"), (1, 1, 1, 1),
                                            mode="reflect"))
            if height == 2 * h and width == 2 * w:
                return y
        # Last row: upsampled rows height-2, height-1 and (reflected) height-2 again, which
        # are source rows height-h-1 and h-1 for height in {2h-1, 2h}. An odd height puts
        # two different source rows in one window, which no folded kernel reproduces.
        rows = torch.cat([x.narrow(-2, height - h - 1, 1), x[..., h - 1 :, :], x.narrow(-2, height - h - 1, 1)], -2)
        rows = F.interpolate(rows, size=(3, width), mode="nearest")
        last_row = self.edge_conv(F.pad(rows, (1, 1, 0, 0), mode="reflect"))
        cols = torch.cat([x.narrow(-1, width - w - 1, 1), x[..., :, w - 1 :], x.narrow(-1, width - w - 1, 1)], -1)
        cols = F.interpolate(cols, size=(height, 3), mode="nearest")
        last_col = self.edge_conv(F.pad(cols, (0, 0, 1, 1), mode="reflect"))
        y = torch.cat([y[..., : height - 1, : width - 1], last_col[..., : height - 1, :]], -1)
        return torch.cat([y, last_row], -2)


class SeparableOutputConv(nn.Module):
    """A k x k convolution to few channels as a k x 1 convolution to ``c_out * k`` channels
    and a 1 x k grouped convolution summing them: the same function, kernels that fill
    blocked convolution layouts. Takes and gives what the original ``nn.Conv2d`` does."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.stride != (1, 1) or conv.groups != 1 or conv.dilation != (1, 1) or conv.padding != (0, 0):
            raise ValueError(f"separable splitting needs a plain unpadded stride-1 convolution, got {conv}")
        c_out, c_in, kh, kw = conv.weight.shape
        self.columns = nn.Conv2d(c_in, c_out * kw, (kh, 1), bias=False)
        self.rows = nn.Conv2d(c_out * kw, c_out, (1, kw), groups=c_out, bias=conv.bias is not None)
        with torch.no_grad():
            # columns: channel o * kw + j holds kernel column j of output o.
            self.columns.weight.copy_(conv.weight.permute(0, 3, 1, 2).reshape(c_out * kw, c_in, kh, 1))
            # rows: output o adds its kw column results, column j shifted by j.
            picker = torch.zeros(c_out, kw, 1, kw)
            picker[:, torch.arange(kw), 0, torch.arange(kw)] = 1.0
            self.rows.weight.copy_(picker)
            if conv.bias is not None:
                self.rows.bias.copy_(conv.bias)
        self.to(conv.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rows(self.columns(x))


def rewrite_for_inference(net: nn.Module, edges: str = "odd") -> nn.Module:
    """A copy of a TransformerNet with sub-pixel upsampling (resize-convolution nets only) and
    a separable output convolution: the same outputs to rounding, fewer operations.

    ``edges``: see :class:`SubPixelUpsample` (``"never"``: the copy only takes inputs whose
    sides are multiples of 4).
    """
    fast = copy.deepcopy(net).eval()
    for name in ("up1", "up2"):
        block = getattr(fast, name)
        if getattr(block, "mode", None) == "resize_conv":
            setattr(fast, name, SubPixelUpsample(block, edges=edges))
    fast.conv_out = SeparableOutputConv(fast.conv_out)
    return fast
