"""Perceptual loss of a model's output vs Gatys optimisation, on held-out photos.

    fst quality MODEL PHOTOS_DIR [--size 256] [--steps 50 100 300]
        [--max-photos N] [--out quality/<style>/] [--style-image PATH] [--style-size 512]

The loss is the training loss of MODEL, rebuilt with Hydra from the loss config its
metadata records (layers, weights, VGG, painting). For every photo (longer side resized to --size, whole photo kept)
it evaluates the model's output and Gatys et al.'s L-BFGS optimisation started from the
photo after each --steps budget (one step = one L-BFGS iteration = one loss+gradient
evaluation; a budget delivers the best iterate within it; see fst/research/gatys.py).
Writes to --out: report.md (tables and verdict), losses.csv, summary.json and
contact_sheet.png (photo | fst | Gatys@... per row). The goal checked: fst's mean total
loss <= Gatys@--goal-steps (default 100).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont

from fst.errors import ArgumentParser, FstError, run_command
from fst.fsutil import file_sha256
from fst.images import list_images, open_rgb, pil_to_tensor, resize_long_side, tensor_to_pil
from fst.loss.perceptual import PerceptualLoss
from fst.nets.model_file import load_model
from fst.research.gatys import GatysRun, LOSS_TERMS, PARAMETRISATIONS, gatys_stylize, loss_terms
from fst.resources import bundled_style
from fst.train.config import instantiate

DEFAULT_STYLE_SIZE = 512  # configs/style/*.yaml `size`: the painting's longer side in training
LOSS_TARGET = f"{PerceptualLoss.__module__}.{PerceptualLoss.__qualname__}"
LOSS_KEYS = ("content_layers", "style_layers", "content_weight", "style_weight", "tv_weight")
SHEET_PAD = 8
SHEET_BG = (255, 255, 255)
SHEET_TEXT = (20, 20, 20)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def vgg_spec(recorded: str | None, model: Path) -> str:
    """``vgg_weights`` for the loss from what the metadata records: a spec (caffe |
    torchvision | path), or, in older files, the VGGWeights.source description fst.loss.weights produced."""
    if not recorded:
        warn(f"{model}: metadata does not say which VGG16 was used; assuming caffe (pass --vgg)")
        return "caffe"
    if recorded in ("caffe", "torchvision"):
        return recorded
    if recorded == "imagenet":  # weights were passed as an object: only the input convention is known
        warn(f"{model}: metadata records an ImageNet-preprocessed VGG16 of unknown origin; "
             "assuming torchvision (pass --vgg)")
        return "torchvision"
    if recorded.startswith("torchvision "):
        return "torchvision"
    if recorded.startswith("file "):
        return recorded[len("file "):]
    if recorded.startswith(("cache ", "Keras HDF5 ", "PyPI wheel ")):
        return "caffe"
    if Path(recorded).expanduser().is_file():
        return recorded
    raise FstError(f"{model}: unrecognised VGG {recorded!r} in its metadata; pass --vgg caffe|torchvision|PATH")


def style_image_for(model: Path, spec: dict[str, Any], style_name: str, args: argparse.Namespace) -> Path:
    """--style-image, else the training painting the loss config names (where it still is),
    else the bundled painting called ``style_name``."""
    if args.style_image:
        candidates = [Path(args.style_image)]
    else:
        recorded = spec.get("style_image")
        candidates = [*([Path(recorded).expanduser()] if recorded else []), bundled_style(style_name)]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise FstError(f"{candidates[-1]}: style image not found (pass --style-image)")
    return found


def loss_config(model: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """The loss config the model was trained with (``meta["loss"]``), checked."""
    spec = meta.get("loss")
    if not isinstance(spec, dict):
        raise FstError(f"{model}: metadata has no 'loss' entry (not trained by fst.train), "
                       "so its training loss is unknown")
    missing = [k for k in LOSS_KEYS if k not in spec]
    if missing:
        raise FstError(f"{model}: metadata 'loss' lacks {', '.join(missing)}")
    # A model file is data: only fst's own loss is ever instantiated from it.
    target = spec.get("_target_", LOSS_TARGET)
    if target != LOSS_TARGET:
        raise FstError(f"{model}: metadata names the loss {target!r}; only {LOSS_TARGET} can be rebuilt")
    return spec


def build_loss(model: Path, meta: dict[str, Any], args: argparse.Namespace) -> tuple[PerceptualLoss, dict[str, Any]]:
    """The model's training loss (its recorded config, instantiated) and a record of how it was rebuilt."""
    spec = loss_config(model, meta)
    style_name = meta.get("style_name") or model.stem
    style_image = style_image_for(model, spec, style_name, args)
    recorded = meta.get("style_sha256")
    actual = file_sha256(style_image)
    if recorded is None:
        warn(f"{model}: no style_sha256 in its metadata; cannot check that {style_image} is the training painting")
    elif recorded != actual:
        warn(f"{style_image}: sha256 {actual[:12]}... differs from the training painting's {recorded[:12]}...; "
             "the losses below are NOT the training loss")
    if args.style_size:
        style_size = args.style_size
    elif "style_size" in spec:  # None means the painting was used at its own size
        style_size = spec["style_size"] and int(spec["style_size"])
    else:  # files written before fst recorded it: the training default
        style_size = DEFAULT_STYLE_SIZE
    # Files written before the config was recorded whole name the VGG "vgg".
    vgg = args.vgg or vgg_spec(spec.get("vgg_weights", spec.get("vgg")), model)
    # Files written before the palette term existed trained without it.
    config = {**{k: spec[k] for k in LOSS_KEYS}, "_target_": LOSS_TARGET, "style_image": str(style_image),
              "style_size": style_size, "vgg_weights": vgg, "palette_weight": spec.get("palette_weight", 0.0)}
    loss: PerceptualLoss = instantiate(config)
    record = {"style_name": style_name, "style_image": str(style_image), "style_sha256": actual,
              "style_sha256_matches": None if recorded is None else recorded == actual,
              "style_size": style_size, "vgg": vgg, "vgg_source": loss.vgg_source,
              **{k: spec[k] for k in LOSS_KEYS}}
    return loss.eval(), record


