"""Data-loading throughput of ``data=coco``: decoded, cropped samples per second per worker.

    python scripts/bench_data.py [--photos ../shared/datasets/photos_2k] [--count 500]

Builds shard sets from the same ``--count`` photos (a seeded random subset) under
``--work`` (default /tmp/fst_bench_data; never inside the repository) and streams one
pass over each through the training pipeline (ShardStream: tar read, shuffle buffer,
JPEG decode, random resized crop to ``--image-size``, batching):

* ``as stored``: photos_2k as it is (shorter side 320, the size the corpus ships at);
* ``pre-resized 256``: ``fst shards --resize 256``;
* ``COCO-size``: the photos upscaled to a 480 px shorter side (COCO's 640x480), JPEG q90,
  standing in for original COCO files; and the same pre-resized to 320.

Also the CPU cost per photo of the two main stages (JPEG decode, TrainTransform).
Per-worker figures, as samples per CPU-second (robust on a shared machine) and per
wall-clock second: in-process (0 loader workers), and a DataLoader with N workers
divided by N. Prints a Markdown table of the medians of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import resource
import statistics
import sys
import tarfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader

from fst.data.coco import ShardStream, expand_shards
from fst.data.shards import PhotoSource, ShardSettings, build_shards, plan_shards
from fst.data.transforms import TrainTransform
from fst.errors import ArgumentParser, FstError, run_command
from fst.images import decode_image, open_rgb

CHECKOUT = Path(__file__).resolve().parents[1]  # --photos defaults to a corpus beside the checkout

COCO_SHORT_SIDE = 480


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", default=str(CHECKOUT.parent / "shared" / "datasets" / "photos_2k"))
    parser.add_argument("--count", type=int, default=500, help="photos per shard set")
    parser.add_argument("--work", default="/tmp/fst_bench_data", help="where shards are built (kept for re-runs)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts")
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args(argv)


def coco_size_copy(photos: Path, count: int, out: Path) -> Path:
    """The same photos ``fst shards --limit`` would pick, upscaled to a COCO-like shorter side."""
    settings = ShardSettings("x", samples_per_shard=count, limit=count)
    chosen = plan_shards(PhotoSource(photos).list(), settings)[0]
    for photo in chosen:
        target = out / photo.rel
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            img = open_rgb(photos / photo.rel)
            scale = COCO_SHORT_SIDE / min(img.size)
            img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
            img.save(target, quality=90)
    return out


def mean_megapixels(out: Path) -> float:
    areas = []
    for tar_path in sorted(out.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".jpg"):
                    w, h = Image.open(io.BytesIO(tar.extractfile(member).read())).size
                    areas.append(w * h)
    return sum(areas) / len(areas) / 1e6


def per_worker_rates(urls: list[str], workers: int, args: argparse.Namespace) -> tuple[float, float]:
    """(samples per wall-clock second, samples per CPU second) per worker over one pass.

    The CPU-second figure is what one dedicated core delivers, and it holds on a busy
    machine; wall-clock time also counts waiting for the CPU. Medians of the repeats.
    """
    wall, cpu = [], []
    for _ in range(args.repeats):
        stream = ShardStream(urls, args.image_size, args.batch_size, max_passes=1)
        source = stream if workers == 0 else DataLoader(stream, batch_size=None, num_workers=workers)
        cpu_start = _cpu_seconds(workers)
        start = time.perf_counter()
        samples = sum(len(batch.keys) for batch in source)  # the workers exit (and are joined) at the end
        wall.append(samples / (time.perf_counter() - start) / max(1, workers))
        cpu.append(samples / (_cpu_seconds(workers) - cpu_start))
    return statistics.median(wall), statistics.median(cpu)


def stage_costs(out: Path, args: argparse.Namespace, count: int = 50) -> tuple[float, float]:
    """CPU milliseconds per photo of JPEG decoding and of TrainTransform (to tensor, crop, flip)."""
    with tarfile.open(sorted(out.glob("*.tar"))[0]) as tar:
        datas = [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".jpg")][:count]
    transform = TrainTransform(args.image_size)
    start = time.process_time()
    photos = [decode_image(data).rgb for data in datas]
    decode = time.process_time() - start
    start = time.process_time()
    for n, photo in enumerate(photos):
        transform(photo, seed=n)
    crop = time.process_time() - start
    return 1000 * decode / len(datas), 1000 * crop / len(datas)


def _cpu_seconds(workers: int) -> float:
    """CPU time of this process (in-process loading) or of its finished children (loader workers)."""
    who = resource.RUSAGE_SELF if workers == 0 else resource.RUSAGE_CHILDREN
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    photos = Path(args.photos).expanduser().resolve()
    if not photos.is_dir():
        raise FstError(f"--photos {photos}: no such folder")
    work = Path(args.work)
    torch.set_num_threads(1)  # one core per worker, as in a DataLoader worker
    coco_src = coco_size_copy(photos, args.count, work / "coco_size_src")
    variants = [
        ("as stored (shorter side 320)", photos, None),
        ("pre-resized 256", photos, 256),
        (f"COCO-size ({COCO_SHORT_SIDE} px, synthetic)", coco_src, None),
        ("COCO-size pre-resized 320", coco_src, 320),
    ]
    print(f"# {args.count} photos from {photos}, crops {args.image_size}, batch {args.batch_size}, "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, torch {torch.__version__}")
    columns = ["in-process" if w == 0 else f"{w} workers" for w in args.workers]
    print("| shards | MB | mean MP | decode ms | transform ms | "
          + " | ".join(f"{c}: per CPU-s | {c}: per wall-s" for c in columns) + " |")
    print("|" + "---|" * (5 + 2 * len(args.workers)))
    for name, src, resize in variants:
        out = work / name.split(" (")[0].replace(" ", "_")
        per_shard = max(1, args.count // 10)  # 10 shards: enough for any --workers here
        manifest = build_shards(src, out, ShardSettings("bench", samples_per_shard=per_shard, resize=resize,
                                                        limit=args.count), progress=False)
        urls = expand_shards(str(out / manifest["pattern"]))
        rates = [per_worker_rates(urls, w, args) for w in args.workers]
        decode_ms, crop_ms = stage_costs(out, args)
        print(f"| {name} | {manifest['bytes'] / 1e6:.1f} | {mean_megapixels(out):.3f} | {decode_ms:.2f} | {crop_ms:.2f} | "
              + " | ".join(f"{cpu:.0f} | {wall:.0f}" for wall, cpu in rates) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
