"""The inference rewrites are exact: sub-pixel upsampling equals nearest-upsample + reflection-padded
conv (odd and even target sizes, both edge modes), the separable output conv equals the 9x9 conv,
and the rewritten network equals the original at odd and even input sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fst.nets.subpixel import SeparableOutputConv, SubPixelUpsample, rewrite_for_inference, subpixel_weight
from fst.nets.transformer import TransformerNet, UpsampleBlock

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOLERANCE = 1e-5


def scrambled(module: nn.Module, seed: int = 0, scale: float = 0.3) -> nn.Module:
    """``module`` with every parameter redrawn (norm scales and shifts included), so that no
    weight sum can hide behind the initialisation's symmetries."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * scale)
    return module.eval()


@pytest.mark.parametrize("edges", ["odd", "always"])
@pytest.mark.parametrize("target", [(16, 22), (15, 22), (16, 21), (15, 21)])
def test_subpixel_upsample_equals_resize_conv(edges: str, target: tuple[int, int]) -> None:
    block = scrambled(UpsampleBlock(6, 5, "resize_conv"))
    fast = SubPixelUpsample(block, edges=edges).eval()
    x = torch.randn(2, 6, 8, 11)
    like = torch.empty(2, 1, *target)
    with torch.no_grad():
        expected = block(x, like)
        got = fast(x, like)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() <= TOLERANCE


def test_edge_rows_are_what_the_folded_kernel_gets_wrong_for_odd_targets() -> None:
    # Without the edge recomputation an odd target's last row differs: the correction is needed.
    block = scrambled(UpsampleBlock(4, 3, "resize_conv"))
    fast = SubPixelUpsample(block, edges="never").eval()
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        expected = block.conv(block.pad(nn.functional.interpolate(x, size=(11, 12), mode="nearest")))
        got = fast.upsample_conv(x, 11, 12)[..., :11, :12]
    assert (got[..., :10, :] - expected[..., :10, :]).abs().max() <= TOLERANCE
    assert (got[..., 10, :] - expected[..., 10, :]).abs().max() > 1e-2


def test_never_mode_equals_resize_conv_for_exact_doubling() -> None:
    block = scrambled(UpsampleBlock(6, 5, "resize_conv"))
    fast = SubPixelUpsample(block, edges="never").eval()
    x = torch.randn(2, 6, 7, 9)
    like = torch.empty(2, 1, 14, 18)
    with torch.no_grad():
        assert (fast(x, like) - block(x, like)).abs().max() <= TOLERANCE


def test_sizes_that_are_not_about_twice_fall_back_to_the_original_layer() -> None:
    block = scrambled(UpsampleBlock(3, 2, "resize_conv"))
    fast = SubPixelUpsample(block).eval()
    x = torch.randn(1, 3, 5, 5)
    like = torch.empty(1, 1, 17, 7)
    with torch.no_grad():
        assert (fast(x, like) - block(x, like)).abs().max() <= TOLERANCE


def test_folded_kernel_has_two_by_two_taps_per_phase() -> None:
    conv = nn.Conv2d(7, 5, 3)
    weight = subpixel_weight(conv)
    # 4 phases x 2x2 taps per (input, output) pair: 16 per 2x2 output pixels, against 4 x 9 for the 3x3 conv.
    assert weight.shape == (4 * 5, 7, 2, 2)
    # Every phase's taps add up to the whole 3x3 kernel: a flat map comes out flat.
    phase_sums = weight.sum(dim=(2, 3)).view(5, 4, 7)
    assert torch.allclose(phase_sums, conv.weight.sum(dim=(2, 3))[:, None, :].expand(5, 4, 7), atol=1e-5)


def test_transposed_upsampling_is_refused() -> None:
    with pytest.raises(ValueError, match="resize-convolution"):
        SubPixelUpsample(UpsampleBlock(4, 4, "transposed"))


def test_separable_output_conv_equals_the_conv() -> None:
    conv = scrambled(nn.Conv2d(8, 3, 9), scale=0.05)  # about the 9x9 layer's initial scale, outputs of order 1
    split = SeparableOutputConv(conv)
    x = torch.rand(2, 8, 30, 27)
    with torch.no_grad():
        assert (split(x) - conv(x)).abs().max() <= TOLERANCE
    assert split.columns.out_channels == 27 and split.rows.groups == 3


@pytest.mark.parametrize("size", [(64, 64), (63, 65), (66, 70), (61, 62), (17, 19)])
@pytest.mark.parametrize("edges", ["odd", "always"])
def test_rewritten_network_equals_the_original(size: tuple[int, int], edges: str) -> None:
    net = scrambled(TransformerNet(width=8, num_residual=1))
    fast = rewrite_for_inference(net, edges=edges)
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        assert (fast(x) - net(x)).abs().max() <= TOLERANCE
    assert isinstance(fast.up1, SubPixelUpsample) and isinstance(fast.conv_out, SeparableOutputConv)
    assert isinstance(net.up1, UpsampleBlock) and isinstance(net.conv_out, nn.Conv2d)  # the original is untouched


def test_rewrite_keeps_the_norm_layers_in_order() -> None:
    # Tiling records and replays the norm statistics by layer order: the rewrite must not add or move any.
    net = TransformerNet(width=8, num_residual=2)
    fast = rewrite_for_inference(net)
    norms = [m.num_features for m in net.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert [m.num_features for m in fast.modules() if isinstance(m, nn.InstanceNorm2d)] == norms


def test_transposed_models_keep_their_upsampling() -> None:
    net = scrambled(TransformerNet(width=8, num_residual=1, upsample="transposed"))
    fast = rewrite_for_inference(net)
    x = torch.rand(1, 3, 37, 50)
    with torch.no_grad():
        assert (fast(x) - net(x)).abs().max() <= TOLERANCE
    assert isinstance(fast.up1, UpsampleBlock)
