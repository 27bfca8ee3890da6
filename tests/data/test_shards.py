"""fst.data.shards (`fst shards`): content, skipping, resume, zip input, CLI."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TRAIN_PHOTOS, VAL_PHOTOS
from fst.errors import run_command
from fst.data.shards import ShardSettings, build_shards, default_samples_per_shard, read_manifest
from fst.data.shards import main as shards_main
from fst.errors import FstError
from fst.images import list_images, open_rgb, resize_short_side

# JPEG q90 of a photo: mean absolute pixel error stays well under 2% of the range.
JPEG_MEAN_ABS_ERROR = 0.02


def read_shard(path: Path) -> dict[str, dict[str, bytes]]:
    """key -> {extension: bytes} for one tar, in member order."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def all_samples(out: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted(out.glob("*.tar")):
        for key, sample in read_shard(shard).items():
            assert key not in samples, f"duplicate key {key}"
            samples[key] = sample
    return samples


def mean_abs_error(a: Image.Image, b: Image.Image) -> float:
    assert a.size == b.size, (a.size, b.size)
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean() / 255)


def test_shards_hold_every_photo_unchanged(tmp_path: Path) -> None:
    out = tmp_path / "shards"
    manifest = build_shards(TRAIN_PHOTOS, out, ShardSettings("train", samples_per_shard=8), workers=2, progress=False)
    sources = list_images(TRAIN_PHOTOS)
    assert sorted(p.name for p in out.glob("*.tar")) == [f"train-{i:06d}.tar" for i in range(4)]  # 8+8+8+4
    assert manifest["complete"] and manifest["samples"] == len(sources) == 28 and manifest["skipped"] == 0
    assert manifest["pattern"] == "train-{000000..000003}.tar"
    assert [s["samples"] for s in manifest["shards"]] == [8, 8, 8, 4]
    assert all(s["bytes"] == (out / s["name"]).stat().st_size for s in manifest["shards"])
    assert read_manifest(out / "manifest.json") == manifest
    samples = all_samples(out)
    assert sorted(s["path.txt"].decode() for s in samples.values()) == sorted(
        p.relative_to(TRAIN_PHOTOS).as_posix() for p in sources)
    for sample in samples.values():
        # upright RGB JPEGs are stored byte for byte: the sample decodes to the very same image
        assert sample["jpg"] == (TRAIN_PHOTOS / sample["path.txt"].decode()).read_bytes()
    # seeded shuffle: the first shard mixes the two source folders (sorted order would be coco only)
    first = [s["path.txt"].decode() for s in read_shard(out / "train-000000.tar").values()]
    assert {p.split("/")[0] for p in first} == {"coco", "nature"}, first


def test_resize_and_reencode(tmp_path: Path) -> None:
    out = tmp_path / "shards"
    build_shards(VAL_PHOTOS, out, ShardSettings("val", samples_per_shard=4, resize=160), workers=1, progress=False)
    samples = all_samples(out)
    assert len(samples) == len(list_images(VAL_PHOTOS)) == 6  # PNG (RGB, greyscale) and JPEG sources
    for sample in samples.values():
        source = open_rgb(VAL_PHOTOS / sample["path.txt"].decode())
        decoded = Image.open(io.BytesIO(sample["jpg"]))
        assert decoded.format == "JPEG" and decoded.mode == "RGB"
        assert min(decoded.size) == 160
        assert mean_abs_error(decoded, resize_short_side(source, 160)) < JPEG_MEAN_ABS_ERROR


def test_default_shard_size() -> None:
    # 1000 per shard for large sources; small ones still make MIN_SHARDS (64) shards
    assert default_samples_per_shard(118287) == 1000  # COCO train2017: 119 shards
    assert default_samples_per_shard(2442) == 39  # photos_2k: 63 shards
    assert default_samples_per_shard(28) == 1
    assert default_samples_per_shard(64 * 1000 + 1) == 1000


def test_default_settings_split_a_small_source_into_single_photo_shards(tmp_path: Path) -> None:
    manifest = build_shards(VAL_PHOTOS, tmp_path / "out", ShardSettings("val"), workers=1, progress=False)
    assert manifest["settings"]["samples_per_shard"] == 1
    assert [s["samples"] for s in manifest["shards"]] == [1] * 6
    assert manifest["pattern"] == "val-{000000..000005}.tar"
    # re-running with the defaults finds everything finished
    again = build_shards(VAL_PHOTOS, tmp_path / "out", ShardSettings("val"), workers=1, progress=False)
    assert again["shards"] == manifest["shards"]


