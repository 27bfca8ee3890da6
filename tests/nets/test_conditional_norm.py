"""Conditional instance norm: a style's rows act as that style's affine instance norm, blends
mix the rows, per-image weights, the network's layout and its single-style files unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fst.nets import TransformerNet, TransformerNetConfig
from fst.nets.conditional_norm import ConditionalInstanceNorm2d, one_hot, style_tables
from fst.infer.tiling import tiled_forward

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _layer(styles: int = 3, channels: int = 5) -> ConditionalInstanceNorm2d:
    torch.manual_seed(0)
    layer = ConditionalInstanceNorm2d(channels, styles)
    with torch.no_grad():
        layer.gamma.copy_(torch.rand(styles, channels) + 0.5)
        layer.beta.copy_(torch.randn(styles, channels))
    return layer


def test_a_style_is_its_own_affine_instance_norm() -> None:
    layer = _layer()
    x = torch.randn(2, 5, 7, 9)
    for s in range(3):
        expected = F.instance_norm(x, weight=layer.gamma[s], bias=layer.beta[s], eps=layer.norm.eps)
        assert torch.allclose(layer(x, one_hot(s, 3)), expected, atol=1e-6)
    # one-hot weights select a row exactly: 1 * row + 0 * others
    assert torch.equal(one_hot(1, 3) @ layer.gamma, layer.gamma[1])


def test_a_blend_mixes_the_rows_and_each_image_can_have_its_own() -> None:
    layer = _layer()
    x = torch.randn(2, 5, 7, 9)
    w = torch.tensor([0.2, 0.0, 0.8])
    gamma, beta = w @ layer.gamma, w @ layer.beta
    expected = F.instance_norm(x, weight=gamma, bias=beta, eps=layer.norm.eps)
    assert torch.allclose(layer(x, w), expected, atol=1e-6)
    per_image = torch.stack([one_hot(2, 3), w])  # (B, S)
    out = layer(x, per_image)
    assert torch.allclose(out[0], layer(x[:1], one_hot(2, 3))[0], atol=1e-6)
    assert torch.allclose(out[1], layer(x[1:], w)[0], atol=1e-6)


def test_multi_style_network_layout() -> None:
    torch.manual_seed(0)
    net = TransformerNet(TransformerNetConfig(width=32, num_styles=6))
    tables = style_tables(net)
    # Dumoulin et al.: about 3,200 parameters a style in Johnson's network (32+64+128+10*128+64+32 channels, x2)
    assert sum(t.shape[1] for t in tables.values()) == 3200
    assert all(t.shape[0] == 6 for t in tables.values())
    single = TransformerNet(TransformerNetConfig(width=32))
    shared = {k for k in single.state_dict() if not k.endswith((".norm.weight", ".norm.bias"))}
    assert shared == set(net.state_dict()) - set(tables)  # the convolutions are the single-style net's
    # single-style files keep the architecture record earlier versions wrote and read
    assert "num_styles" not in single.config.to_dict()
    assert net.config.to_dict()["num_styles"] == 6
    assert TransformerNetConfig(**net.config.to_dict()) == net.config
    with pytest.raises(ValueError, match="num_styles"):
        TransformerNetConfig(num_styles=-1)


def test_the_network_needs_style_weights_exactly_when_it_has_styles() -> None:
    multi = TransformerNet(TransformerNetConfig(width=8, num_residual=1, num_styles=2)).eval()
    single = TransformerNet(TransformerNetConfig(width=8, num_residual=1)).eval()
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="holds 2 styles"):
        multi(x)
    with pytest.raises(ValueError, match="holds one style"):
        single(x, one_hot(0, 2))
    assert multi(x, one_hot(0, 2)).shape == x.shape


def test_styles_differ_and_tiles_keep_each_style() -> None:
    torch.manual_seed(0)
    net = TransformerNet(TransformerNetConfig(width=8, num_residual=1, num_styles=2)).eval()
    with torch.no_grad():
        for table in style_tables(net).values():
            table.add_(0.5 * torch.randn_like(table))
    image = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        a, b = net(image, one_hot(0, 2)), net(image, one_hot(1, 2))
        tiled = tiled_forward(net, image, tile=64, overlap=32, run=lambda x: net(x, one_hot(1, 2)))
    assert (a - b).abs().mean() > 0.01
    # Tiles normalised with the whole image's statistics and style 1's rows: close to style 1 whole.
    assert (tiled - b).abs().mean() < 0.1 * (a - b).abs().mean()
