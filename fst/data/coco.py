"""``data=coco``: training photos streamed from webdataset shards, on one GPU or many.

Every (rank, loader worker) pair is a *reader*. Pass ``p`` over the data is a seeded
permutation of the shards, the same on every rank; reader ``i`` of ``R = world_size x
workers`` reads every R-th shard of it, so within a pass each photo goes to exactly one
rank (a DistributedSampler's guarantee, at shard granularity). A reader moves on to pass
``p + 1`` when its shards run out, so no rank ever runs dry. Per reader and pass, on
webdataset's own stages: tar records -> ``wds.shuffle`` buffer of still-encoded samples
(seeded, drained at the pass end) -> decode (corrupt members skipped and counted) ->
random crop -> ``wds.batched``. Everything is seeded by ``data.seed``.

The epoch length is set on the loader (``WebLoader(...).with_epoch(n)``): every rank yields
exactly ``samples_per_epoch // (world_size x batch_size)`` batches per epoch, and DDP never
waits at an epoch end for a rank with no batch left. Loader workers persist across epochs
and each reader's stream continues where it stopped (no restart, no refill of the shuffle
buffer, no repeat of the first shards); only the few batches the workers had prepared
ahead when an epoch ended (at most 2 per worker) are dropped, never repeated.

Fewer shards than readers: by default (``resampled=None``) the readers draw shards with
replacement instead, with a warning: safe (no reader is left without data, so no rank
hangs) at the price of disjointness. ``resampled=False`` makes it an error.
"""

from __future__ import annotations

import json
import logging
import math
import random
import urllib.request
import zlib
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any, NamedTuple

import pytorch_lightning as pl
import torch
from PIL import Image
import webdataset as wds
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, get_worker_info
from webdataset.shardlists import expand_urls
from webdataset.tariterators import tarfile_samples

from fst.data.folder import PreviewDataset
from fst.data.shards import MANIFEST_NAME, read_manifest
from fst.data.transforms import TrainTransform
from fst.errors import FstError
from fst.images import decode_image, list_images

log = logging.getLogger(__name__)

IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp")
_MAX_WARNINGS_PER_READER = 20
# RandomResizedCrop's narrowest crop side is sqrt(scale * 3/4) times the shorter image side
# (aspect ratios 3/4 to 4/3): decoding never goes below the side that keeps it >= image_size.
_CROP_SIDE_PER_AREA = math.sqrt(3 / 4)


class ShardBatch(NamedTuple):
    """What a loader worker hands to the main process: the batch plus its bookkeeping."""

    images: torch.Tensor  # (B, 3, S, S) in [0, 1]
    keys: list[str]
    worker: int
    corrupt: int  # corrupt samples this worker has skipped so far


def is_remote(url: str) -> bool:
    """``pipe:`` commands and URLs with a scheme other than ``file:`` (http, https, s3 via pipe, ...)."""
    return url.startswith("pipe:") or ("://" in url and not url.startswith("file:"))


def expand_shards(spec: str) -> list[str]:
    """``data.shards`` -> shard URLs: a brace pattern (local, ``pipe:`` or http) or a local
    folder written by ``fst shards`` (all shards of its manifest). Local files must exist."""
    if not spec:
        raise FstError("data.shards is not set: data.shards='/path/to/shards/train-{000000..000118}.tar'")
    spec = str(spec)
    if is_remote(spec):
        return expand_urls(spec)
    folder = Path(spec.removeprefix("file:")).expanduser()
    if folder.is_dir():
        manifest = read_manifest(folder / MANIFEST_NAME) if (folder / MANIFEST_NAME).is_file() else None
        if manifest is None:
            raise FstError(f"data.shards={spec}: a folder without {MANIFEST_NAME}; give a brace pattern instead")
        return [str(folder / s["name"]) for s in manifest["shards"]]
    urls = [u.removeprefix("file:") for u in expand_urls(spec)]
    missing = [u for u in urls if not Path(u).expanduser().is_file()]
    if missing:
        raise FstError(f"data.shards: {missing[0]}: no such shard ({len(missing)} of {len(urls)} missing)")
    return [str(Path(u).expanduser()) for u in urls]


def _fetch_manifest(location: str) -> dict[str, Any] | None:
    if location.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(location, timeout=20) as response:
                return json.loads(response.read())
        except (OSError, ValueError):
            return None
    path = Path(location).expanduser()
    return read_manifest(path) if path.is_file() else None


