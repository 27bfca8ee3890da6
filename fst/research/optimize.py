"""Per-image optimisation (Gatys et al. 2016): the slow, best-quality reference, as a command.

    fst optimize PHOTO --painting PAINTING [-o OUT] [--steps 100] [--size 512]
        [--optimizer lbfgs|adam] [--lr LR] [--init photo|noise] [--seed 0]
        [--snapshot-every N] [--preserve-color] [--model MODEL] [--loss caffe|torchvision]
        [--style-size PX] [--vgg SPEC] [--device cpu] [--json PATH] [--overwrite]

The photo's pixels (resized to --size px on the long side) are optimised to minimise exactly
the loss a trained model is trained on: the bundled default loss config
(fst/configs/loss/caffe.yaml: same VGG16, layers, weights and normalisation) with the given
painting at --style-size px (default: the training default, 512), or, with --model, the loss
recorded in that model file (its painting unless --painting says otherwise). One step is one
loss + gradient evaluation: an L-BFGS iteration (the default) or an Adam update; the image
written is the lowest-loss iterate (fst/research/gatys.py, the implementation the quality
report runs). A progress bar shows the loss terms; --snapshot-every N writes the current
iterate every N steps beside OUT (OUT_stepNNNN.ext); --preserve-color keeps the photo's
colours and takes only the luminance, as `fst-infer --preserve-color` does.

At the end it prints the image's loss terms and the measures `fst quality` gives trained
models (contrast, colour, structure, blobs; fst/research/measures.py, at 384 px), and, with
--model, the same for that model's output on the same photo at the same size: how close the
trained network gets to the per-image optimum under its own loss. --json writes all of it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf, open_dict

from fst.errors import ArgumentParser, FstError, UsageError, run_command
from fst.fsutil import atomic_write_text
from fst.images import open_rgb, output_format, read_photo, tensor_to_pil, write_photo
from fst.infer.backends import resolve_device
from fst.infer.color import preserve_color
from fst.loss.perceptual import PerceptualLoss
from fst.research.gatys import DEFAULT_LR, INITS, OPTIMIZERS, PARAMETRISATIONS, StepCallback, gatys_stylize, scalar_terms
from fst.research.measures import at_measure_size, measure
from fst.resources import CONFIG_DIR
from fst.train.config import instantiate, register_resolvers

DEFAULT_STEPS = 100
DEFAULT_SIZE = 512
LOSS_CONFIGS = tuple(sorted(p.stem for p in (CONFIG_DIR / "loss").glob("*.yaml")))
TERM_ORDER = ("content", "style", "tv", "palette", "stability", "total")
MEASURE_NAMES = {"colour": "col", "structure": "str", "contrast": "con", "blobs": "blob"}


@dataclass(frozen=True)
class OptimizedImage:
    """An optimisation's result: the lowest-loss iterate (1, 3, H, W) in [0, 1], its loss terms
    (every summed term: content, style, tv, palette, ..., total), the step it came from, the
    optimisation time, and the total loss after each step (``totals[i]``: after i steps)."""

    image: torch.Tensor
    terms: dict[str, float]
    best_step: int
    wall_s: float
    totals: list[float] = field(default_factory=list)


def default_loss(painting: str | Path, loss: str = "caffe", style_size: int | None = None,
                 vgg: str | None = None) -> PerceptualLoss:
    """The loss ``python -m fst.train loss=<loss> style.image=<painting>`` trains with (Hydra
    composes fst/configs/train.yaml), optionally at another painting size or VGG16."""
    if loss not in LOSS_CONFIGS:
        raise UsageError(f"--loss {loss}: choose one of {', '.join(LOSS_CONFIGS)}")
    if not Path(painting).expanduser().is_file():
        raise FstError(f"{painting}: painting not found")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="train", overrides=[f"loss={loss}"])
    finally:
        GlobalHydra.instance().clear()
    # Set after composing, not as overrides: any file name is a valid value, whatever characters it holds.
    with open_dict(cfg):
        cfg.style.image = str(Path(painting).expanduser())
        if style_size is not None:
            cfg.style.size = int(style_size)
        if vgg is not None:
            cfg.loss.vgg_weights = vgg
    node = OmegaConf.to_container(cfg.loss, resolve=True)
    return instantiate(node).eval()


def optimize_image(photo: torch.Tensor, loss: PerceptualLoss, steps: int = DEFAULT_STEPS, *,
                   optimizer: str = "lbfgs", lr: float | None = None, init: str = "photo", seed: int = 0,
                   parametrisation: str = "clamp", callback: StepCallback | None = None) -> OptimizedImage:
    """Stylize ``photo`` (1, 3, H, W) in [0, 1] by optimising its pixels against ``loss`` for ``steps`` steps.

    ``callback(steps_done, terms, current_image)`` is called after every step.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    device = next(loss.buffers()).device
    generator = torch.Generator().manual_seed(int(seed))
    run = gatys_stylize(loss, photo.to(device), [steps], parametrisation, lr=lr, optimizer=optimizer, init=init,
                        generator=generator, callback=callback)
    snap = run.snapshots[-1]
    with torch.no_grad():
        terms = scalar_terms(loss(snap.image, photo.to(device)))
    return OptimizedImage(snap.image, terms, snap.best_step, snap.wall_s, run.totals)


