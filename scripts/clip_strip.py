"""A strip of consecutive video frames: the input above, each model's output below.

    python scripts/clip_strip.py ../shared/datasets/video/cityCC0.mpg -m starry_night \
        -m outputs/stab/model.safetensors --labels "starry_night" "with loss.stability_weight=1" \
        --start 100 --frames 4 --size 256 -o docs/images/clip_strip.jpg

Frames are decoded by fst's own video reader (fst.infer.video.iter_frames), scaled to --size
px on the long side and stylized one by one as `fst-infer` stylizes a clip (each frame
alone, no smoothing), so the flicker between neighbouring frames shows as it plays.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from fst.errors import ArgumentParser, FstError, run_command
from fst.images import pil_to_tensor, tensor_to_pil, write_photo
from fst.infer import Stylizer
from fst.infer.video import iter_frames

GAP = 4
LABEL_WIDTH = 170


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="scripts/clip_strip.py", description=__doc__.splitlines()[0])
    parser.add_argument("clip", type=Path)
    parser.add_argument("-m", "--model", action="append", required=True, help="a model name or file (repeatable)")
    parser.add_argument("--labels", nargs="+", help="one label per --model (default: the model names)")
    parser.add_argument("--start", type=int, default=0, help="first frame shown (default 0)")
    parser.add_argument("--frames", type=int, default=4, help="consecutive frames shown (default 4)")
    parser.add_argument("--size", type=int, default=256, help="long side of each frame in px (default 256)")
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/images/clip_strip.jpg"))
    args = parser.parse_args(argv)
    labels = args.labels or args.model
    if len(labels) != len(args.model):
        raise FstError(f"--labels: {len(labels)} labels for {len(args.model)} models")
    if args.start < 0 or args.frames < 1:
        raise FstError("--start must be >= 0 and --frames >= 1")
    frames = list(iter_frames(args.clip, size=args.size, limit=args.start + args.frames))[args.start:]
    if len(frames) < args.frames:
        raise FstError(f"{args.clip}: fewer than {args.start + args.frames} frames")
    rows: list[tuple[str, list[Image.Image]]] = [("input", [tensor_to_pil(f) for f in frames])]
    for spec, label in zip(args.model, labels):
        stylizer = Stylizer.load(spec, device="cpu")
        rows.append((label, [tensor_to_pil(stylizer.stylize_batch(f.unsqueeze(0))[0]) for f in frames]))

    width, height = rows[0][1][0].size
    font = ImageFont.load_default(size=14)
    sheet = Image.new("RGB", (LABEL_WIDTH + args.frames * (width + GAP) - GAP,
                              len(rows) * (height + GAP) - GAP + 22), "white")
    draw = ImageDraw.Draw(sheet)
    for c in range(args.frames):
        draw.text((LABEL_WIDTH + c * (width + GAP) + 2, 3), f"frame {args.start + c}", fill=(20, 20, 20), font=font)
    for r, (label, images) in enumerate(rows):
        top = 22 + r * (height + GAP)
        draw.multiline_text((4, top + height // 2 - 10), label.replace(" with ", "\nwith "), fill=(20, 20, 20),
                            font=font)
        for c, image in enumerate(images):
            sheet.paste(image, (LABEL_WIDTH + c * (width + GAP), top))
    print(write_photo(args.output, pil_to_tensor(sheet), quality=88, overwrite=True))
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