def load_photos(folder: Path, size: int, limit: int | None) -> list[tuple[str, torch.Tensor]]:
    if not folder.is_dir():
        raise FstError(f"{folder}: not a directory of photos")
    paths = list_images(folder)[:limit] if limit else list_images(folder)
    if not paths:
        raise FstError(f"{folder}: no images found")
    return [(str(p.relative_to(folder)), pil_to_tensor(resize_long_side(open_rgb(p), size)).unsqueeze(0))
            for p in paths]


def evaluate(net: torch.nn.Module, loss: PerceptualLoss, photos: list[tuple[str, torch.Tensor]],
             args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, dict[str, torch.Tensor]]]:
    """Rows (photo, method, steps, terms, wall_s, ...) and the images shown on the sheet."""
    device = torch.device(args.device)
    rows: list[dict[str, Any]] = []
    images: dict[str, dict[str, torch.Tensor]] = {}
    with torch.inference_mode():
        net(photos[0][1].to(device))  # warm-up, so the first photo's timing is not an outlier
    for name, photo in photos:
        photo = photo.to(device)
        start = time.perf_counter()
        with torch.inference_mode():
            # Clamped: the image the model delivers (a no-op for the default tanh head).
            styled = net(photo).clamp(0, 1)
        fst_wall = time.perf_counter() - start
        fst_terms = loss_terms(loss, styled.clone(), photo)
        print(f"{name}: fst total {fst_terms['total']:.4g} ({fst_wall:.3f} s); Gatys ...", file=sys.stderr, flush=True)
        run: GatysRun = gatys_stylize(loss, photo, args.steps, args.parametrisation)
        reach = run.steps_to_reach(fst_terms["total"])
        rows.append({"photo": name, "method": "fst", "steps": "", **fst_terms, "wall_s": fst_wall,
                     "gatys_best_step": "", "gatys_steps_to_match_fst": "" if reach is None else reach})
        images[name] = {"photo": photo.cpu(), "fst": styled.cpu()}
        for snap in run.snapshots:
            rows.append({"photo": name, "method": f"gatys@{snap.steps}", "steps": snap.steps, **snap.terms,
                         "wall_s": snap.wall_s, "gatys_best_step": snap.best_step, "gatys_steps_to_match_fst": ""})
            images[name][f"gatys@{snap.steps}"] = snap.image.cpu()
        print("  " + ", ".join(f"@{s.steps} {s.terms['total']:.4g} ({s.wall_s:.1f} s)" for s in run.snapshots)
              + f"; reaches fst's loss after {reach if reach is not None else f'> {max(args.steps)}'} steps",
              file=sys.stderr, flush=True)
    return rows, images


