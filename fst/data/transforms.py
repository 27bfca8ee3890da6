"""Picklable (lambda-free) training and preview transforms shared by every datamodule."""

from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms import v2

from fst.images import pil_to_tensor, resize_short_side


class TrainTransform:
    """Random resized crop to ``size`` x ``size`` plus horizontal flip, as a [0, 1] tensor.

    With ``seed`` given, the crop is a pure function of that seed (torchvision draws
    from the global RNG, which we fork and seed), so a sample is a function of
    (run seed, epoch, index) and resumed runs see exactly the data of an
    uninterrupted one.
    """

    def __init__(self, size: int, scale: tuple[float, float] = (0.25, 1.0)) -> None:
        self.size = size
        self.augment = v2.Compose(
            [
                v2.RandomResizedCrop(size, scale=tuple(scale), antialias=True),
                v2.RandomHorizontalFlip(),
            ]
        )

    def __call__(self, img: Image.Image, seed: int | None = None) -> torch.Tensor:
        # Crop and resize the 8-bit PIL image before converting: resizing a float
        # tensor of the whole photo costs several times more.
        if seed is None:
            return pil_to_tensor(self.augment(img))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return pil_to_tensor(self.augment(img))


class PreviewTransform:
    """Deterministic: shorter side to ``size``, centre crop to a square (for image grids)."""

    def __init__(self, size: int) -> None:
        self.crop = v2.CenterCrop(size)
        self.size = size

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.crop(pil_to_tensor(resize_short_side(img, self.size)))
