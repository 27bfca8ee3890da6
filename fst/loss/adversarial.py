"""The adversarial term: discriminator and generator objectives, and the painting crops it sees.

A patch discriminator (fst.nets.discriminator) is trained to tell random crops of the
painting (or of several paintings of one artist) from the style network's stylized
training crops; the style network is trained, beside its perceptual loss, to make its
crops pass for painted ones (the setting of Sanakoyeu et al. 2018). Both objectives take
the discriminator's logits (any shape: a patch discriminator gives one per patch) and
return a scalar:

* ``hinge`` (Lim & Ye 2017; Miyato et al. 2018): D minimises
  ``mean(relu(1 - D(painting))) + mean(relu(1 + D(stylized)))``, G minimises
  ``-mean(D(stylized))``.
* ``non_saturating`` (Goodfellow et al. 2014): D minimises
  ``mean(softplus(-D(painting))) + mean(softplus(D(stylized)))`` (the logistic loss),
  G minimises ``mean(softplus(-D(stylized)))``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from fst.errors import FstError
from fst.images import load_style_image

OBJECTIVES = ("hinge", "non_saturating")


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, objective: str) -> torch.Tensor:
    """What the discriminator minimises, given its logits on paintings (real) and stylized photos (fake)."""
    real, fake = real_logits.float(), fake_logits.float()
    if objective == "hinge":
        return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
    if objective == "non_saturating":
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    raise ValueError(f"unknown adversarial objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")


def generator_loss(fake_logits: torch.Tensor, objective: str) -> torch.Tensor:
    """What the style network minimises, given the discriminator's logits on its stylized photos."""
    fake = fake_logits.float()
    if objective == "hinge":
        return -fake.mean()
    if objective == "non_saturating":
        return F.softplus(-fake).mean()
    raise ValueError(f"unknown adversarial objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")


class PaintingCrops:
    """Random square crops of one or more paintings: the discriminator's "real" examples.

    Each painting is loaded once with its longer side at ``size`` px (the scale its Gram
    targets are computed at, so brush strokes have the size the style network learns to
    paint), and scaled up where its shorter side is below ``crop``. :meth:`sample` draws
    the painting (uniformly), the position and a horizontal flip of every crop from the
    CPU ``generator`` it is given (fst.train keeps one for this alone and checkpoints its
    state, so a resumed run draws the crops an uninterrupted one would).
    """

    def __init__(self, paintings: Sequence[str | Path], size: int | None, crop: int) -> None:
        if not paintings:
            raise FstError("the adversarial term needs at least one painting")
        self.crop = int(crop)
        self.images: list[torch.Tensor] = []
        for path in paintings:
            if not Path(path).expanduser().is_file():
                raise FstError(f"{path}: painting not found")
            image = load_style_image(Path(path).expanduser(), size)
            short = min(image.shape[-2:])
            if short < self.crop:
                h, w = image.shape[-2:]
                scale = self.crop / short
                image = F.interpolate(image, size=(max(self.crop, round(h * scale)), max(self.crop, round(w * scale))),
                                      mode="bicubic", align_corners=False, antialias=True).clamp(0.0, 1.0)
            self.images.append(image[0])
        self.paths = [str(p) for p in paintings]

    def sample(self, count: int, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> torch.Tensor:
        """``count`` crops (count, 3, crop, crop) in [0, 1] on ``device``, drawn from ``generator``."""
        crops = []
        for _ in range(count):
            image = self.images[int(torch.randint(len(self.images), (1,), generator=generator))]
            h, w = image.shape[-2:]
            top = int(torch.randint(h - self.crop + 1, (1,), generator=generator))
            left = int(torch.randint(w - self.crop + 1, (1,), generator=generator))
            crop = image[:, top:top + self.crop, left:left + self.crop]
            if bool(torch.randint(2, (1,), generator=generator)):
                crop = crop.flip(-1)
            crops.append(crop)
        return torch.stack(crops).to(device)
