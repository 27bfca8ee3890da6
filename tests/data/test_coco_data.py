"""data=coco: shard streaming, splitting across ranks and workers, epochs, corrupt members."""

from __future__ import annotations

import io
import logging
import shutil
import tarfile
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader

from conftest import TRAIN_PHOTOS, VAL_PHOTOS
from fst.train.config import quote_braced_values
from fst.data.coco import CocoDataModule, ShardStream, expand_shards
from fst.images import decode_image
from fst.data.shards import ShardSettings, build_shards
from fst.errors import FstError
from fst.train.run import train

PHOTOS = 28  # bundled training photos


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled photos as 4 shards of 8, 8, 8 and 4 samples, pre-resized to 96 px."""
    out = tmp_path_factory.mktemp("shards")
    build_shards(TRAIN_PHOTOS, out, ShardSettings("train", samples_per_shard=8, resize=96), workers=2, progress=False)
    return out


def pattern(folder: Path, count: int = 4) -> str:
    return f"{folder}/train-{{000000..{count - 1:06d}}}.tar"


def keys_in(tar_path: str | Path) -> set[str]:
    with tarfile.open(tar_path) as tar:
        return {m.name.split(".", 1)[0] for m in tar.getmembers()}


def corrupt_member(tar_path: Path, key: str) -> None:
    """Rewrites one shard with the image bytes of sample ``key`` replaced by garbage."""
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(tar_path, "w") as tar:
        for member, data in members:
            if member.name == f"{key}.jpg":
                data = b"\xff\xd8\xff\xe0 not a jpeg any more"
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


def stream_keys(stream: ShardStream | DataLoader) -> list[str]:
    return [key for batch in stream for key in batch.keys]


def test_one_pass_covers_every_sample_once_per_worker_split(shards: Path) -> None:
    urls = expand_shards(pattern(shards))
    stream = ShardStream(urls, image_size=32, batch_size=4, shuffle_buffer=5, max_passes=1)
    batches = list(stream)
    assert [b.images.shape for b in batches] == [torch.Size([4, 3, 32, 32])] * 7
    assert all(b.images.min() >= 0 and b.images.max() <= 1 + 1e-6 for b in batches)  # float rounding of the resize
    keys = [k for b in batches for k in b.keys]
    every = set().union(*(keys_in(u) for u in urls))
    assert len(keys) == len(set(keys)) == len(every) == PHOTOS and set(keys) == every
    # two loader workers split the shards between them: still each sample exactly once
    loader = DataLoader(ShardStream(urls, 32, 1, max_passes=1), batch_size=None, num_workers=2)
    batches = list(loader)
    assert {b.worker for b in batches} == {0, 1}
    assert sorted(k for b in batches for k in b.keys) == sorted(every)


def test_large_jpegs_are_decoded_at_reduced_scale_but_never_below_the_crop_need() -> None:
    data = (TRAIN_PHOTOS / "nature" / "Aqua.jpg").read_bytes()  # 1280 x 800
    assert decode_image(data).rgb.size == (1280, 800)
    assert decode_image(data, min_side=400).rgb.size == (640, 400)  # DCT scaling by 1/2
    assert decode_image(data, min_side=300).rgb.size == (640, 400)  # 1/4 would give 200 < 300
    assert decode_image(data, min_side=500).rgb.size == (1280, 800)
    # image_size 256 with crop scale 0.25: crops may be 0.43 of the shorter side, so >= 592 px is kept
    assert ShardStream(["x.tar"], 256, 1).min_short_side == 592


def test_ranks_read_disjoint_shards_each_pass(shards: Path) -> None:
    urls = expand_shards(pattern(shards))
    per_rank = []
    for rank in range(2):
        stream = ShardStream(urls, 32, 1, rank=rank, world_size=2, max_passes=1)
        keys = stream_keys(stream)
        assert set(keys) == set().union(*(keys_in(u) for u in stream.shards_for(rank, 2, 0)))
        per_rank.append(set(keys))
    assert not per_rank[0] & per_rank[1]
    assert len(per_rank[0] | per_rank[1]) == PHOTOS
    # the next pass deals the shards out afresh
    stream = ShardStream(urls, 32, 1, rank=0, world_size=2)
    assert [stream.shards_for(0, 2, p) for p in range(3)] != [stream.shards_for(0, 2, 0)] * 3


def test_corrupt_member_is_skipped_and_counted(shards: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for tar in shards.glob("*"):
        shutil.copy(tar, tmp_path / tar.name)
    victim = sorted(keys_in(tmp_path / "train-000001.tar"))[3]
    corrupt_member(tmp_path / "train-000001.tar", victim)
    urls = expand_shards(pattern(tmp_path))
    stream = ShardStream(urls, 32, 1, max_passes=1)
    with caplog.at_level(logging.WARNING, logger="fst.data.coco"):
        batches = list(stream)
    keys = [k for b in batches for k in b.keys]
    assert len(keys) == PHOTOS - 1 and victim not in keys
    assert stream.corrupt == 1 and batches[-1].corrupt == 1
    assert victim in caplog.text and "train-000001.tar" in caplog.text
    # counted each time it is met: two passes, two skips
    twice = ShardStream(urls, 32, 1, max_passes=2)
    assert len(stream_keys(twice)) == 2 * (PHOTOS - 1) and twice.corrupt == 2


def test_truncated_shard_is_counted_once_and_the_others_are_read(shards: Path, tmp_path: Path) -> None:
    for tar in shards.glob("*.tar"):
        shutil.copy(tar, tmp_path / tar.name)
    data = (tmp_path / "train-000002.tar").read_bytes()
    (tmp_path / "train-000002.tar").write_bytes(data[: len(data) // 2])  # an interrupted download
    urls = expand_shards(pattern(tmp_path))
    stream = ShardStream(urls, 32, 1, max_passes=1)
    keys = set(stream_keys(stream))
    intact = set().union(*(keys_in(u) for u in urls if not u.endswith("train-000002.tar")))
    assert intact <= keys and len(keys) < PHOTOS
    assert stream.corrupt == 1


def datamodule(shards: str, **overrides) -> CocoDataModule:
    settings = dict(shards=shards, val_root=str(VAL_PHOTOS), image_size=32, batch_size=2, num_workers=0,
                    shuffle_buffer=4, val_count=2, val_size=32)
    dm = CocoDataModule(**{**settings, **overrides})
    dm.setup("fit")
    return dm


def test_too_few_shards_resamples_or_is_an_error(shards: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(FstError, match=r"names 4 shard\(s\), but 1 rank\(s\) x 5 loader worker\(s\) = 5 readers"):
        datamodule(pattern(shards), num_workers=5, resampled=False).train_dataloader()
    urls = expand_shards(pattern(shards, 2))
    with pytest.raises(FstError, match="2 shard"):
        next(iter(ShardStream(urls, 32, 1, rank=2, world_size=3)))  # rank 2 of 3 gets no shard
    # default: 3 workers share 2 shards by drawing them with replacement, with a warning
    dm = datamodule(pattern(shards, 2), num_workers=3, samples_per_epoch=12)
    with caplog.at_level(logging.WARNING, logger="fst.data.coco"):
        loader = dm.train_dataloader()
    assert "drawing shards with replacement" in caplog.text
    batches = list(loader)
    assert len(batches) == len(loader) == 6
    assert set(loader.corrupt_by_worker) == {0, 1, 2}, "every worker must deliver batches"
    dm.teardown("fit")


def test_epochs_have_fixed_length_and_the_stream_continues(shards: Path, tmp_path: Path) -> None:
    dm = datamodule(pattern(shards), samples_per_epoch=12, key_log_dir=str(tmp_path))
    loader = dm.train_dataloader()
    assert len(loader) == 6
    assert [len(list(loader)) for _ in range(2)] == [6, 6]
    keys = (tmp_path / "rank0.keys").read_text().split()
    # 24 samples of one 28-sample pass: epoch 2 goes on with new photos instead of starting over
    assert len(keys) == len(set(keys)) == 24
    dm.teardown("fit")
    # loader workers persist and so do their streams: 2 x 8 samples of the 28-sample pass,
    # none repeated (batches prepared ahead at an epoch end are dropped, never repeated)
    (tmp_path / "rank0.keys").unlink()
    dm = datamodule(pattern(shards), samples_per_epoch=8, num_workers=2, key_log_dir=str(tmp_path))
    loader = dm.train_dataloader()
    assert [len(list(loader)) for _ in range(2)] == [4, 4]
    keys = (tmp_path / "rank0.keys").read_text().split()
    assert len(keys) == len(set(keys)) == 16
    assert set(loader.corrupt_by_worker) == {0, 1}
    dm.teardown("fit")


def test_samples_per_epoch_and_shard_specs(shards: Path, tmp_path: Path) -> None:
    assert datamodule(pattern(shards)).epoch_samples == PHOTOS
    assert datamodule(pattern(shards, 2)).epoch_samples == 16  # only the shards named
    assert datamodule(str(shards)).urls == expand_shards(pattern(shards))  # a folder with manifest.json
    assert datamodule(pattern(shards), samples_per_epoch=1000).batches_per_epoch(world_size=2) == 250
    remote = f"pipe:cat {pattern(shards)}"
    with pytest.raises(FstError, match="set data.samples_per_epoch=N"):
        datamodule(remote)
    assert datamodule(remote, manifest=str(shards / "manifest.json")).epoch_samples == PHOTOS
    with pytest.raises(FstError, match=r"train-000004.tar: no such shard \(1 of 5 missing\)"):
        datamodule(pattern(shards, 5))
    with pytest.raises(FstError, match="data.shards is not set"):
        datamodule(None)
    # remote shards stream through pipe: like local ones
    stream = ShardStream(expand_shards(remote), 32, 1, max_passes=1)
    assert len(stream_keys(stream)) == PHOTOS


class RecordCorrupt(pl.Callback):
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.count = trainer.datamodule.corrupt_samples


def test_training_logs_the_corrupt_count(compose_cfg, tmp_path: Path) -> None:
    src = tmp_path / "one_shard"
    build_shards(TRAIN_PHOTOS, src, ShardSettings("all", samples_per_shard=PHOTOS, resize=64), workers=1, progress=False)
    with tarfile.open(src / "all-000000.tar") as tar:
        first_key = tar.getnames()[0].split(".", 1)[0]
    corrupt_member(src / "all-000000.tar", first_key)
    out = tmp_path / "run"
    # no shuffle buffer: the corrupt sample is the very first one decoded
    overrides = ["data=coco", f"data.shards='{src}/all-000000.tar'", "data.image_size=32", "data.shuffle_buffer=0"]
    cfg = compose_cfg(overrides, output_dir=out)
    record = RecordCorrupt()
    result = train(cfg, extra_callbacks=[record])
    assert result["model_path"] and torch.isfinite(torch.tensor(result["metrics"]["train/total"]))
    assert record.count == 1  # 2 steps x 2 photos of a 28-photo pass: the corrupt one was met once
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    logged = acc.Scalars("data/corrupt_samples")
    assert [e.step for e in logged] == [0, 1] and logged[-1].value == record.count


def test_brace_patterns_on_the_command_line_reach_hydra_quoted() -> None:
    # Hydra rejects unquoted braces; fst.train quotes brace patterns (and nothing else)
    argv = ["data.shards=/d/train-{000000..000118}.tar", "data.shards='/d/t-{0..1}.tar'",
            "model.scheduler={name: cosine}", "data.shards=pipe:curl -s http://h/t-{0..9}.tar", "trainer=ddp"]
    assert quote_braced_values(argv) == [
        "data.shards='/d/train-{000000..000118}.tar'", "data.shards='/d/t-{0..1}.tar'",
        "model.scheduler={name: cosine}", "data.shards='pipe:curl -s http://h/t-{0..9}.tar'", "trainer=ddp"]
