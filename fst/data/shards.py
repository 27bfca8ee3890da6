"""Building webdataset shards from a photo folder, or a zip of one: ``fst shards``.

    fst shards SRC OUT_DIR [--resize 320] [--samples-per-shard N]

SRC: a COCO folder (train2014/, train2017/, val2017/), a zip of one, or any folder of
photos (searched recursively). The command prints the ``data.shards=...`` override to
train on the shards it wrote. Unreadable images are skipped and listed in the manifest.
Re-running the same command finishes an interrupted build: finished shards are kept, the
others are rebuilt.

Layout of ``OUT_DIR``: ``<prefix>-000000.tar``, ``<prefix>-000001.tar``, ... and
``manifest.json``. Each sample is ``<key>.jpg`` (an upright RGB/greyscale JPEG) plus
``<key>.path.txt`` (the photo's path inside the source), so a training log that names a
key can be traced back to the original file.

Default shard size: 1000 photos, or fewer for a small source so that it still makes 64
shards. A shard should be one long sequential read (tens of MB, so object-storage request
latency is amortised), and there should be at least as many shards as data-loading
processes (8 GPUs x 8 loader workers = 64), so that each reads shards of its own. At 1000
photos a shard is ~45 MB pre-resized to a 320 px shorter side (~160 MB with COCO's
original JPEGs); COCO train2017 (118k photos) gives 119 shards, photos_2k (2,442) 63 of 39.

The photo order is shuffled with a seed before it is cut into shards, so every shard is a
random mix of the whole source (COCO's file order is not random, and a streaming shuffle
buffer only mixes a shard or two). The manifest is rewritten after every finished shard;
re-running with the same settings skips finished shards and rebuilds the rest.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
import random
import re
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps
from webdataset import TarWriter

from fst.errors import ArgumentParser, FstError, run_command
from fst.fsutil import atomic_path, atomic_write_text
from fst.images import IMAGE_EXTENSIONS, resize_short_side

log = logging.getLogger(__name__)

MAX_SAMPLES_PER_SHARD = 1000
MIN_SHARDS = 64
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "fst-shards/1"
_EXIF_ORIENTATION = 0x0112
_TAR_MTIME = 946684800  # fixed member mtime (2000-01-01): rebuilding a shard gives identical bytes


@dataclass(frozen=True)
class ShardSettings:
    """Everything that decides the shards' content; a resume must use the same values."""

    prefix: str
    samples_per_shard: int | None = None  # None: default_samples_per_shard(photos)
    resize: int | None = None  # shorter side, only ever shrunk; None keeps the original size
    quality: int = 90  # JPEG quality when a photo has to be re-encoded
    seed: int = 0
    limit: int | None = None  # keep only the first N photos of the shuffled order

    def check(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.]+", self.prefix):
            raise FstError(f"--prefix {self.prefix!r}: use letters, digits, '_' and '.' only")
        if self.samples_per_shard is not None and self.samples_per_shard < 1:
            raise FstError(f"--samples-per-shard must be at least 1, got {self.samples_per_shard}")
        if self.resize is not None and self.resize < 16:
            raise FstError(f"--resize must be at least 16 pixels, got {self.resize}")
        if not 1 <= self.quality <= 100:
            raise FstError(f"--quality must be within 1..100, got {self.quality}")
        if self.limit is not None and self.limit < 1:
            raise FstError(f"--limit must be at least 1, got {self.limit}")


@dataclass(frozen=True)
class SourcePhoto:
    rel: str  # path inside the source, '/'-separated
    size: int  # bytes, part of the source fingerprint
    key: str  # webdataset sample key


