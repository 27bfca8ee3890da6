"""Blends between two styles of a multi-style model, measured: does a blend lie between its styles?

    python scripts/blend_measures.py gallery starry_night the_wave [--photos fst/assets/photos/val] [--steps 5]

For each weight t in 0, 1/(steps-1), ..., 1 the photos are stylized with
``{A: 1 - t, B: t}`` at 384 px (the quality measures' size) and scored with
fst/research/measures.py against both paintings: the colour distance to A's painting and
to B's (lower is closer), structure and contrast. Prints a Markdown table of the means over
the photos, and how many photos have the 50/50 blend's colour distance to each painting
strictly between the two pure styles'.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from fst.errors import ArgumentParser, FstError, run_command
from fst.images import list_images, open_rgb
from fst.infer import Stylizer
from fst.research.measures import MEASURE_SIDE, at_measure_size, colour, contrast, structure
from fst.resources import VAL_PHOTOS_DIR, bundled_style


def painting_of(stylizer: Stylizer, style: str) -> Path:
    """The style's training painting where it still is, else the bundled one of that name."""
    recorded = ((stylizer.metadata.get("loss") or {}).get("style_images") or {}).get(style)
    for candidate in ([Path(recorded)] if recorded else []) + [bundled_style(style)]:
        if candidate.is_file():
            return candidate
    raise FstError(f"{style}: painting not found")


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="scripts/blend_measures.py", description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("first")
    parser.add_argument("second")
    parser.add_argument("--photos", type=Path, default=VAL_PHOTOS_DIR)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    stylizer = Stylizer.load(args.model, device="cpu")
    a, b = args.first, args.second
    paintings = {s: at_measure_size(open_rgb(painting_of(stylizer, s))) for s in (a, b)}
    photos = [at_measure_size(open_rgb(p)) for p in list_images(args.photos)]
    weights = [i / (args.steps - 1) for i in range(args.steps)]
    table = {}  # t -> (photos, 4) colour to a, colour to b, structure, contrast
    for t in weights:
        rows = []
        for photo in photos:
            out = stylizer(photo, size=MEASURE_SIDE, style={a: 1 - t, b: t})
            rows.append([colour(out, photo, paintings[a]), colour(out, photo, paintings[b]),
                         structure(out, photo), contrast(out, photo)])
        table[t] = np.array(rows)
        print(f"t={t:g} done", file=sys.stderr, flush=True)
    print(f"| {a} : {b} | colour to {a} | colour to {b} | structure | contrast |")
    print("|---|---:|---:|---:|---:|")
    for t in weights:
        mean = table[t].mean(axis=0)
        print(f"| {1 - t:g} : {t:g} | {mean[0]:.3f} | {mean[1]:.3f} | {mean[2]:.2f} | {mean[3]:.2f} |")
    if 0.5 in table:
        pure_a, pure_b, mid = table[0.0], table[1.0], table[0.5]
        for i, s in enumerate((a, b)):
            between = ((np.minimum(pure_a[:, i], pure_b[:, i]) < mid[:, i])
                       & (mid[:, i] < np.maximum(pure_a[:, i], pure_b[:, i])))
            print(f"\n50:50 blend's colour distance to {s} strictly between the pure styles': "
                  f"{int(between.sum())} of {len(photos)} photos")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
