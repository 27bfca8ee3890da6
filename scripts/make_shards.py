"""Pack a photo folder (or a zip of one) into webdataset shards for ``data=coco``.

    python scripts/make_shards.py SRC OUT_DIR [--resize 320] [--samples-per-shard N]

SRC: a COCO folder (train2014/, train2017/, val2017/), a zip of one, or any folder of
photos (searched recursively). Writes OUT_DIR/<prefix>-NNNNNN.tar and OUT_DIR/manifest.json,
then prints the ``data.shards=...`` override to train on them. Unreadable images are
skipped and listed in the manifest. Re-running the same command finishes an interrupted
build: finished shards are kept, the others are rebuilt. The logic lives in fst.data.shards.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from fst.data.shards import MAX_SAMPLES_PER_SHARD, MIN_SHARDS, ShardSettings, build_shards
from fst.errors import FstError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    try:
        manifest = build_shards(args.src, args.out_dir, settings, workers=args.workers,
                                progress=not args.no_progress)
    except FstError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out_dir).expanduser().resolve()
    print(f"{manifest['samples']} samples in {len(manifest['shards'])} shards "
          f"({manifest['bytes'] / 1e6:.1f} MB), {manifest['skipped']} unreadable images skipped")
    print(f"manifest: {out / 'manifest.json'}")
    print(f"train with: data=coco data.shards='{out / manifest['pattern']}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
