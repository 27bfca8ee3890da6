"""``data=folder``: every image under a directory, for small and medium photo sets."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from fst.data.transforms import PreviewTransform, TrainTransform
from fst.errors import FstError
from fst.images import list_images, open_rgb

log = logging.getLogger(__name__)


class EpochShuffleSampler(Sampler[int]):
    """Shuffles with a generator seeded by (seed, epoch) and yields ``epoch * n + index``.

    Encoding the epoch into the key lets the dataset derive each sample's
    augmentation from the key alone: data order and crops do not depend on
    global RNG state, so resuming from a checkpoint replays the same batches.
    Lightning calls ``set_epoch`` on samplers that have it.
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        offset = self.epoch * self.size
        return iter((offset + i for i in torch.randperm(self.size, generator=generator).tolist()))


class ImageFolderDataset(Dataset):
    """Photos under a folder, cropped for training; unreadable files are skipped with a warning."""

    def __init__(self, files: list[Path], transform: TrainTransform, seed: int = 0) -> None:
        self.files = files
        self.transform = transform
        self.seed = seed
        self.bad: set[Path] = set()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: int) -> torch.Tensor:
        n = len(self.files)
        for attempt in range(n):
            path = self.files[(key + attempt) % n]
            if path in self.bad:
                continue
            try:
                img = open_rgb(path)
            except FstError as exc:
                self.bad.add(path)
                log.warning("skipping unreadable training image %s", exc)
                continue
            sample_seed = zlib.crc32(f"{self.seed}:{key}".encode())
            return self.transform(img, seed=sample_seed)
        raise FstError(f"data.root: none of the {n} image files could be read")


class PreviewDataset(Dataset):
    """A fixed list of photos, each centre-cropped to a square, for validation grids."""

    def __init__(self, files: list[Path], size: int) -> None:
        self.images = [PreviewTransform(size)(open_rgb(p)) for p in files]
        self.files = files

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


class FolderDataModule(pl.LightningDataModule):
    """Every image under ``root`` (recursive) for training; validation photos come from
    ``val_root`` or, without one, a fixed held-out slice of ``val_count`` photos."""

    def __init__(
        self,
        root: str,
        val_root: str | None = None,
        image_size: int = 256,
        batch_size: int = 4,
        num_workers: int = 2,
        val_count: int = 4,
        val_size: int = 256,
        crop_scale: tuple[float, float] = (0.25, 1.0),
        seed: int = 0,
        pin_memory: bool = True,
    ) -> None:
        super().__init__()
        self.root = root
        self.val_root = val_root
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_count = val_count
        self.val_size = val_size
        self.crop_scale = tuple(crop_scale)
        self.seed = seed
        self.pin_memory = pin_memory
        self.train_files: list[Path] = []
        self.val_files: list[Path] = []

    def setup(self, stage: str | None = None) -> None:
        if self.train_files:
            return
        train_files = _images_in(self.root, "data.root")
        if self.val_root:
            val_files = _images_in(self.val_root, "data.val_root")[: self.val_count]
        else:
            # A fixed, evenly spaced slice held out of training.
            if len(train_files) <= self.val_count:
                raise FstError(
                    f"data.root={self.root} has {len(train_files)} images: too few to hold out "
                    f"data.val_count={self.val_count} for validation; set data.val_root"
                )
            step = len(train_files) // self.val_count
            val_files = train_files[::step][: self.val_count]
            train_files = [p for p in train_files if p not in set(val_files)]
        self.train_files, self.val_files = train_files, val_files

    def train_dataloader(self) -> DataLoader:
        dataset = ImageFolderDataset(self.train_files, TrainTransform(self.image_size, self.crop_scale), self.seed)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochShuffleSampler(len(dataset), self.seed),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            drop_last=len(dataset) >= self.batch_size,
        )

    def val_dataloader(self) -> DataLoader:
        previews = PreviewDataset(self.val_files, self.val_size)
        # One replica: under DDP Lightning leaves an explicit DistributedSampler alone, so
        # every rank sees all previews and rank 0's grid is complete.
        sampler = DistributedSampler(previews, num_replicas=1, rank=0, shuffle=False)
        return DataLoader(previews, batch_size=len(previews), sampler=sampler)


def _images_in(root: str | None, key: str) -> list[Path]:
    if not root:
        raise FstError(f"{key} is not set: point it at a folder of photos ({key}=/path/to/photos)")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FstError(f"{key}={root}: no such directory")
    files = list_images(path)
    if not files:
        raise FstError(f"{key}={root}: no images found (looked for .jpg/.jpeg/.png/... recursively)")
    return files
