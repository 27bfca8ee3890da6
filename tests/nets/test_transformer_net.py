import warnings

import pytest
import torch

from fst.images import luminance
from fst.nets.transformer import OUTPUT_HEADS, OutputHead, TransformerNet, TransformerNetConfig


@pytest.mark.parametrize("upsample", ["resize_conv", "transposed"])
@pytest.mark.parametrize("hw", [(64, 64), (65, 67), (33, 101), (17, 9), (255, 130)])
def test_output_size_equals_input_size(upsample: str, hw: tuple[int, int]) -> None:
    net = TransformerNet(width=8, num_residual=2, upsample=upsample)
    assert net(torch.rand(2, 3, *hw)).shape == (2, 3, *hw)


def test_default_is_johnson_architecture() -> None:
    net = TransformerNet()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    # c9s1-32, d64, d128, 5 residual blocks x 2 convs, u64, u32, c9s1-3
    assert [c.out_channels for c in convs] == [32, 64, 128] + [128] * 10 + [64, 32, 3]
    assert [c.kernel_size[0] for c in convs] == [9, 3, 3] + [3] * 10 + [3, 3, 9]
    assert [c.stride[0] for c in convs] == [1, 2, 2] + [1] * 13
    norms = [m for m in net.modules() if isinstance(m, torch.nn.InstanceNorm2d)]
    assert len(norms) == 15 and all(n.affine for n in norms)
    assert any(isinstance(m, torch.nn.ReflectionPad2d) for m in net.modules())


def test_width_and_residual_count_configurable() -> None:
    net = TransformerNet(width=16, num_residual=3)
    assert len(net.residuals) == 3
    assert net.enc3.conv.out_channels == 64


@pytest.mark.parametrize("head,low,high", [("tanh", 0.0, 1.0), ("clamp", 0.0, 1.0)])
def test_output_heads_bound_the_range(head: str, low: float, high: float) -> None:
    torch.manual_seed(0)
    net = TransformerNet(width=8, num_residual=1, output_head=head)
    with torch.no_grad():
        net.conv_out.bias.fill_(5.0)  # push raw output far outside [0, 1]
        y = net(torch.rand(1, 3, 32, 32))
    assert y.min() >= low and y.max() <= high


def test_no_head_is_unbounded() -> None:
    net = TransformerNet(width=8, num_residual=1, output_head="none")
    with torch.no_grad():
        net.conv_out.bias.fill_(5.0)
        assert net(torch.rand(1, 3, 32, 32)).max() > 1.0


def test_bad_config_values_are_named() -> None:
    with pytest.raises(ValueError, match="model.upsample"):
        TransformerNetConfig(upsample="bicubic")
    with pytest.raises(ValueError, match="model.output_head"):
        TransformerNetConfig(output_head="sigmoid")


def test_channels_last_matches_contiguous() -> None:
    torch.manual_seed(0)
    net = TransformerNet(width=8, num_residual=1)
    x = torch.rand(2, 3, 40, 48)
    with torch.no_grad():
        ref = net(x)
        net_cl = net.to(memory_format=torch.channels_last)
        out = net_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_output_head_is_a_module_without_parameters() -> None:
    net = TransformerNet(width=8, num_residual=1, output_head="clamp")
    assert isinstance(net.head, OutputHead) and net.head.kind == "clamp"
    # The head lives in the config: state dicts are the same for every head.
    keys = {head: list(TransformerNet(width=8, num_residual=1, output_head=head).state_dict()) for head in OUTPUT_HEADS}
    assert all(k == keys["none"] for k in keys.values())
    assert not any(k.startswith("head") for k in keys["none"])
    with pytest.raises(ValueError, match="output head"):
        OutputHead("sigmoid")


@pytest.mark.parametrize("upsample", ["resize_conv", "transposed"])
def test_traced_forward_keeps_sizes_symbolic(upsample: str) -> None:
    torch.manual_seed(0)
    net = TransformerNet(width=8, num_residual=1, upsample=upsample).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape reads
        traced = torch.jit.trace(net, torch.rand(1, 3, 64, 64), check_trace=False)
    x = torch.rand(2, 3, 37, 53)  # odd, batched, not the tracing size
    with torch.no_grad():
        torch.testing.assert_close(traced(x), net(x), atol=1e-5, rtol=1e-4)


def _tone_net(seed: int = 0) -> TransformerNet:
    """A small tone-conditioned net with non-zero tone parameters (they start at zero)."""
    torch.manual_seed(seed)
    net = TransformerNet(width=8, num_residual=1, tone=True).eval()
    with torch.no_grad():
        net.tone.scale.copy_(torch.randn(2, 3))
        net.tone.shift.copy_(torch.randn(2, 3))
    return net


def test_tone_conditioning_starts_as_the_plain_network() -> None:
    torch.manual_seed(0)
    plain = TransformerNet(width=8, num_residual=1).eval()
    toned = TransformerNet(width=8, num_residual=1, tone=True).eval()
    missing, unexpected = toned.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["tone.scale", "tone.shift"] and not unexpected
    x = torch.rand(2, 3, 40, 52)
    with torch.no_grad():
        assert torch.equal(toned(x), plain(x))


def test_tone_conditioning_follows_the_photos_contrast_and_brightness() -> None:
    """The plain network is blind to a photo's gain and offset (instance norm); the toned one is not."""
    torch.manual_seed(1)
    photo = torch.rand(1, 3, 48, 48)
    mean = photo.mean(dim=(2, 3), keepdim=True)
    flat = mean + 0.25 * (photo - mean)  # the same photo at a quarter of its contrast
    plain = TransformerNet(width=8, num_residual=1).eval()
    toned = _tone_net()
    with torch.no_grad():
        assert (plain(photo) - plain(flat)).abs().max() < 2e-3  # only the 9x9 conv's bias and padding differ
        assert (toned(photo) - toned(flat)).abs().mean() > 0.02
        features = toned.tone.stats(luminance(photo))
        flat_features = toned.tone.stats(luminance(flat))
    # (mean - 0.45, log std - log 0.22): a quarter of the contrast is log 4 lower (less the
    # variance's eps of 1e-5, 0.002 here), the mean unchanged.
    assert flat_features[0, 1] - features[0, 1] == pytest.approx(-torch.log(torch.tensor(4.0)).item(), abs=4e-3)
    assert flat_features[0, 0] == pytest.approx(features[0, 0].item(), abs=1e-5)


def test_tone_option_is_stored_only_when_set() -> None:
    assert "tone" not in TransformerNetConfig().to_dict()
    assert TransformerNetConfig(tone=True).to_dict()["tone"] is True
    assert TransformerNet().tone is None and not any(k.startswith("tone") for k in TransformerNet().state_dict())
