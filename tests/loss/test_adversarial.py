"""fst.loss.adversarial (the objectives, the painting crops) and fst.nets.discriminator, each alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fst.errors import FstError
from fst.images import load_style_image
from fst.loss.adversarial import OBJECTIVES, PaintingCrops, discriminator_loss, generator_loss
from fst.nets.discriminator import PatchDiscriminator
from fst.resources import ASSETS_DIR

WAVE = ASSETS_DIR / "styles" / "the_wave.jpg"
STARRY = ASSETS_DIR / "styles" / "starry_night.jpg"


def test_hinge_values() -> None:
    confident = discriminator_loss(torch.full((2, 1, 3, 3), 2.0), torch.full((2, 1, 3, 3), -2.0), "hinge")
    assert float(confident) == 0.0  # beyond the margins: nothing left to learn
    undecided = discriminator_loss(torch.zeros(4), torch.zeros(4), "hinge")
    assert float(undecided) == pytest.approx(2.0)
    mixed = discriminator_loss(torch.tensor([0.5, 3.0]), torch.tensor([-0.5, 1.0]), "hinge")
    assert float(mixed) == pytest.approx((0.5 + 0.0) / 2 + (0.5 + 2.0) / 2)
    assert float(generator_loss(torch.tensor([1.0, 3.0]), "hinge")) == pytest.approx(-2.0)


def test_non_saturating_is_the_logistic_loss() -> None:
    torch.manual_seed(0)
    real, fake = torch.randn(2, 1, 5, 5), torch.randn(2, 1, 5, 5)
    expected_d = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                  + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
    assert torch.allclose(discriminator_loss(real, fake, "non_saturating"), expected_d, atol=1e-6)
    expected_g = F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
    assert torch.allclose(generator_loss(fake, "non_saturating"), expected_g, atol=1e-6)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_gradients_point_the_right_way(objective: str) -> None:
    real = torch.zeros(3, requires_grad=True)
    fake = torch.zeros(3, requires_grad=True)
    discriminator_loss(real, fake, objective).backward()
    assert (real.grad < 0).all() and (fake.grad > 0).all()  # D raises paintings' logits, lowers stylized ones
    fake_g = torch.zeros(3, requires_grad=True)
    generator_loss(fake_g, objective).backward()
    assert (fake_g.grad < 0).all()  # G raises its logits


def test_unknown_objective() -> None:
    with pytest.raises(ValueError, match="wasserstein"):
        discriminator_loss(torch.zeros(1), torch.zeros(1), "wasserstein")
    with pytest.raises(ValueError, match="wasserstein"):
        generator_loss(torch.zeros(1), "wasserstein")


def _windows(image: torch.Tensor, crop: int) -> torch.Tensor:
    """Every crop x crop window of (3, H, W), and every mirrored one: (N, 3, crop, crop)."""
    patches = image.unfold(1, crop, 1).unfold(2, crop, 1)  # (3, h, w, crop, crop)
    patches = patches.permute(1, 2, 0, 3, 4).reshape(-1, 3, crop, crop)
    return torch.cat([patches, patches.flip(-1)])


def test_painting_crops_are_windows_of_the_paintings_and_follow_the_generator() -> None:
    crops = PaintingCrops([WAVE, STARRY], size=40, crop=16)
    assert crops.paths == [str(WAVE), str(STARRY)]
    first = crops.sample(12, torch.Generator().manual_seed(3))
    again = crops.sample(12, torch.Generator().manual_seed(3))
    other = crops.sample(12, torch.Generator().manual_seed(4))
    assert first.shape == (12, 3, 16, 16) and torch.equal(first, again) and not torch.equal(first, other)
    windows = [_windows(load_style_image(path, 40)[0], 16) for path in (WAVE, STARRY)]
    sources = []
    for crop in first:
        found = [i for i, w in enumerate(windows) if (w == crop).all(dim=(1, 2, 3)).any()]
        assert found, "a crop that is no window of either painting"
        sources.append(found[0])
    assert set(sources) == {0, 1}  # both paintings are drawn (12 draws: a miss has odds 2 * 2**-12)


def test_small_painting_is_scaled_up_to_the_crop_and_missing_ones_named(tmp_path: Path) -> None:
    small = tmp_path / "small.png"
    Image.new("RGB", (30, 12), (200, 40, 10)).save(small)
    crops = PaintingCrops([small], size=None, crop=20)
    assert min(crops.images[0].shape[-2:]) == 20 and crops.images[0].shape[-1] == 50
    sample = crops.sample(2, torch.Generator().manual_seed(0))
    assert sample.shape == (2, 3, 20, 20)
    assert torch.allclose(sample[:, 0], torch.full((2, 20, 20), 200 / 255), atol=2 / 255)
    with pytest.raises(FstError, match="missing.jpg: painting not found"):
        PaintingCrops([tmp_path / "missing.jpg"], size=64, crop=16)


def test_patch_discriminator_shapes_and_spectral_norm() -> None:
    torch.manual_seed(0)
    disc = PatchDiscriminator(width=8, num_layers=3)
    assert disc(torch.rand(2, 3, 128, 128)).shape == (2, 1, 14, 14)
    assert disc(torch.rand(1, 3, 48, 64)).shape == (1, 1, 4, 6)  # any crop size
    disc.train()
    for _ in range(30):  # power iterations converge to each layer's largest singular value
        disc(torch.rand(1, 3, 64, 64))
    convs = [m for m in disc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 5
    for conv in convs:
        sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
        assert float(sigma) == pytest.approx(1.0, abs=0.05)
    assert any(name.endswith("_u") for name, _ in disc.named_buffers())  # checkpointed with the weights
    with pytest.raises(ValueError, match="width and num_layers"):
        PatchDiscriminator(width=0, num_layers=3)
