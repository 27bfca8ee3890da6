import torch

from fst.loss.perceptual import StyleTargets, content_loss, gram_matrix, total_variation


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