def samples_in(urls: list[str], manifest_location: str | None) -> int:
    """Sample count of the given shards, from the manifest next to them (or ``manifest_location``)."""
    first = urls[0]
    if manifest_location is None and not first.startswith("pipe:"):
        manifest_location = first.rsplit("/", 1)[0] + "/" + MANIFEST_NAME if "/" in first else MANIFEST_NAME
    manifest = _fetch_manifest(manifest_location) if manifest_location else None
    if manifest is None:
        raise FstError(
            f"data.samples_per_epoch is not set and no shard manifest was found "
            f"({manifest_location or 'none for pipe: URLs'}): set data.samples_per_epoch=N "
            f"(e.g. 118287 for COCO train2017) or data.manifest=/path/to/manifest.json"
        )
    per_shard = {s["name"]: s["samples"] for s in manifest.get("shards", [])}
    total = 0
    for url in urls:
        name = url.split("?")[0].rsplit("/", 1)[-1].split()[0]
        if name not in per_shard:
            raise FstError(f"data.shards: {name} is not listed in {manifest_location}; set data.samples_per_epoch=N")
        total += per_shard[name]
    return total


class ShardStream(IterableDataset):
    """Never-ending (or ``max_passes``-long) stream of cropped photo batches for one rank.

    Iterating again continues the stream where the last iteration stopped (a fresh
    stream once one has ended), in the main process and in each persistent loader worker.
    """

    def __init__(
        self, urls: list[str], image_size: int, batch_size: int, crop_scale: tuple[float, float] = (0.25, 1.0),
        shuffle_buffer: int = 1000, seed: int = 0, rank: int = 0, world_size: int = 1, offset: int = 0,
        resampled: bool = False, max_passes: int | None = None,
    ) -> None:
        super().__init__()
        self.urls = list(urls)
        self.image_size = image_size
        self.batch_size = batch_size
        self.transform = TrainTransform(image_size, crop_scale)
        self.min_short_side = math.ceil(image_size / (math.sqrt(crop_scale[0]) * _CROP_SIDE_PER_AREA))
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.offset = offset  # e.g. the global step a resumed run starts at: a fresh stream
        self.resampled = resampled
        self.max_passes = max_passes
        self.corrupt = 0  # per reader: each worker iterates its own copy
        self._shard_reads, self._failed_read = 0, -1
        self._batches: Iterator[ShardBatch] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_batches": None}  # a running stream stays in its process

    def shards_for(self, reader: int, readers: int, pass_index: int) -> list[str]:
        """The shards reader ``reader`` of ``readers`` reads in pass ``pass_index``."""
        if self.resampled:
            rng = random.Random(f"resample:{self.seed}:{self.offset}:{reader}:{pass_index}")
            return [rng.choice(self.urls) for _ in range(max(1, len(self.urls) // readers))]
        order = list(self.urls)
        random.Random(f"pass:{self.seed}:{self.offset}:{pass_index}").shuffle(order)  # same on every rank
        return order[reader::readers]

    def __iter__(self) -> ShardStream:
        if self._batches is None:
            self._batches = self._stream()
        return self

    def __next__(self) -> ShardBatch:
        assert self._batches is not None, "iter() first"
        try:
            return next(self._batches)
        except BaseException:  # the end, or an error: the next iteration starts afresh
            self._batches = None
            raise

    def _stream(self) -> Iterator[ShardBatch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        reader, readers = self.rank * workers + worker, self.world_size * workers
        self.corrupt = 0

        def collate(samples: list[tuple[str, torch.Tensor]]) -> ShardBatch:
            keys, images = zip(*samples)
            return ShardBatch(torch.stack(images), list(keys), worker, self.corrupt)

        photos = self._photos(reader, readers, workers)
        return wds.filters.batched(self.batch_size, collation_fn=collate, partial=False)(photos)

    def _photos(self, reader: int, readers: int, workers: int) -> Iterator[tuple[str, torch.Tensor]]:
        """(key, crop) of every readable photo of the reader's shards, pass after pass."""
        n = 0
        for pass_index in count() if self.max_passes is None else range(self.max_passes):
            shards = self.shards_for(reader, readers, pass_index)
            if not shards:
                raise FstError(too_few_shards(len(self.urls), self.world_size, workers))
            # The buffer is drained at the end of each pass: a reader yields exactly the
            # samples of its shards for that pass, which keeps ranks disjoint pass by pass.
            rng = random.Random(f"buf:{self.seed}:{self.offset}:{reader}:{pass_index}")
            shuffle = wds.filters.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)
            for sample in shuffle(self._read(shards)):
                photo = self._decode(sample)
                if photo is None:
                    continue
                n += 1
                crop_seed = zlib.crc32(f"{self.seed}:{self.offset}:{reader}:{n}".encode())
                yield sample["__key__"], self.transform(photo, seed=crop_seed)

    def _read(self, shards: list[str]) -> Iterator[dict[str, Any]]:
        read = 0
        for url in shards:
            self._shard_reads += 1
            for record in tarfile_samples([{"url": url}], handler=self._skip_unreadable):
                read += 1
                yield record
        if read == 0:
            raise FstError(f"data.shards: no sample could be read from any of {len(shards)} shards, e.g. {shards[0]}")

    def _decode(self, sample: dict[str, Any]) -> Image.Image | None:
        data = next((sample[k] for k in IMAGE_MEMBERS if k in sample), None)
        where = f"{sample.get('__url__')}: {sample.get('__key__')}"
        if data is None:
            self._count_corrupt(f"{where}: no image member (has {sorted(k for k in sample if not k.startswith('__'))})")
            return None
        try:
            # Large JPEGs decode at a reduced DCT scale, never below the crop's short side.
            return decode_image(data, name=where, min_side=self.min_short_side).rgb
        except FstError as exc:
            self._count_corrupt(str(exc))
            return None

    def _skip_unreadable(self, exc: Exception) -> bool:
        """webdataset error handler for unreadable shards and tar records: count (once per shard
        read: a truncated tar fails at member and at shard level), warn, go on."""
        if self._failed_read != self._shard_reads:
            self._failed_read = self._shard_reads
            self._count_corrupt(f"unreadable tar data ({exc})")
        return True

    def _count_corrupt(self, what: str) -> None:
        self.corrupt += 1
        if self.corrupt <= _MAX_WARNINGS_PER_READER:
            more = " (further ones are counted, not logged)" if self.corrupt == _MAX_WARNINGS_PER_READER else ""
            log.warning("rank %d: skipping corrupt data: %s%s", self.rank, what, more)


def too_few_shards(shards: int, world_size: int, workers: int, advice: bool = True) -> str:
    problem = (f"data.shards names {shards} shard(s), but {world_size} rank(s) x {workers} loader worker(s) = "
               f"{world_size * workers} readers each need shards of their own")
    return problem + (": lower data.num_workers, build more shards (fst shards --samples-per-shard N)"
                      ", or set data.resampled=true or null" if advice else "")


class ShardLoader(wds.WebLoader):
    """A DataLoader of a rank's ShardStream, ``batches_per_epoch`` batches per epoch
    (``with_epoch``). Unpacks ShardBatch in the main process: Lightning gets the image
    tensor, the loader keeps each worker's corrupt count and, with ``key_log``, appends the
    keys of the samples trained on to that file.
    """

    def __init__(self, stream: ShardStream, batches_per_epoch: int, key_log: Path | None = None,
                 num_workers: int = 0, **loader_kwargs: Any) -> None:
        # Persistent workers: their streams (and shuffle buffers) carry on into the next epoch.
        super().__init__(stream, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0,
                         **loader_kwargs)
        self.batches_per_epoch = batches_per_epoch
        self.key_log = key_log
        self.corrupt_by_worker: dict[int, int] = {}
        self.append(wds.filters.map(self._unpack))
        self.with_epoch(batches_per_epoch)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def _unpack(self, batch: ShardBatch) -> torch.Tensor:
        self.corrupt_by_worker[batch.worker] = batch.corrupt
        if self.key_log is not None:
            with open(self.key_log, "a") as fh:
                fh.write("".join(f"{k}\n" for k in batch.keys))
        return batch.images

    @property
    def corrupt(self) -> int:
        return sum(self.corrupt_by_worker.values())

    def close(self) -> None:
        """Shut the persistent loader workers down."""
        loader = self.pipeline[0]
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        loader._iterator = None


class CorruptSampleMonitor(pl.Callback):
    """Logs ``data/corrupt_samples``: samples skipped as corrupt so far, summed over all ranks.

    Registered in configs/callbacks; it logs for datamodules that count corrupt samples
    (``corrupt_samples``, as CocoDataModule does) and does nothing for the others. The sum
    is an all-reduce, so it runs on every rank at the same steps (every
    ``log_every_n_steps``); in between the last total is logged without communication.
    """

    def __init__(self) -> None:
        self.total = 0.0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        local_count = getattr(trainer.datamodule, "corrupt_samples", None)
        if local_count is None:
            return
        if trainer.global_step % max(1, trainer.log_every_n_steps) == 0 or trainer.global_step == 1:
            local = torch.tensor(float(local_count), device=pl_module.device)
            self.total = float(trainer.strategy.reduce(local, reduce_op="sum"))
        pl_module.log("data/corrupt_samples", self.total, on_step=True, on_epoch=False)


class CocoDataModule(pl.LightningDataModule):
    """Webdataset shards for training (see module docstring), a photo folder for previews.

    Validation uses a fixed, map-style set of ``val_count`` photos from ``val_root``: the
    same pictures in every run whatever the shards or their order, so preview grids stay
    comparable across runs and datasets. Every rank evaluates the whole set (it is a few
    photos), so rank 0's grid shows all of them.
    """

    def __init__(
        self,
        shards: str,
        samples_per_epoch: int | None = None,
        manifest: str | None = None,
        val_root: str | None = None,
        image_size: int = 256,
        batch_size: int = 4,
        num_workers: int = 4,
        shuffle_buffer: int = 1000,
        resampled: bool | None = None,
        crop_scale: tuple[float, float] = (0.25, 1.0),
        val_count: int = 6,
        val_size: int = 256,
        seed: int = 0,
        pin_memory: bool = True,
        key_log_dir: str | None = None,
    ) -> None:
        super().__init__()
        crop_scale = (float(crop_scale[0]), float(crop_scale[1]))  # not a ListConfig: checkpoints stay weights_only
        self.save_hyperparameters()  # self.hparams.<argument>
        self.urls: list[str] = []
        self.epoch_samples = 0
        self.val_files: list[Path] = []
        self._train_loader: ShardLoader | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.urls:
            return
        hp = self.hparams
        urls = expand_shards(hp.shards)
        self.epoch_samples = int(hp.samples_per_epoch or samples_in(urls, hp.manifest))
        if self.epoch_samples < 1:
            raise FstError(f"data.shards: the manifest counts no samples in {len(urls)} shards")
        val_root = Path(hp.val_root or "").expanduser()
        if not hp.val_root or not val_root.is_dir() or not list_images(val_root):
            raise FstError(f"data.val_root={hp.val_root}: not a folder of images (a few preview photos)")
        self.val_files = list_images(val_root)[: hp.val_count]
        self.urls = urls

    def batches_per_epoch(self, world_size: int) -> int:
        return max(1, self.epoch_samples // (world_size * self.hparams.batch_size))

    def train_dataloader(self) -> ShardLoader:
        hp, trainer = self.hparams, self.trainer
        world_size, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        workers = max(1, hp.num_workers)
        resampled = hp.resampled
        if not resampled and len(self.urls) < world_size * workers:
            if resampled is not None:
                raise FstError(too_few_shards(len(self.urls), world_size, workers))
            resampled = True
            if rank == 0:
                log.warning("%s: drawing shards with replacement, so ranks may see the same photos",
                            too_few_shards(len(self.urls), world_size, workers, advice=False))
        stream = ShardStream(
            self.urls, hp.image_size, hp.batch_size, tuple(hp.crop_scale), hp.shuffle_buffer, hp.seed,
            rank=rank, world_size=world_size, offset=trainer.global_step if trainer is not None else 0,
            resampled=resampled,
        )
        key_log = None
        if hp.key_log_dir:
            Path(hp.key_log_dir).mkdir(parents=True, exist_ok=True)
            key_log = Path(hp.key_log_dir) / f"rank{rank}.keys"
        self._train_loader = ShardLoader(
            stream, self.batches_per_epoch(world_size), key_log,
            num_workers=hp.num_workers,  # batches are made in the workers
            pin_memory=hp.pin_memory and torch.cuda.is_available(),
            prefetch_factor=2 if hp.num_workers > 0 else None,
        )
        return self._train_loader

    def val_dataloader(self) -> DataLoader:
        previews = PreviewDataset(self.val_files, self.hparams.val_size)
        # A one-replica DistributedSampler: Lightning leaves it alone under DDP (it would
        # otherwise split the previews across ranks and rank 0's grid would show half).
        sampler = DistributedSampler(previews, num_replicas=1, rank=0, shuffle=False)
        return DataLoader(previews, batch_size=len(previews), sampler=sampler)

    @property
    def corrupt_samples(self) -> int:
        """Corrupt samples this rank's loader workers have skipped (as of their latest batch)."""
        return self._train_loader.corrupt if self._train_loader is not None else 0

    def teardown(self, stage: str | None = None) -> None:
        if self._train_loader is not None:
            self._train_loader.close()