class PhotoSource:
    """Photos under a folder (recursive) or inside a ``.zip``, listed in a stable order."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().resolve()
        if self.path.is_dir():
            self.is_zip = False
        elif self.path.is_file() and zipfile.is_zipfile(self.path):
            self.is_zip = True
        elif self.path.exists():
            raise FstError(f"{path}: neither a folder nor a zip file")
        else:
            raise FstError(f"{path}: no such folder or zip file")
        self._zip: zipfile.ZipFile | None = None

    def list(self) -> list[SourcePhoto]:
        if self.is_zip:
            with zipfile.ZipFile(self.path) as archive:
                entries = [(i.filename, i.file_size) for i in archive.infolist() if not i.is_dir()]
        else:
            entries = [
                (p.relative_to(self.path).as_posix(), p.stat().st_size)
                for p in self.path.rglob("*")
                if p.is_file()
            ]
        entries = sorted((rel, size) for rel, size in entries if _is_photo_name(rel))
        if not entries:
            raise FstError(f"{self.path}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)} recursively)")
        keys = _unique_keys([rel for rel, _ in entries])
        return [SourcePhoto(rel, size, key) for (rel, size), key in zip(entries, keys)]

    def read(self, rel: str) -> bytes:
        if not self.is_zip:
            return (self.path / rel).read_bytes()
        if self._zip is None:  # one handle per process: ZipFile objects are not shared across forks
            self._zip = zipfile.ZipFile(self.path)
        return self._zip.read(rel)


def _is_photo_name(rel: str) -> bool:
    parts = rel.split("/")
    hidden = any(p.startswith(".") or p == "__MACOSX" for p in parts)
    return not hidden and Path(parts[-1]).suffix.lower() in IMAGE_EXTENSIONS


def _unique_keys(rels: list[str]) -> list[str]:
    """Keys without dots (webdataset splits key and extension at the first dot) or slashes."""
    seen: dict[str, int] = {}
    keys = []
    for rel in rels:
        base = re.sub(r"[^A-Za-z0-9_-]+", "_", rel.rsplit(".", 1)[0]).strip("_") or "photo"
        seen[base] = seen.get(base, 0) + 1
        keys.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return keys


def encode_photo(data: bytes, resize: int | None, quality: int) -> bytes:
    """The JPEG bytes to store for one photo: fully decoded first, so unreadable files raise.

    Upright RGB/greyscale JPEGs that need no resize are stored byte for byte (no
    generation loss, no encoding time); everything else (PNG, CMYK, EXIF-rotated,
    larger than ``resize``) is made upright RGB and re-encoded at ``quality``.
    """
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
        shrink = resize is not None and min(img.size) > resize
        if img.format == "JPEG" and img.mode in ("RGB", "L") and orientation == 1 and not shrink:
            return data
        upright = ImageOps.exif_transpose(img).convert("RGB")
    if shrink:
        upright = resize_short_side(upright, resize)
    out = io.BytesIO()
    upright.save(out, format="JPEG", quality=quality)
    return out.getvalue()


# Per-process state of the encoding pool (set by the pool initializer: picklable, no lambdas).
_worker_source: PhotoSource | None = None
_worker_settings: ShardSettings | None = None


def _init_worker(source_path: str, settings: ShardSettings) -> None:
    global _worker_source, _worker_settings
    _worker_source, _worker_settings = PhotoSource(source_path), settings


def _encode_in_worker(rel: str) -> tuple[bytes | None, str | None]:
    assert _worker_source is not None and _worker_settings is not None
    try:
        data = _worker_source.read(rel)
        return encode_photo(data, _worker_settings.resize, _worker_settings.quality), None
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError, zipfile.BadZipFile) as exc:
        return None, f"{type(exc).__name__}: {exc}"


def default_samples_per_shard(photos: int) -> int:
    """1000, or fewer for small sources so that they still make ``MIN_SHARDS`` shards."""
    return max(1, min(MAX_SAMPLES_PER_SHARD, math.ceil(photos / MIN_SHARDS)))


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}.tar"


def shard_pattern(prefix: str, count: int) -> str:
    """Brace pattern naming all ``count`` shards, as ``data.shards`` takes it."""
    if count == 1:
        return shard_name(prefix, 0)
    return f"{prefix}-{{{0:06d}..{count - 1:06d}}}.tar"


def plan_shards(photos: list[SourcePhoto], settings: ShardSettings) -> list[list[SourcePhoto]]:
    """Seeded shuffle of all photos, optionally cut to ``limit``, then split into shards."""
    order = list(photos)
    random.Random(f"make_shards:{settings.seed}").shuffle(order)
    if settings.limit is not None:
        order = order[: settings.limit]
    n = settings.samples_per_shard or default_samples_per_shard(len(order))
    return [order[i : i + n] for i in range(0, len(order), n)]


def source_fingerprint(photos: list[SourcePhoto]) -> str:
    digest = hashlib.sha256()
    for photo in photos:
        digest.update(f"{photo.rel}\t{photo.size}\n".encode())
    return digest.hexdigest()


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FstError(f"{path}: not a readable shard manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise FstError(f"{path}: not an fst shard manifest (expected format {MANIFEST_FORMAT})")
    return manifest


def _write_manifest(out_dir: Path, manifest: dict[str, Any]) -> None:
    done = manifest["shards"]
    manifest["samples"] = sum(s["samples"] for s in done)
    manifest["bytes"] = sum(s["bytes"] for s in done)
    manifest["skipped"] = sum(len(s["skipped"]) for s in done)
    atomic_write_text(out_dir / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n")  # never half a manifest


def _start_manifest(out_dir: Path, source: PhotoSource, photos: list[SourcePhoto], settings: ShardSettings,
                    num_shards: int) -> dict[str, Any]:
    """The manifest to continue from: the existing one if it matches, else a fresh one."""
    fresh = {
        "format": MANIFEST_FORMAT,
        "complete": False,
        "source": str(source.path),
        "source_photos": len(photos),
        "source_fingerprint": source_fingerprint(photos),
        "settings": asdict(settings),
        "num_shards": num_shards,
        "pattern": shard_pattern(settings.prefix, num_shards),
        "shards": [],
    }
    path = out_dir / MANIFEST_NAME
    if not path.exists():
        strays = sorted(out_dir.glob(f"{settings.prefix}-*.tar"))
        if strays:
            raise FstError(f"{strays[0]}: shards already in {out_dir} but no {MANIFEST_NAME}; "
                           "use an empty OUT_DIR (nothing was overwritten)")
        return fresh
    old = read_manifest(path)
    for field in ("settings", "source_fingerprint"):
        if old.get(field) != fresh[field]:
            if field == "settings":
                was = old.get("settings") or {}
                what = ", ".join(f"{k} was {was.get(k)!r}, now {v!r}" for k, v in fresh["settings"].items()
                                 if was.get(k) != v)
            else:
                what = f"the photos under {source.path} changed since it was written"
            raise FstError(f"{path} was written for other shards ({what}); "
                           "use another OUT_DIR or delete that one (nothing was overwritten)")
    return {**fresh, "shards": old.get("shards", [])}


def build_shards(
    src: str | Path,
    out_dir: str | Path,
    settings: ShardSettings,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write (or finish writing) the shards of ``src`` into ``out_dir``; returns the manifest."""
    settings.check()
    source = PhotoSource(src)
    out = Path(out_dir).expanduser().resolve()
    photos = source.list()
    if settings.samples_per_shard is None:
        kept = min(len(photos), settings.limit or len(photos))
        settings = replace(settings, samples_per_shard=default_samples_per_shard(kept))
    plan = plan_shards(photos, settings)
    out.mkdir(parents=True, exist_ok=True)
    manifest = _start_manifest(out, source, photos, settings, len(plan))

    finished = {s["name"]: s for s in manifest["shards"]}
    pending = [
        i for i in range(len(plan))
        if not _is_finished(out / shard_name(settings.prefix, i), finished.get(shard_name(settings.prefix, i)))
    ]
    manifest["shards"] = [s for s in manifest["shards"] if s["name"] not in
                          {shard_name(settings.prefix, i) for i in pending}]
    log.info("%d of %d shards to write (%d already finished)", len(pending), len(plan), len(plan) - len(pending))
    todo = [photo for i in pending for photo in plan[i]]
    workers = max(1, workers or os.cpu_count() or 1)
    bar = _progress_bar(len(todo), enabled=progress)
    with _encoder(str(source.path), settings, workers) as encode:
        results = encode([p.rel for p in todo])
        for index in pending:
            entry = _write_shard(out, settings.prefix, index, plan[index], results, bar)
            manifest["shards"] = sorted([*manifest["shards"], entry], key=lambda s: s["name"])
            _write_manifest(out, manifest)
    bar.close()
    manifest["complete"] = True
    _write_manifest(out, manifest)
    return manifest


