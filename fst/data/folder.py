"""``data=folder``: every image under a directory, for small and medium photo sets."""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from fst.data.transforms import PreviewTransform, TrainTransform
from fst.errors import FstError
from fst.images import list_images, open_rgb

log = logging.getLogger(__name__)
# Photo folders up to this size have every file's header checked at setup; larger ones a sample.
CHECK_ALL = 2000


class EpochShuffleSampler(Sampler[int]):
    """Shuffles with a generator seeded by (seed, epoch) and yields ``epoch * n + index``.

    Encoding the epoch into the key lets the dataset derive each sample's
    augmentation from the key alone: data order and crops do not depend on
    global RNG state, so resuming from a checkpoint replays the same batches.
    Lightning calls ``set_epoch`` on samplers that have it.

    With ``step_fn`` (the trainer's global step) and ``batch_size``, the data position is
    a function of the step alone: the iterator made when ``step_fn()`` steps are done
    starts at epoch ``step // batches_per_epoch``, at that step's batch, and runs to the
    end of that epoch. A run resumed at any step (mid-epoch included) then trains on
    exactly the batches an uninterrupted one would, whatever epoch count the loop keeps.
    """

    def __init__(self, size: int, seed: int = 0, batch_size: int | None = None, drop_last: bool = True,
                 step_fn: Callable[[], int] | None = None) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.step_fn = step_fn

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def position(self) -> tuple[int, int]:
        """(epoch, samples of it to leave out) for the next iterator."""
        if self.step_fn is None or not self.batch_size:
            return self.epoch, 0
        per_epoch = self.size // self.batch_size if self.drop_last else -(-self.size // self.batch_size)
        epoch, batch = divmod(int(self.step_fn()), max(1, per_epoch))
        return epoch, batch * self.batch_size

    def __iter__(self) -> Iterator[int]:
        epoch, skip = self.position()
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        offset = epoch * self.size
        order = torch.randperm(self.size, generator=generator).tolist()[skip:]
        return iter((offset + i for i in order))


class ImageFolderDataset(Dataset):
    """Photos under a folder, cropped for training; unreadable files are skipped with a warning."""

    def __init__(self, files: list[Path], transform: TrainTransform, seed: int = 0, bad: set[Path] | None = None) -> None:
        self.files = files
        self.transform = transform
        self.seed = seed
        self.bad: set[Path] = bad if bad is not None else set()

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
    ``val_root`` or, without one, a fixed held-out slice of ``val_count`` photos.

    On one device the data position follows the global step (:class:`EpochShuffleSampler`):
    a resumed run trains on exactly the batches an uninterrupted one would.
    """

    resumes_mid_epoch = True

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
        # Photos that could not be decoded: found at setup or while training (skipped, counted).
        self.unreadable: set[Path] = set()

    @property
    def unreadable_files(self) -> int:
        return len(self.unreadable)

    def setup(self, stage: str | None = None) -> None:
        if self.train_files:
            return
        train_files = _images_in(self.root, "data.root")
        train_files = self._readable(train_files)
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

    def _readable(self, files: list[Path]) -> list[Path]:
        """``files`` less those whose header does not decode; an error if none does.

        Headers only (cheap); a file that fails later, in full decoding, is skipped then.
        Folders of more than CHECK_ALL files are checked on an even sample of them.
        """
        sample = files if len(files) <= CHECK_ALL else files[:: max(1, len(files) // CHECK_ALL)]
        bad: dict[Path, str] = {}
        for path in sample:
            try:
                with Image.open(path) as img:
                    img.verify()
            except Exception as exc:  # noqa: BLE001 - any decoder error means "skip this file"
                bad[path] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if len(bad) == len(sample):
            first = next(iter(bad.items()))
            raise FstError(f"data.root={self.root}: none of the {len(files)} image files could be read "
                           f"(e.g. {first[0].name}: {first[1]})")
        if bad:
            self.unreadable.update(bad)
            first = next(iter(bad))
            log.warning("data.root=%s: skipping %d unreadable image file(s) of %d (e.g. %s)",
                        self.root, len(bad), len(sample), first.name)
        return [p for p in files if p not in bad]

    def train_dataloader(self) -> DataLoader:
        dataset = ImageFolderDataset(self.train_files, TrainTransform(self.image_size, self.crop_scale), self.seed,
                                     bad=self.unreadable)
        drop_last = len(dataset) >= self.batch_size
        trainer = getattr(self, "trainer", None)
        # The position follows the global step on one device. Under DDP Lightning wraps the
        # sampler (and calls set_epoch): there a mid-epoch resume restarts that epoch's order.
        step_fn = (lambda: trainer.global_step) if trainer is not None and trainer.world_size == 1 else None
        sampler = EpochShuffleSampler(len(dataset), self.seed, self.batch_size, drop_last, step_fn)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            drop_last=drop_last,
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
    if not os.access(path, os.R_OK | os.X_OK):
        raise FstError(f"{key}={root}: the folder cannot be read (permission denied)")
    try:
        files = list_images(path)
    except OSError as exc:
        raise FstError(f"{key}={root}: the folder cannot be read ({exc.strerror or exc})") from None
    if not files:
        raise FstError(f"{key}={root}: no images found (looked for .jpg/.jpeg/.png/... recursively)")
    return files