def method_means(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    means: dict[str, dict[str, float]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        means[method] = {k: sum(r[k] for r in mine) / len(mine) for k in (*LOSS_TERMS, "wall_s")}
    return means


def verdict(means: dict[str, dict[str, float]], goal_steps: int) -> dict[str, Any]:
    fst_total = means["fst"]["total"]
    goal = means.get(f"gatys@{goal_steps}")
    if goal is None:
        return {"goal": f"fst mean total <= Gatys@{goal_steps}", "met": None, "fst_total": fst_total}
    return {"goal": f"fst mean total <= Gatys@{goal_steps}", "met": fst_total <= goal["total"],
            "fst_total": fst_total, "gatys_total": goal["total"], "ratio": fst_total / goal["total"]}


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _table(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[str]:
    """Markdown table: the ``keys`` columns as text, then the loss terms and wall time."""
    numbers = (*LOSS_TERMS, "wall_s")
    lines = ["| " + " | ".join((*keys, *(k.replace("_s", " s") for k in numbers))) + " |",
             "|" + "---|" * len(keys) + "---:|" * len(numbers)]
    lines += ["| " + " | ".join((*(str(r[k]) for k in keys), *(_fmt(r[k]) for k in numbers))) + " |" for r in rows]
    return lines


def markdown(rows: list[dict[str, Any]], means: dict[str, dict[str, float]], summary: dict[str, Any]) -> str:
    loss = summary["loss"]
    lines = [f"# Quality report: {loss['style_name']}", "",
             f"Model `{summary['model']}` ({summary['model_steps']} training steps), "
             f"{len(summary['photos'])} photos from `{summary['photos_dir']}` at longer side {summary['size']} px. "
             f"Gatys@N = the best of the first N L-BFGS iterations started from the photo "
             f"({summary['parametrisation']} parametrisation, 1 step = 1 iteration = 1 loss+gradient evaluation). "
             f"Loss = the model's training loss (style image {loss['style_size'] or 'full-size'} px, "
             f"VGG {loss['vgg']}). "
             "Lower is better; wall s = fst forward time, or Gatys optimisation time up to that step.", "",
             f"Command: `{summary['command']}`", "", "## Mean over photos", ""]
    lines += _table([{"method": m, **v} for m, v in means.items()], ("method",))
    v = summary["verdict"]
    if v["met"] is None:
        lines += ["", f"Goal ({v['goal']}): not evaluated (that budget was not run)."]
    else:
        lines += ["", f"Goal ({v['goal']}): **{'met' if v['met'] else 'missed'}**: fst {_fmt(v['fst_total'])} "
                  f"vs Gatys {_fmt(v['gatys_total'])} (ratio {v['ratio']:.3f})."]
    reach = [r["gatys_steps_to_match_fst"] for r in rows if r["method"] == "fst"]
    lines += ["", "Gatys steps needed to reach fst's total loss, per photo: "
              + ", ".join(str(s) if s != "" else f">{max(summary['steps'])}" for s in reach) + ".",
              "", "## Per photo", ""]
    lines += _table(rows, ("photo", "method"))
    return "\n".join(lines) + "\n"


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def contact_sheet(images: dict[str, dict[str, torch.Tensor]], rows: list[dict[str, Any]], columns: list[str],
                  cell: int, title: str) -> tuple[Image.Image, dict[tuple[str, str], tuple[int, int, int, int]]]:
    """One row per photo, one column per method, each image centred in a ``cell`` square and
    labelled with its total loss. Returns the sheet and each image's box (left, top, right, bottom)."""
    font = _font(max(10, cell // 14))
    line_h = int(font.getbbox("Ag|")[3]) + 4
    totals = {(r["photo"], r["method"]): r["total"] for r in rows}
    top0 = SHEET_PAD + 2 * line_h
    row_h = cell + line_h + SHEET_PAD
    width = SHEET_PAD + len(columns) * (cell + SHEET_PAD)
    sheet = Image.new("RGB", (width, top0 + len(images) * row_h), SHEET_BG)
    draw = ImageDraw.Draw(sheet)
    draw.text((SHEET_PAD, SHEET_PAD), title, fill=SHEET_TEXT, font=font)
    boxes: dict[tuple[str, str], tuple[int, int, int, int]] = {}
    for c, column in enumerate(columns):
        left = SHEET_PAD + c * (cell + SHEET_PAD)
        draw.text((left, SHEET_PAD + line_h), column.replace("gatys@", "Gatys@"), fill=SHEET_TEXT, font=font)
        for r, (photo, by_method) in enumerate(images.items()):
            img = tensor_to_pil(by_method[column])
            top = top0 + r * row_h
            x, y = left + (cell - img.width) // 2, top + (cell - img.height) // 2
            sheet.paste(img, (x, y))
            boxes[(photo, column)] = (x, y, x + img.width, y + img.height)
            label = Path(photo).name if column == "photo" else f"total {totals[(photo, column)]:.4g}"
            draw.text((left, top + cell + 2), label, fill=SHEET_TEXT, font=font)
    return sheet, boxes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="fst quality", description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="fst .safetensors model file")
    parser.add_argument("photos_dir", type=Path, help="held-out photos (searched recursively, sorted)")
    parser.add_argument("--out", type=Path, help="output folder (default: quality/<style_name>/)")
    parser.add_argument("--size", type=int, default=256, help="longer side of every photo in px (default 256)")
    parser.add_argument("--max-photos", type=int, help="only the first N photos (sorted by path)")
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 100, 300],
                        help="Gatys budgets (L-BFGS iterations)")
    parser.add_argument("--sheet-steps", type=int, nargs="+",
                        help="Gatys budgets shown on the contact sheet (default: all but the smallest if >2 budgets)")
    parser.add_argument("--goal-steps", type=int, default=100, help="the Gatys budget fst must match (default 100)")
    parser.add_argument("--style-image", help="the painting (default: the one the model's loss config names, else "
                        "the bundled <style_name> painting; sha256-checked)")
    parser.add_argument("--style-size", type=int, help="painting's longer side for the Gram targets "
                        f"(default: the model's loss.style_size, else {DEFAULT_STYLE_SIZE})")
    parser.add_argument("--vgg", help="override the VGG16 read from the metadata: caffe | torchvision | PATH")
    parser.add_argument("--parametrisation", choices=PARAMETRISATIONS, default="clamp",
                        help="how Gatys keeps pixels in [0, 1] (see fst/research/gatys.py; default clamp)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.steps = sorted(set(args.steps))
    if args.size < 16 or args.steps[0] < 1 or (args.max_photos is not None and args.max_photos < 1):
        parser.error("--size must be >= 16, --steps and --max-photos >= 1")
    if args.sheet_steps is None:
        args.sheet_steps = args.steps[1:] if len(args.steps) > 2 else args.steps
    if not set(args.sheet_steps) <= set(args.steps):
        parser.error(f"--sheet-steps {args.sheet_steps} must be among --steps {args.steps}")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    net, meta = load_model(args.model, args.device)
    loss, loss_record = build_loss(args.model, meta, args)
    loss = loss.to(args.device)
    photos = load_photos(args.photos_dir, args.size, args.max_photos)
    out = args.out or Path("quality") / loss_record["style_name"]
    rows, images = evaluate(net, loss, photos, args)
    means = method_means(rows)
    summary = {"model": str(args.model), "model_steps": meta.get("steps"), "photos_dir": str(args.photos_dir),
               "photos": [name for name, _ in photos], "size": args.size, "steps": args.steps,
               "parametrisation": args.parametrisation, "loss": loss_record, "means": means,
               "verdict": verdict(means, args.goal_steps),
               "machine": {"device": args.device, "torch_threads": torch.get_num_threads(),
                           "cpu": platform.processor() or platform.machine(), "torch": torch.__version__},
               "command": " ".join(["fst", "quality", *args.argv])}
    out.mkdir(parents=True, exist_ok=True)
    fields = ["photo", "method", "steps", *LOSS_TERMS, "wall_s", "gatys_best_step", "gatys_steps_to_match_fst"]
    with open(out / "losses.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: (f"{r[k]:.8g}" if isinstance(r[k], float) else r[k]) for k in fields} for r in rows)
    (out / "report.md").write_text(markdown(rows, means, summary))
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    columns = ["photo", "fst", *(f"gatys@{s}" for s in args.sheet_steps)]
    sheet, _ = contact_sheet(images, rows, columns, args.size,
                             f"{loss_record['style_name']}: total perceptual loss (lower is better)")
    sheet.save(out / "contact_sheet.png", optimize=True)
    summary["out"] = str(out)
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    summary = run(args)
    v = summary["verdict"]
    print(f"{summary['out']}: fst mean total {v['fst_total']:.4g}"
          + ("" if v["met"] is None else f" vs Gatys@{args.goal_steps} {v['gatys_total']:.4g} -> goal "
             + ("met" if v["met"] else "missed")))
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
