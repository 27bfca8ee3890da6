import math

import pytest
import torch

from fst.loss.perceptual import StyleTargets, content_loss, gram_matrix, tone_error, total_variation


def test_gram_matrix_matches_hand_computation() -> None:
    # one image, 2 channels, 2x2 pixels
    f = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [-1.0, 2.0]]]])
    a = [1.0, 2.0, 3.0, 4.0]
    b = [0.0, 1.0, -1.0, 2.0]
    dot = lambda u, v: sum(x * y for x, y in zip(u, v))  # noqa: E731
    norm = 2 * 2 * 2  # C * H * W
    expected = torch.tensor([[[dot(a, a), dot(a, b)], [dot(b, a), dot(b, b)]]]) / norm
    torch.testing.assert_close(gram_matrix(f), expected)


def test_gram_matrix_is_fp32_under_autocast() -> None:
    # 0-255-scale activations: the sums overflow fp16 (max 65504); the Gram must stay fp32.
    f = torch.full((1, 4, 64, 64), 300.0, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g = gram_matrix(f)
    assert g.dtype == torch.float32
    torch.testing.assert_close(g, torch.full((1, 4, 4), 300.0**2 / 4))


def test_gram_batch_and_channels_last() -> None:
    f = torch.randn(3, 5, 7, 9)
    g = gram_matrix(f.contiguous(memory_format=torch.channels_last))
    for i in range(3):
        flat = f[i].reshape(5, -1)
        torch.testing.assert_close(g[i], flat @ flat.T / (5 * 7 * 9), rtol=1e-5, atol=1e-5)


def test_content_loss_is_relative_and_zero_at_target() -> None:
    t = torch.randn(2, 8, 5, 5)
    assert content_loss(t, t) == 0
    # scale-free: scaling both output and target leaves the loss unchanged
    o = t + 0.1 * torch.randn_like(t)
    torch.testing.assert_close(content_loss(1000 * o, 1000 * t), content_loss(o, t))


def test_total_variation() -> None:
    flat = torch.ones(1, 3, 8, 8)
    assert total_variation(flat) == 0
    stripes = torch.zeros(1, 1, 4, 4)
    stripes[..., ::2] = 1.0  # vertical stripes: every horizontal step differs by 1
    torch.testing.assert_close(total_variation(stripes), torch.tensor(1.0))


def test_style_targets_relative_loss_per_layer() -> None:
    feats = {"a": torch.randn(1, 4, 6, 6) * 1000, "b": torch.randn(1, 8, 3, 3)}
    targets = StyleTargets.from_features(feats, ["a", "b"])
    zero = targets.layer_losses(feats)
    assert all(v.item() == 0 for v in zero.values())
    # doubling features quadruples the Gram: relative error (4-1)^2 = 9 at every layer,
    # whatever the layer's own scale
    doubled = targets.layer_losses({k: 2 * v for k, v in feats.items()})
    for value in doubled.values():
        torch.testing.assert_close(value, torch.tensor(9.0), rtol=1e-4, atol=1e-4)
    assert dict(targets.named_buffers()).keys() == {"gram_a", "scale_a", "gram_b", "scale_b"}


def test_every_listed_style_layer_drives_training(compose_cfg) -> None:
    """With the shipped loss config each style layer carries >= 5% of the style gradient on a
    real photo; raw Gram sums at Caffe scale leave relu4_3 with < 1% (it would be listed but inert)."""
    from conftest import VAL_PHOTOS
    from torchvision.transforms import v2

    from fst.research.diagnostics import style_gradient_shares
    from fst.images import open_rgb, pil_to_tensor, resize_short_side
    from hydra.utils import instantiate

    cfg = compose_cfg(["style.size=256"])
    loss = instantiate(cfg.loss)
    photo = v2.CenterCrop(96)(pil_to_tensor(resize_short_side(open_rgb(VAL_PHOTOS / "skimage/chelsea.png"), 96)))
    shares = style_gradient_shares(loss, photo.unsqueeze(0))
    assert set(shares) == {"relu1_2", "relu2_2", "relu3_3", "relu4_3"}
    assert min(shares.values()) >= 0.05, shares
    raw = style_gradient_shares(loss, photo.unsqueeze(0), normalised=False)
    assert raw["relu4_3"] < 0.01, raw


def test_perturb_noise_and_shift() -> None:
    from fst.loss.perceptual import STABILITY_NOISE_STD, perturb, shift_image

    photos = torch.rand(2, 3, 12, 10)
    noisy = perturb(photos, torch.Generator().manual_seed(0), kind="noise")
    again = perturb(photos, torch.Generator().manual_seed(0), kind="noise")
    assert noisy.kind == "noise" and noisy.photos.shape == photos.shape
    torch.testing.assert_close(noisy.photos, again.photos)  # the generator decides the noise
    assert 0.0 <= noisy.photos.min() and noisy.photos.max() <= 1.0
    assert (noisy.photos - photos).std() == pytest.approx(STABILITY_NOISE_STD, rel=0.15)
    # a shift moves the pixels by one and repeats the uncovered edge
    ramp = torch.arange(5.0).expand(1, 1, 3, 5)
    torch.testing.assert_close(shift_image(ramp, 0, 1)[0, 0, 0], torch.tensor([0.0, 0.0, 1.0, 2.0, 3.0]))
    torch.testing.assert_close(shift_image(ramp, 0, -1)[0, 0, 0], torch.tensor([1.0, 2.0, 3.0, 4.0, 4.0]))
    torch.testing.assert_close(shift_image(ramp.transpose(-1, -2), 1, 0), shift_image(ramp, 0, 1).transpose(-1, -2))
    kinds = {perturb(photos, torch.Generator().manual_seed(seed)).kind for seed in range(20)}
    assert kinds == {"noise", "shift"}  # drawn with even odds
    directions = {(p.dy, p.dx) for p in (perturb(photos, torch.Generator().manual_seed(s), kind="shift")
                                         for s in range(40))}
    assert directions == {(0, 1), (0, -1), (1, 0), (-1, 0)}
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb(photos, kind="blur")


def test_stability_term_zero_for_stable_networks_and_one_for_passed_noise() -> None:
    from fst.loss.perceptual import perturb, stability_term

    photos = torch.rand(2, 3, 32, 32) * 0.8 + 0.1  # away from 0 and 1: the noise is not clipped
    blur = torch.nn.Conv2d(3, 3, 3, padding=1, padding_mode="replicate", bias=False)
    torch.nn.init.constant_(blur.weight, 1 / 27)
    for seed in range(8):
        shifted = perturb(photos, torch.Generator().manual_seed(seed), kind="shift")
        # a convolution follows the pixel grid: its output moves with the photo, exactly
        assert stability_term(blur(photos), blur(shifted.photos), shifted).item() == pytest.approx(0.0, abs=1e-10)
        # a fixed pattern painted on every output does not
        pattern = ((torch.arange(32)[:, None] + torch.arange(32)) % 2).float() * 0.1
        assert stability_term(photos + pattern, shifted.photos + pattern, shifted).item() > 0.1
    noisy = perturb(photos, torch.Generator().manual_seed(0), kind="noise")
    # an identity network passes the noise through: the term is the noise's variance over its own, about 1
    assert stability_term(photos, noisy.photos, noisy).item() == pytest.approx(1.0, rel=0.05)
    assert stability_term(photos.clone(), photos).item() == 0.0
    # gradients reach both outputs
    a, b = photos.clone().requires_grad_(), noisy.photos.clone().requires_grad_()
    stability_term(a, b, noisy).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


def test_perceptual_loss_stability_weight_runs_the_net_on_a_perturbed_photo() -> None:
    from fst.loss.perceptual import PerceptualLoss
    from fst.nets import TransformerNet, TransformerNetConfig
    from fst.resources import ASSETS_DIR

    def tiny(stability_weight: float) -> PerceptualLoss:
        return PerceptualLoss(ASSETS_DIR / "styles" / "the_wave.jpg", 64, content_layers=["relu2_2"],
                              style_layers={"relu1_2": 1.0, "relu2_2": 1.0}, content_weight=1.0, style_weight=5.0,
                              tv_weight=5.0, palette_weight=0.0, vgg_weights="caffe",
                              stability_weight=stability_weight, adversarial_weight=0.0, tone_weight=0.0, tone_mode="both")

    torch.manual_seed(0)
    net = TransformerNet(TransformerNetConfig(width=8))
    photos = torch.rand(2, 3, 32, 32)
    output = net(photos)
    off = tiny(0.0)
    assert "stability" not in off(output, photos)  # off: the terms (and logged keys) as before
    assert off.config["stability_weight"] == 0.0
    on = tiny(3.0)
    assert on.config["stability_weight"] == 3.0
    with pytest.raises(ValueError, match="needs the network"):
        on(output, photos)
    calls: list[torch.Tensor] = []

    def run(batch: torch.Tensor) -> torch.Tensor:
        calls.append(batch)
        return net(batch)

    terms = on(output, photos, net=run, generator=torch.Generator().manual_seed(1))
    assert len(calls) == 1 and calls[0].shape == photos.shape and not torch.equal(calls[0], photos)
    assert terms["stability"] > 0
    rest = terms["content"] + terms["style"] + terms["tv"] + terms["palette"]
    torch.testing.assert_close(terms["total"], rest + terms["stability"])
    terms["stability"].backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_tone_error_is_the_squared_log_ratio_of_luminance_spreads() -> None:
    torch.manual_seed(0)
    photo = torch.rand(3, 3, 32, 32)  # luminance spread about 0.17
    mean = photo.mean(dim=(1, 2, 3), keepdim=True)
    doubled, halved = mean + 2 * (photo - mean), mean + 0.5 * (photo - mean)
    assert tone_error(photo, photo).abs().max() < 1e-10
    twice, half = tone_error(doubled, photo), tone_error(halved, photo)
    assert twice.shape == (3,)
    # log 2 squared, both ways (the 1e-3 guard against a flat image moves it by about 0.004 here).
    assert torch.allclose(twice, torch.full((3,), math.log(2) ** 2), atol=1e-2)
    assert torch.allclose(half, twice, atol=1e-2)
    # A brightness shift alone keeps the spread.
    assert tone_error(photo + 0.1, photo).abs().max() < 1e-6


def test_tone_error_above_counts_only_more_contrast_than_the_photos() -> None:
    torch.manual_seed(1)
    photo = torch.rand(2, 3, 32, 32)
    mean = photo.mean(dim=(1, 2, 3), keepdim=True)
    doubled, halved = mean + 2 * (photo - mean), mean + 0.5 * (photo - mean)
    assert torch.equal(tone_error(doubled, photo, "above"), tone_error(doubled, photo, "both"))
    assert torch.equal(tone_error(halved, photo, "above"), torch.zeros(2))
    with pytest.raises(ValueError, match="tone mode"):
        tone_error(photo, photo, "below")
