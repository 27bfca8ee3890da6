"""Several models of one style side by side, with the peer and Gatys optimisation, by `fst quality`'s own code.

    python scripts/quality_compare.py --model without=fst/checkpoints/starry_night.safetensors \
        --model with=outputs/adv/starry_night/model.safetensors fst/assets/photos/val \
        --steps 100 300 --gatys-photos 2 --out quality/adv_starry_night \
        --sheet docs/images/quality/adv_starry_night.jpg

Every model is scored as `fst quality MODEL PHOTOS --peer on --steps 0` scores it (fst/research/quality.py:
the 384 px forward pass, the four measures, the training loss of the FIRST model rebuilt from its
metadata, at --size px); the peer once; Gatys@--steps (L-BFGS on the same loss, the best iterate
within each budget) on the first --gatys-photos photos only, where it costs minutes per photo on a
CPU. Writes to --out: report.md (means over all photos, then means over the Gatys photos with every
method, then every row), summary.json, losses.csv; --sheet: the contact sheet (every photo with each
model and the peer, then the Gatys photos with Gatys@N beside).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from fst.errors import ArgumentParser, FstError, run_command
from fst.fsutil import atomic_path, atomic_write_text
from fst.images import open_rgb
from fst.research import quality
from fst.research.measures import MEASURE_SIDE, at_measure_size

SHEET_QUALITY = 88


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="scripts/quality_compare.py", description=__doc__.splitlines()[0])
    parser.add_argument("photos_dir", type=Path)
    parser.add_argument("--model", action="append", required=True, metavar="NAME=MODEL",
                        help="a column name and a model file or name; the first one's loss scores every image")
    parser.add_argument("--steps", type=int, nargs="*", default=[100, 300], help="Gatys budgets (none: no Gatys)")
    parser.add_argument("--gatys-photos", type=int, default=2, help="Gatys on the first N photos (default 2)")
    parser.add_argument("--size", type=int, default=256, help="px of the training loss and Gatys (default 256)")
    parser.add_argument("--sheet-size", type=int, default=192, help="contact sheet cell in px (default 192)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sheet", type=Path, help="contact sheet (.jpg or .png)")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.models = []
    for item in args.model:
        name, sep, spec = item.partition("=")
        if not sep or not name or not spec:
            parser.error(f"--model {item}: expected NAME=MODEL")
        args.models.append((name, spec))
    return args


def _rename(rows: list[dict[str, Any]], images: dict[str, dict[str, Any]], name: str) -> None:
    for row in rows:
        if row["method"] == "fst":
            row["method"] = name
    for by_method in images.values():
        if "fst" in by_method:
            by_method[name] = by_method.pop("fst")


def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = argparse.Namespace(steps=[], parametrisation="clamp", style=None)
    loss_args = argparse.Namespace(style_image=None, style_size=None, vgg=None, style=None)
    first_name, first_spec = args.models[0]
    stylizer, path, meta = quality.load_stylizer(first_spec, "cpu", "fp32")
    loss, record = quality.build_loss(path, meta, loss_args)
    painting_path = Path(record["style_image"])
    painting = at_measure_size(open_rgb(painting_path))
    photos = quality.load_photos(args.photos_dir, args.size, None)
    peer = quality.load_peer("on")

    rows: list[dict[str, Any]] = []
    images: dict[str, dict[str, Any]] = {}
    models = {}
    for index, (name, spec) in enumerate(args.models):
        if index:
            stylizer, path, meta = quality.load_stylizer(spec, "cpu", "fp32")
            _, other = quality.build_loss(path, meta, loss_args)
            same = {k: other[k] for k in (*quality.LOSS_KEYS, "style_sha256", "style_size", "vgg")}
            weights = ("palette_weight", "stability_weight")
            first_loss, this_loss = models[first_name]["loss"] or {}, meta.get("loss") or {}
            if same != {k: record[k] for k in same} or any(first_loss.get(k) != this_loss.get(k) for k in weights):
                raise FstError(f"{spec}: trained with another perceptual loss than {first_spec}; not comparable")
        models[name] = {"model": str(path), "steps": meta.get("steps"), "loss": meta.get("loss")}
        print(f"== {name}: {path}", file=sys.stderr, flush=True)
        got_rows, got_images = quality.evaluate(stylizer, loss, photos, painting, painting_path,
                                                peer if index == 0 else None, settings)
        _rename(got_rows, got_images, name)
        rows += got_rows
        for photo, by_method in got_images.items():
            images.setdefault(photo, {}).update(by_method)

    gatys_photos = photos[: args.gatys_photos] if args.steps else []
    if gatys_photos:
        print(f"== Gatys@{args.steps} on {len(gatys_photos)} photos", file=sys.stderr, flush=True)
        gatys_rows, gatys_images = quality.evaluate(stylizer, loss, gatys_photos, painting, painting_path, None,
                                                    argparse.Namespace(**{**vars(settings), "steps": args.steps}))
        rows += [r for r in gatys_rows if r["method"].startswith("gatys@")]
        for photo, by_method in gatys_images.items():
            images[photo].update({k: v for k, v in by_method.items() if k.startswith("gatys@")})

    names = [p.name for p in gatys_photos]
    order = [*(n for n, _ in args.models), "peer", *(f"gatys@{s}" for s in args.steps)]
    rows.sort(key=lambda r: order.index(r["method"]))  # stable: photos stay in order within a method
    means_all = quality.method_means([r for r in rows if not r["method"].startswith("gatys@")])
    means_gatys = quality.method_means([r for r in rows if r["photo"] in names])
    summary = {"photos_dir": str(args.photos_dir), "photos": [p.name for p in photos], "gatys_photos": names,
               "size": args.size, "measure_side": MEASURE_SIDE, "steps": args.steps, "models": models,
               "peer": quality.PEER_NAME, "loss": record, "means": means_all, "means_gatys_photos": means_gatys,
               "per_photo": rows,
               "machine": {"device": "cpu", "torch_threads": torch.get_num_threads(),
                           "cpu": platform.processor() or platform.machine(), "torch": torch.__version__},
               "command": " ".join(["python", "scripts/quality_compare.py", *args.argv])}
    quality.write_csv(args.out / "losses.csv", rows)
    atomic_write_text(args.out / "summary.json", json.dumps(summary, indent=2) + "\n")
    lines = [f"# {record['style_name']}: {', '.join(n for n, _ in args.models)}, peer, Gatys", "",
             f"Command: `{summary['command']}`", "", f"## Mean over all {len(photos)} photos", "",
             *quality._table([{"method": m, **v} for m, v in means_all.items()], ("method",))]
    if names:
        lines += ["", f"## Mean over the {len(names)} Gatys photos ({', '.join(names)})", "",
                  *quality._table([{"method": m, **v} for m, v in means_gatys.items()], ("method",))]
    lines += ["", "## Per photo", "", *quality._table(rows, ("photo", "method"))]
    atomic_write_text(args.out / "report.md", "\n".join(lines) + "\n")

    if args.sheet:
        title = (f"{record['style_name']}: col colour (lower better), str structure (higher better), con contrast "
                 "(near 1), blob blobs % (lower better), loss (lower better)")
        columns = ["photo", *(n for n, _ in args.models), "peer"]
        top, _ = quality.contact_sheet(images, rows, columns, args.sheet_size, title)
        sheets = [top]
        if names:
            gatys_columns = [*columns, *(f"gatys@{s}" for s in args.steps)]
            bottom, _ = quality.contact_sheet({n: images[n] for n in names}, rows, gatys_columns, args.sheet_size,
                                              f"Gatys@N on the first {len(names)} photos (same loss)")
            sheets.append(bottom)
        sheet = Image.new("RGB", (max(s.width for s in sheets), sum(s.height for s in sheets)), quality.SHEET_BG)
        y = 0
        for part in sheets:
            sheet.paste(part, (0, y))
            y += part.height
        with atomic_path(args.sheet) as tmp:
            fmt = "JPEG" if args.sheet.suffix.lower() in (".jpg", ".jpeg") else "PNG"
            sheet.save(tmp, format=fmt, **({"quality": SHEET_QUALITY} if fmt == "JPEG" else {}))
    summary["out"] = str(args.out)
    return summary


def main(argv: list[str] | None = None) -> int:
    summary = run(parse_args(argv))
    for method, means in summary["means"].items():
        print(f"{method}: {quality.short(means)}  loss {means['total']:.4g}")
    for method, means in summary.get("means_gatys_photos", {}).items():
        print(f"[Gatys photos] {method}: {quality.short(means)}  loss {means['total']:.4g}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
