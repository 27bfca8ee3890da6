"""Where a model's output counts as blobs on one photo: each flagged 8x8 block and a marked picture.

    python scripts/blob_blocks.py MODEL PHOTO [-o blobs.png]

The photo is scaled to 384 px on its long side and stylized as `fst quality` does; every block
the blob measure counts (flat, black or white in the output, not flat in the photo) is listed
with its place and the luminance mean and spread of the output and the photo there. With -o, the
photo and the output side by side, the counted blocks painted red.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from fst.errors import ArgumentParser, run_command
from fst.fsutil import atomic_path
from fst.images import open_rgb, resize_long_side
from fst.research.measures import BLOCK, MEASURE_SIDE, blob_blocks, block_stats, luminance
from fst.research.quality import load_stylizer


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="scripts/blob_blocks.py", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="model name or file")
    parser.add_argument("photo", type=Path)
    parser.add_argument("-o", "--output", type=Path, help="write the marked picture here (PNG)")
    args = parser.parse_args(argv)
    photo = resize_long_side(open_rgb(args.photo), MEASURE_SIDE)
    out = load_stylizer(args.model, "cpu", "fp32")[0](photo)
    mask = blob_blocks(out, photo)
    out_mean, out_std = block_stats(luminance(out))
    photo_mean, photo_std = block_stats(luminance(photo))
    print(f"{args.photo.name}: {int(mask.sum())} of {mask.size} blocks ({100 * mask.mean():.2f} %)")
    for row, col in zip(*np.nonzero(mask)):
        print(f"  block at x={col * BLOCK}, y={row * BLOCK}: output {out_mean[row, col]:.1f} "
              f"(spread {out_std[row, col]:.1f}), photo {photo_mean[row, col]:.1f} (spread {photo_std[row, col]:.1f})")
    if args.output:
        marked = np.asarray(out).copy()
        big = np.kron(mask, np.ones((BLOCK, BLOCK), bool))
        marked[: big.shape[0], : big.shape[1]][big] = (255, 0, 0)
        with atomic_path(args.output) as tmp:
            Image.fromarray(np.concatenate([np.asarray(photo), marked], axis=1)).save(tmp, format="PNG")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
