"""The README gallery: every bundled style on a few held-out photos, one row per photo.

    python scripts/gallery.py [--photos chelsea coffee astronaut] [--size 256] [-o docs/images/gallery.jpg]
    python scripts/gallery.py --strengths 0.25 0.5 0.75 1 --styles the_wave -o docs/images/strength.jpg
    python scripts/gallery.py --multistyle gallery --blend starry_night the_wave --photos chelsea \
        -o docs/images/gallery_multistyle.jpg

--multistyle MODEL: one photo in every style of a multi-style model (first row), then a row of
blends between the two --blend styles, from the first alone to the second alone.

Photos are found by stem in the bundled validation photos (never used for training).
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from fst.errors import ArgumentParser, FstError, run_command
from fst.fsutil import atomic_path
from fst.images import list_images, open_rgb, resize_long_side
from fst.infer import Stylizer
from fst.infer.backends import available_models
from fst.infer.styles import model_file_styles
from fst.resources import BUNDLED_MODELS_DIR, STYLES_DIR, VAL_PHOTOS_DIR

GAP = 6
LABEL_HEIGHT = 24


def _photo(stem: str) -> Path:
    found = [p for p in list_images(VAL_PHOTOS_DIR) if p.stem == stem]
    if not found:
        raise FstError(f"{stem}: no such photo among {VAL_PHOTOS_DIR}")
    return found[0]


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="scripts/gallery.py", description=__doc__.splitlines()[0])
    parser.add_argument("--photos", nargs="+", default=["chelsea", "coffee", "astronaut"])
    parser.add_argument("--styles", nargs="+", help="bundled model names (default: the model of each bundled painting)")
    parser.add_argument("--strengths", nargs="+", type=float, help="one column per strength (one style)")
    parser.add_argument("--size", type=int, default=256, help="long side of every image (default 256)")
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/images/gallery.jpg"))
    parser.add_argument("--multistyle", metavar="MODEL", help="a multi-style model: its styles and blends")
    parser.add_argument("--blend", nargs=2, metavar="STYLE", help="the two styles blended (with --multistyle)")
    parser.add_argument("--blend-steps", type=int, default=5, help="blends in the second row (default 5)")
    args = parser.parse_args(argv)
    if args.multistyle:
        return multistyle_sheet(args)
    # By default one column per bundled painting, from the bundled model of its name (the
    # variants, such as the small or the video-stable network, only when named).
    bundled = {n for n, p in available_models().items() if p.parent == BUNDLED_MODELS_DIR and not model_file_styles(p)}
    styles = args.styles or sorted(p.stem for p in STYLES_DIR.glob("*.jpg") if p.stem in bundled)
    photos = [resize_long_side(open_rgb(_photo(stem)), args.size) for stem in args.photos]
    columns: list[tuple[str, list[Image.Image]]] = [("photo", photos)]
    for style in styles:
        stylizer = Stylizer.load(style, device="cpu")
        for strength in args.strengths or [1.0]:
            label = style if not args.strengths else f"{style} --strength {strength:g}"
            columns.append((label, [stylizer(p, strength=strength) for p in photos]))
    font = ImageFont.load_default(size=15)
    cell_w = args.size
    row_h = [p.height for p in photos]
    sheet = Image.new("RGB", (len(columns) * (cell_w + GAP) - GAP, LABEL_HEIGHT + sum(row_h) + GAP * (len(photos) - 1)),
                      "white")
    draw = ImageDraw.Draw(sheet)
    for c, (label, images) in enumerate(columns):
        left = c * (cell_w + GAP)
        draw.text((left + 2, 4), label, fill=(20, 20, 20), font=font)
        top = LABEL_HEIGHT
        for img, h in zip(images, row_h):
            sheet.paste(img, (left + (cell_w - img.width) // 2, top))
            top += h + GAP
    with atomic_path(args.output) as tmp:
        sheet.save(tmp, format="JPEG", quality=88)
    print(args.output)
    return 0


def multistyle_sheet(args: object) -> int:
    """Row 1: the photo and each style of the model; row 2: blends from one --blend style to the other."""
    stylizer = Stylizer.load(args.multistyle, device="cpu")
    if not stylizer.styles:
        raise FstError(f"{args.multistyle}: not a multi-style model")
    first, second = args.blend or stylizer.styles[:2]
    photo = resize_long_side(open_rgb(_photo(args.photos[0])), args.size)
    top = [("photo", photo)] + [(style, stylizer(photo, style=style)) for style in stylizer.styles]
    steps = max(2, args.blend_steps)
    bottom = []
    for i in range(steps):
        t = i / (steps - 1)
        label = f"{first} {1 - t:g} + {second} {t:g}" if 0 < t < 1 else (first if t == 0 else second)
        bottom.append((label, stylizer(photo, style={first: 1 - t, second: t})))
    font = ImageFont.load_default(size=13)
    cell_w, cell_h = photo.width, photo.height
    columns = max(len(top), len(bottom))
    width = columns * (cell_w + GAP) - GAP
    sheet = Image.new("RGB", (width, 2 * (LABEL_HEIGHT + cell_h) + GAP), "white")
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate((top, bottom)):
        y = r * (LABEL_HEIGHT + cell_h + GAP)
        left0 = (width - (len(row) * (cell_w + GAP) - GAP)) // 2  # the shorter row centred
        for c, (label, image) in enumerate(row):
            left = left0 + c * (cell_w + GAP)
            draw.text((left + 2, y + 4), label, fill=(20, 20, 20), font=font)
            sheet.paste(image, (left, y + LABEL_HEIGHT))
    with atomic_path(args.output) as tmp:
        sheet.save(tmp, format="JPEG", quality=88)
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