def _is_finished(path: Path, entry: dict[str, Any] | None) -> bool:
    return entry is not None and path.is_file() and path.stat().st_size == entry["bytes"]


def _write_shard(out: Path, prefix: str, index: int, photos: list[SourcePhoto],
                 results: Iterator[tuple[bytes | None, str | None]], bar: Any) -> dict[str, Any]:
    """Writes one shard under a temporary name and renames it when complete."""
    name = shard_name(prefix, index)
    skipped = []
    written = 0
    with atomic_path(out / name) as partial, open(partial, "wb") as stream, \
            TarWriter(stream, encoder=False, mtime=_TAR_MTIME) as tar:
        for photo in photos:
            jpeg, error = next(results)
            if jpeg is None:
                skipped.append({"path": photo.rel, "error": error})
                log.warning("skipping unreadable image %s (%s)", photo.rel, error)
            else:
                tar.write({"__key__": photo.key, "jpg": jpeg, "path.txt": photo.rel.encode()})
                written += 1
            bar.update(1)
            if skipped:
                bar.set_postfix(skipped=len(skipped), refresh=False)
    return {"name": name, "samples": written, "bytes": (out / name).stat().st_size, "skipped": skipped}


class _encoder:
    """Context manager giving ``encode(rels) -> iterator of (jpeg | None, error | None)`` in order.

    With more than one worker, photos are decoded and re-encoded in a process pool
    (``imap`` keeps the order, so shards are written sequentially by this process).
    """

    def __init__(self, source_path: str, settings: ShardSettings, workers: int) -> None:
        self.args = (source_path, settings)
        self.workers = workers
        self.pool: Any = None

    def __enter__(self) -> Callable[[list[str]], Iterator[tuple[bytes | None, str | None]]]:
        if self.workers == 1:
            _init_worker(*self.args)
            return lambda rels: map(_encode_in_worker, rels)
        self.pool = multiprocessing.get_context("fork").Pool(self.workers, _init_worker, self.args)
        return lambda rels: self.pool.imap(_encode_in_worker, rels, chunksize=8)

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def _progress_bar(total: int, enabled: bool) -> Any:
    from tqdm import tqdm  # comes with pytorch-lightning

    return tqdm(total=total, unit="img", desc="shards", disable=not enabled or total == 0, dynamic_ncols=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(prog="fst shards", description="Pack a photo folder (or a zip of one) into webdataset "
                            "shards for data=coco.")
    parser.add_argument("src", help="photo folder or .zip (searched recursively)")
    parser.add_argument("out_dir", help="folder for the shards and manifest.json")
    parser.add_argument("--prefix", help="shard file prefix (default: SRC's name, e.g. train2017)")
    parser.add_argument("--samples-per-shard", type=int, default=None,
                        help=f"photos per shard (default: {MAX_SAMPLES_PER_SHARD}, ~45 MB at --resize 320, or fewer "
                             f"so that a small source still makes {MIN_SHARDS} shards)")
    parser.add_argument("--resize", type=int, default=None, metavar="PIXELS",
                        help="shrink photos whose shorter side is larger to this size (e.g. 320 for 256 crops); "
                             "default: keep the original size")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of re-encoded photos (default 90)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the photo shuffle (default 0)")
    parser.add_argument("--limit", type=int, default=None, help="keep only N photos (a seeded random subset)")
    parser.add_argument("--workers", type=int, default=None, help="encoding processes (default: all CPU cores)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def default_prefix(src: str) -> str:
    name = Path(src.rstrip("/\\")).name
    stem = name[: -len(".zip")] if name.lower().endswith(".zip") else name
    return re.sub(r"[^A-Za-z0-9_.]+", "_", stem).strip("_.") or "shard"


def main(argv: list[str] | None = None) -> int:
    """``fst shards``: raises FstError on bad input (fst.cli prints it as one line)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = ShardSettings(
        prefix=args.prefix or default_prefix(args.src),
        samples_per_shard=args.samples_per_shard,
        resize=args.resize,
        quality=args.quality,
        seed=args.seed,
        limit=args.limit,
    )
    manifest = build_shards(args.src, args.out_dir, settings, workers=args.workers, progress=not args.no_progress)
    out = Path(args.out_dir).expanduser().resolve()
    print(f"{manifest['samples']} samples in {len(manifest['shards'])} shards "
          f"({manifest['bytes'] / 1e6:.1f} MB), {manifest['skipped']} unreadable images skipped")
    print(f"manifest: {out / MANIFEST_NAME}")
    print(f"train with: data=coco data.shards='{out / manifest['pattern']}'")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