def format_terms(terms: dict[str, float]) -> str:
    """``content 0.51 style 0.83 tv 0.02 palette 0.11 total 1.47``."""
    names = [n for n in TERM_ORDER if n in terms] + [n for n in terms if n not in TERM_ORDER]
    return " ".join(f"{n} {terms[n]:.4g}" for n in names)


def format_measures(scores: dict[str, float]) -> str:
    return "  ".join(f"{short} {scores[name]:.2f}" for name, short in MEASURE_NAMES.items())


def snapshot_path(out: Path, step: int, steps: int) -> Path:
    return out.with_name(f"{out.stem}_step{step:0{max(4, len(str(steps)))}d}{out.suffix}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="fst optimize", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photo", type=Path, help="the photo to stylize")
    parser.add_argument("--painting", "--style-image", dest="painting", type=Path,
                        help="the painting (required unless --model names one)")
    parser.add_argument("-o", "--output", type=Path,
                        help="the image to write (default: PHOTO_STEM_optimized.jpg in the current folder)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help=f"loss + gradient evaluations (default {DEFAULT_STEPS})")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE,
                        help=f"the photo's longer side in px while optimising (default {DEFAULT_SIZE})")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default="lbfgs", help="default: lbfgs")
    parser.add_argument("--lr", type=float, help="step size (default: "
                        + ", ".join(f"{k} {v}" for k, v in DEFAULT_LR.items()) + ")")
    parser.add_argument("--init", choices=INITS, default="photo",
                        help="start from the photo (default) or from uniform noise")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise start (default 0)")
    parser.add_argument("--parametrisation", choices=PARAMETRISATIONS, default="clamp",
                        help="how pixels stay in [0, 1] (fst/research/gatys.py; default clamp)")
    parser.add_argument("--snapshot-every", type=int, metavar="N",
                        help="also write the current image every N steps (OUT_stepNNNN.ext)")
    parser.add_argument("--preserve-color", action="store_true",
                        help="keep the photo's colours, take only the luminance (as fst-infer)")
    parser.add_argument("--model", help="take the loss from this trained model file (or bundled/installed "
                        "model name), and compare with the model's own output on the same photo")
    parser.add_argument("--loss", choices=LOSS_CONFIGS, default="caffe",
                        help="bundled loss config without --model (default caffe)")
    parser.add_argument("--style-size", type=int, help="the painting's longer side for the Gram targets "
                        "(default: the model's, else the training default of fst/configs/style)")
    parser.add_argument("--vgg", help="VGG16 weights: caffe | torchvision | PATH (default: the loss config's)")
    parser.add_argument("--device", default="cpu", help="auto | cpu | cuda[:N] | mps (default cpu)")
    parser.add_argument("--json", type=Path, help="also write the losses and measures as JSON")
    parser.add_argument("--quality", type=int, default=92, help="JPEG/WebP quality (default 92)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.size < 16:
        parser.error(f"--size must be >= 16, got {args.size}")
    if args.snapshot_every is not None and args.snapshot_every < 1:
        parser.error(f"--snapshot-every must be >= 1, got {args.snapshot_every}")
    if args.style_size is not None and args.style_size < 16:
        parser.error(f"--style-size must be >= 16, got {args.style_size}")
    if args.lr is not None and not args.lr > 0:
        parser.error(f"--lr must be > 0, got {args.lr}")
    if not 1 <= args.quality <= 100:
        parser.error(f"--quality must be 1-100, got {args.quality}")
    if args.painting is None and args.model is None:
        parser.error("give the painting (--painting PATH) or a model whose loss names one (--model)")
    if args.output is None:
        args.output = Path(f"{args.photo.stem}_optimized.jpg")
    return args


def _planned_outputs(args: argparse.Namespace) -> list[Path]:
    outputs = [args.output]
    if args.snapshot_every:
        outputs += [snapshot_path(args.output, s, args.steps)
                    for s in range(args.snapshot_every, args.steps + 1, args.snapshot_every)]
    if args.json:
        outputs.append(args.json)
    return outputs


def check_inputs(args: argparse.Namespace) -> None:
    """Every cheap check before minutes of work: the files exist, the outputs can be written."""
    if not args.photo.is_file():
        raise FstError(f"{args.photo}: no such photo")
    if args.painting is not None and not args.painting.expanduser().is_file():
        raise FstError(f"{args.painting}: painting not found")
    output_format(args.output)  # an unsupported extension, named
    if not args.overwrite:
        existing = [p for p in _planned_outputs(args) if p.exists()]
        if existing:
            raise FstError(f"{existing[0]}: already exists (pass --overwrite to replace it)")


def build_loss(args: argparse.Namespace, device: torch.device) -> tuple[PerceptualLoss, Any, dict[str, Any]]:
    """The loss (the model's own with --model, else the bundled default), the model's stylizer
    (or None) and a record of the loss for the report."""
    if args.model is None:
        loss = default_loss(args.painting, args.loss, args.style_size, args.vgg)
        return loss.to(device), None, {"source": f"fst/configs/loss/{args.loss}.yaml", **loss.config}
    from fst.research import quality

    stylizer, path, meta = quality.load_stylizer(args.model, str(device), "fp32")
    spec = argparse.Namespace(style_image=str(args.painting) if args.painting else None, style_size=args.style_size,
                              vgg=args.vgg, style=None)
    loss, record = quality.build_loss(path, meta, spec)
    return loss.to(device), stylizer, {"source": str(path), **loss.config, "rebuilt": record}


def run(args: argparse.Namespace) -> dict[str, Any]:
    check_inputs(args)
    device = resolve_device(args.device)
    photo = read_photo(args.photo, args.size)  # FstError naming the file if it does not decode
    loss, stylizer, loss_record = build_loss(args, device)
    painting_path = Path(loss.style_image_path or args.painting)
    photo_rgb = photo.rgb.unsqueeze(0).to(device)

    def finish(image: torch.Tensor) -> torch.Tensor:
        return preserve_color(image, photo_rgb) if args.preserve_color else image

    def write(path: Path, image: torch.Tensor) -> None:
        write_photo(path, image[0], quality=args.quality, icc_profile=photo.icc_profile, exif=photo.exif,
                    overwrite=args.overwrite)

    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=args.steps, unit="step", file=sys.stderr, dynamic_ncols=True,
                   desc=f"{args.optimizer} {photo_rgb.shape[-1]}x{photo_rgb.shape[-2]}")

    def on_step(done: int, terms: dict[str, float], image: torch.Tensor) -> None:
        if bar is not None:
            bar.set_postfix_str(format_terms(terms), refresh=False)
            bar.update(1)
        if args.snapshot_every and done % args.snapshot_every == 0:
            write(snapshot_path(args.output, done, args.steps), finish(image))

    try:
        result = optimize_image(photo_rgb, loss, args.steps, optimizer=args.optimizer, lr=args.lr, init=args.init,
                                seed=args.seed, parametrisation=args.parametrisation, callback=on_step)
    finally:
        if bar is not None:
            bar.close()
    written = finish(result.image)
    write(args.output, written)

    photo_pil = tensor_to_pil(photo.rgb)
    painting = at_measure_size(open_rgb(painting_path))
    summary: dict[str, Any] = {
        "output": str(args.output), "photo": str(args.photo), "painting": str(painting_path),
        "size": [int(photo_rgb.shape[-1]), int(photo_rgb.shape[-2])], "steps": args.steps,
        "optimizer": args.optimizer, "lr": args.lr if args.lr is not None else DEFAULT_LR[args.optimizer],
        "init": args.init, "seed": args.seed, "parametrisation": args.parametrisation,
        "preserve_color": args.preserve_color, "loss": loss_record,
        "optimized": {"terms": result.terms, "best_step": result.best_step, "wall_s": result.wall_s,
                      "measures": measure(tensor_to_pil(written), photo_pil, painting)},
    }
    if args.preserve_color:
        with torch.no_grad():
            summary["optimized"]["written_terms"] = scalar_terms(loss(written, photo_rgb))
    if stylizer is not None:
        start = time.perf_counter()
        model_out = stylizer.stylize_batch(photo_rgb, tile=None).clone()
        model_wall = time.perf_counter() - start
        with torch.no_grad():
            model_terms = scalar_terms(loss(model_out, photo_rgb))
        summary["model"] = {"name": stylizer.name, "terms": model_terms, "wall_s": model_wall,
                            "measures": measure(tensor_to_pil(finish(model_out)), photo_pil, painting)}
    summary["machine"] = {"device": str(device), "torch_threads": torch.get_num_threads(),
                          "cpu": platform.processor() or platform.machine(), "torch": torch.__version__}
    summary["command"] = " ".join(["fst", "optimize", *args.argv])
    if args.json:
        atomic_write_text(args.json, json.dumps(summary, indent=2) + "\n", overwrite=args.overwrite)
    return summary


def report_lines(summary: dict[str, Any]) -> list[str]:
    """What the command prints: the optimised image's loss and measures, and the model's beside them."""
    opt = summary["optimized"]
    lines = [f"{summary['output']}: {summary['optimizer']} {summary['steps']} steps (best at step {opt['best_step']}, "
             f"{opt['wall_s']:.1f} s): loss {format_terms(opt['terms'])}  |  {format_measures(opt['measures'])}"]
    if "model" in summary:
        model = summary["model"]
        lines.append(f"model {model['name']} on the same photo: loss {format_terms(model['terms'])}  |  "
                     f"{format_measures(model['measures'])}")
        ratio = model["terms"]["total"] / opt["terms"]["total"]
        lines.append(f"total loss: optimised {opt['terms']['total']:.4g}, model {model['terms']['total']:.4g} "
                     f"(model / optimised = {ratio:.2f})")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    summary = run(args)
    print("\n".join(report_lines(summary)))
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