def test_same_seed_same_shards_other_seed_other_order(tmp_path: Path) -> None:
    def first_keys(seed: int, name: str) -> list[str]:
        out = tmp_path / name
        build_shards(TRAIN_PHOTOS, out, ShardSettings("t", samples_per_shard=28, seed=seed), workers=1, progress=False)
        return list(read_shard(out / "t-000000.tar"))

    assert first_keys(0, "a") == first_keys(0, "b")
    assert first_keys(0, "a") != first_keys(1, "c")
    assert (tmp_path / "a" / "t-000000.tar").read_bytes() == (tmp_path / "b" / "t-000000.tar").read_bytes()


def test_unreadable_images_are_skipped_and_counted(tmp_path: Path) -> None:
    src = tmp_path / "photos"
    src.mkdir()
    for photo in sorted((TRAIN_PHOTOS / "coco").glob("*.jpg"))[:3]:
        shutil.copy(photo, src / photo.name)
    (src / "garbage.jpg").write_bytes(b"this is not a jpeg")
    good = (TRAIN_PHOTOS / "coco" / "000000005802.jpg").read_bytes()
    (src / "truncated.jpg").write_bytes(good[: len(good) // 2])
    manifest = build_shards(src, tmp_path / "out", ShardSettings("p", samples_per_shard=2), workers=2, progress=False)
    assert manifest["samples"] == 3 and manifest["skipped"] == 2
    skipped = sorted(entry["path"] for s in manifest["shards"] for entry in s["skipped"])
    assert skipped == ["garbage.jpg", "truncated.jpg"]
    assert len(all_samples(tmp_path / "out")) == 3


def test_rerun_finishes_missing_shards_only(tmp_path: Path) -> None:
    out = tmp_path / "shards"
    settings = ShardSettings("train", samples_per_shard=8)
    build_shards(TRAIN_PHOTOS, out, settings, workers=1, progress=False)
    original = {p.name: p.read_bytes() for p in out.glob("*.tar")}
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    # an interrupted run: shard 2 never finished, shard 3 was half written
    (out / "train-000002.tar").unlink()
    (out / "train-000003.tar").write_bytes(original["train-000003.tar"][:1000])
    manifest = build_shards(TRAIN_PHOTOS, out, settings, workers=1, progress=False)
    assert manifest["complete"] and manifest["samples"] == 28
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == original
    for name in ("train-000000.tar", "train-000001.tar"):
        assert (out / name).stat().st_mtime_ns == stamps[name], f"{name} was rewritten"
    # different settings never overwrite existing shards
    with pytest.raises(FstError, match="samples_per_shard was 8, now 5"):
        build_shards(TRAIN_PHOTOS, out, ShardSettings("train", samples_per_shard=5), workers=1, progress=False)
    assert {p.name: p.read_bytes() for p in out.glob("*.tar")} == original


def test_zip_source_gives_the_same_shards(tmp_path: Path) -> None:
    archive = tmp_path / "train2017.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for photo in list_images(TRAIN_PHOTOS):
            zf.write(photo, photo.relative_to(TRAIN_PHOTOS).as_posix())
        zf.writestr("__MACOSX/coco/._000000005802.jpg", b"resource fork")
    settings = ShardSettings("train", samples_per_shard=10)
    from_zip = build_shards(archive, tmp_path / "z", settings, workers=2, progress=False)
    from_dir = build_shards(TRAIN_PHOTOS, tmp_path / "d", settings, workers=2, progress=False)
    assert from_zip["samples"] == from_dir["samples"] == 28
    assert all_samples(tmp_path / "z") == all_samples(tmp_path / "d")


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "fst.cli", "shards", str(VAL_PHOTOS), str(out),
                          "--samples-per-shard", "4", "--resize", "48", "--no-progress"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert f"data.shards='{out}/val-{{000000..000001}}.tar'" in run.stdout
    assert json.loads((out / "manifest.json").read_text())["settings"]["resize"] == 48
    # bad input: one line naming the path, exit status 1, nothing created
    assert run_command(shards_main, [str(tmp_path / "nope"), str(tmp_path / "o2")]) == 1
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope'}: no such folder or zip file\n"
    assert not (tmp_path / "o2").exists()
    # a bad command line: one line, exit status 2
    assert run_command(shards_main, [str(VAL_PHOTOS), str(tmp_path / "o3"), "--resize", "big"]) == 2
    assert capsys.readouterr().err.startswith("error: argument --resize: invalid int value")
