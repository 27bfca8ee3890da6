"""Add a style to a trained multi-style model without retraining the others.

    fst add-style MODEL PAINTING --name NAME [-o OUT] [--steps 500] [--lr 0.016] [--photos DIR]

MODEL is a multi-style model file or name (``model=multistyle``, e.g. the bundled
``gallery``). The new style is one more (gamma, beta) row in every conditional instance
norm layer, started from the mean of the existing rows; only that row is trained, with
the loss the model was trained with (its metadata's loss config, the painting replaced
by PAINTING) on crops of the photos, by Adam with a linear warm-up and cosine decay. The
convolutions and every other style's rows are frozen: they are bit-identical in the new
file, which is checked before it is written. Written atomically to OUT (default
``<model>+<name>.safetensors`` in the current folder), never over an existing file
unless --overwrite; its metadata lists the styles with NAME last and records this run
under ``added_styles``.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from fst.errors import ArgumentParser, FstError, UsageError, run_command
from fst.fsutil import file_sha256
from fst.images import open_rgb
from fst.loss.perceptual import PerceptualLoss
from fst.nets.conditional_norm import ConditionalInstanceNorm2d, one_hot, style_tables
from fst.nets.model_file import load, save_model, without_header
from fst.nets.transformer import TransformerNet, TransformerNetConfig
from fst.resources import TRAIN_PHOTOS_DIR, VAL_PHOTOS_DIR
from fst.train.config import instantiate
from fst.train.multistyle import MIN_STYLE_SIDE
from fst.train.schedules import warmup_cosine

LOSS_TARGET = f"{PerceptualLoss.__module__}.{PerceptualLoss.__qualname__}"
# Defaults measured on the 2-core CPU (QUALITY.md, "Many styles in one network"). Only 3,200
# numbers train, each far from where the rows start in units of a 3e-4 step: of 1e-3, 4e-3 and
# 1.6e-2, the largest reached the lowest loss in a 150-step probe (the same batches for each).
DEFAULT_STEPS = 500
DEFAULT_LR = 1.6e-2
DEFAULT_WARMUP = 25
DEFAULT_BATCH = 4
DEFAULT_CROP = 128
DEFAULT_STYLE_SIZE = 256


class AppendedRow(nn.Module):
    """Parametrization of a (S + 1, C) table as the frozen rows of S styles and one trainable row."""

    def __init__(self, frozen: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("frozen", frozen.detach().clone())

    def forward(self, row: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.frozen, row.unsqueeze(0)])

    def right_inverse(self, table: torch.Tensor) -> torch.Tensor:
        return table[-1].detach().clone()


def with_new_style(net: TransformerNet) -> tuple[TransformerNet, list[nn.Parameter]]:
    """A copy of ``net`` with one more style, and the only parameters to train: the new row
    of each (gamma, beta) table, started from the mean of the existing rows. Everything
    else is frozen (``requires_grad`` off; the old rows are constants of the parametrization)."""
    config = net.config
    if not config.num_styles:
        raise FstError("not a multi-style model: styles are added to models trained with model=multistyle")
    bigger = TransformerNet(TransformerNetConfig(**{**config.to_dict(), "num_styles": config.num_styles + 1}))
    tables = style_tables(net)
    state = {}
    for key, value in net.state_dict().items():
        state[key] = torch.cat([value, value.mean(dim=0, keepdim=True)]) if key in tables else value
    bigger.load_state_dict(state)
    bigger.requires_grad_(False)
    rows = []
    for module in bigger.modules():
        if isinstance(module, ConditionalInstanceNorm2d):
            for kind in ("gamma", "beta"):
                table = getattr(module, kind)
                parametrize.register_parametrization(module, kind, AppendedRow(table[:-1]))
                row = module.parametrizations[kind].original
                row.requires_grad_(True)
                rows.append(row)
    return bigger, rows


def fold_rows(net: TransformerNet) -> TransformerNet:
    """``net`` with its appended rows made plain (S + 1, C) parameters again."""
    for module in net.modules():
        if isinstance(module, ConditionalInstanceNorm2d):
            for kind in ("gamma", "beta"):
                if parametrize.is_parametrized(module, kind):
                    parametrize.remove_parametrizations(module, kind, leave_parametrized=True)
    return net


def check_unchanged(before: TransformerNet, after: TransformerNet) -> None:
    """Every tensor of ``before`` is bit-identical in ``after`` (the per-style tables: their old rows)."""
    new_state = after.state_dict()
    for key, old in before.state_dict().items():
        new = new_state[key]
        if key in style_tables(before):
            new = new[: old.shape[0]]
        if not torch.equal(old, new):
            raise FstError(f"internal error: {key} changed while adding a style; nothing written")


def build_loss(model: Path, meta: dict[str, Any], painting: Path, style_size: int | None) -> PerceptualLoss:
    """The model's training loss (its recorded config) against ``painting``."""
    spec = meta.get("loss")
    if not isinstance(spec, dict):
        raise FstError(f"{model}: metadata has no 'loss' entry, so the loss to train the new style with is unknown")
    if spec.get("_target_", LOSS_TARGET) != LOSS_TARGET:  # a model file is data: only fst's own loss is built
        raise FstError(f"{model}: metadata names the loss {spec.get('_target_')!r}; only {LOSS_TARGET} can be rebuilt")
    accepted = inspect.signature(PerceptualLoss).parameters
    config = {k: v for k, v in spec.items() if k in accepted}
    # Terms added to fst after the model was trained were not part of its loss.
    for name in accepted:
        if name.endswith("_weight") and name not in config:
            config[name] = 0.0
    config.setdefault("tone_mode", "both")  # with its weight 0 when absent: no effect
    config.update({"_target_": LOSS_TARGET, "style_image": str(painting),
                   "style_size": style_size if style_size is not None else spec.get("style_size")})
    missing = [name for name, p in accepted.items() if name not in config and p.default is inspect.Parameter.empty]
    if missing:
        raise FstError(f"{model}: metadata 'loss' lacks {', '.join(missing)}")
    return instantiate(config)


def check_painting(painting: Path) -> None:
    if not painting.is_file():
        raise FstError(f"{painting}: no such file")
    image = open_rgb(painting)
    if min(image.size) < MIN_STYLE_SIDE:
        raise FstError(f"{painting}: {image.size[0]}x{image.size[1]} px is too small "
                       f"(at least {MIN_STYLE_SIDE} px on the shorter side)")


def photo_batches(photos: Path, crop: int, batch: int, seed: int) -> Any:
    """Endless batches of random crops of the photos under ``photos`` (fst.data.folder)."""
    from fst.data.folder import FolderDataModule

    data = FolderDataModule(root=str(photos), val_root=str(VAL_PHOTOS_DIR), image_size=crop, batch_size=batch,
                            num_workers=0, val_count=1, val_size=crop, seed=seed, pin_memory=False)
    data.setup("fit")
    epoch = 0
    while True:
        loader = data.train_dataloader()
        loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def add_style(
    model: str | Path, painting: str | Path, name: str, out: str | Path | None = None, *,
    steps: int = DEFAULT_STEPS, lr: float = DEFAULT_LR, warmup_steps: int = DEFAULT_WARMUP,
    batch_size: int = DEFAULT_BATCH, crop: int = DEFAULT_CROP, style_size: int | None = DEFAULT_STYLE_SIZE,
    photos: str | Path = TRAIN_PHOTOS_DIR, seed: int = 0, overwrite: bool = False, progress: bool = True,
) -> Path:
    """Train the style of ``painting`` into a copy of the multi-style ``model``, called ``name``;
    returns the written model file (see the module docstring)."""
    from fst.infer.backends import resolve_model

    started = time.perf_counter()
    path = resolve_model(model)
    painting = Path(painting).expanduser()
    net, meta = load(path)
    styles = [str(s) for s in meta.get("styles") or []]
    if not net.config.num_styles or len(styles) != net.config.num_styles:
        raise FstError(f"{path}: not a multi-style model (its metadata lists no styles for its "
                       f"{net.config.num_styles} rows); styles are added to models trained with model=multistyle")
    if not name or any(c in name for c in ",:/\\") or name != name.strip():
        raise UsageError(f"--name {name!r}: a style name has no commas, colons, slashes or outer spaces")
    if name in styles:
        raise UsageError(f"--name {name}: {path.name} already has a style called {name} (its styles: {', '.join(styles)})")
    if steps < 1 or batch_size < 1 or crop < 16 or not lr > 0:
        raise UsageError("--steps and --batch must be >= 1, --crop >= 16, --lr > 0")
    out = Path(out) if out else Path(f"{path.name.split('.')[0]}+{name}.safetensors")
    if out.exists() and not overwrite:
        raise FstError(f"{out}: already exists (--overwrite replaces it)")
    check_painting(painting)
    photos = Path(photos).expanduser()

    loss = build_loss(path, meta, painting, style_size).eval()
    bigger, rows = with_new_style(net)
    weights = one_hot(net.config.num_styles, net.config.num_styles + 1)
    optimizer = torch.optim.Adam(rows, lr=lr)
    scheduler = warmup_cosine(optimizer, steps, 0.1, warmup_steps)
    torch.manual_seed(seed)
    batches = photo_batches(photos, crop, batch_size, seed)
    report_every = max(1, steps // 10)
    for step in range(1, steps + 1):
        batch = next(batches)
        terms = loss(bigger(batch, weights), batch, net=lambda x: bigger(x, weights))
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        optimizer.step()
        scheduler.step()
        total = float(terms["total"].detach())
        if not math.isfinite(total):
            raise FstError(f"the loss became {total} at step {step}; nothing written (try a lower --lr)")
        if progress and (step % report_every == 0 or step == 1):
            elapsed = time.perf_counter() - started
            print(f"step {step}/{steps}: loss {total:.4g} ({elapsed / 60:.1f} min)", file=sys.stderr, flush=True)

    fold_rows(bigger)
    check_unchanged(net, bigger)
    minutes = round((time.perf_counter() - started) / 60, 1)
    new_meta = without_header(meta)
    new_meta["styles"] = [*styles, name]
    loss_config = dict(new_meta.get("loss") or {})
    loss_config["style_images"] = {**(loss_config.get("style_images") or {}), name: str(painting)}
    new_meta["loss"] = loss_config
    new_meta["style_sha256s"] = {**(new_meta.get("style_sha256s") or {}), name: file_sha256(painting)}
    new_meta["added_styles"] = [*(new_meta.get("added_styles") or []), {
        "name": name, "base_model": path.name, "steps": steps, "batch_size": batch_size, "crop": crop,
        "style_size": style_size, "lr": lr, "warmup_steps": warmup_steps, "photos": _portable(photos),
        "trained": "the new (gamma, beta) row only", "wall_minutes": minutes,
        "machine": f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, "
                   f"{torch.get_num_threads()} torch threads",
    }]
    if out.exists() and not overwrite:
        raise FstError(f"{out}: appeared while training (--overwrite replaces it)")
    return save_model(bigger, out, new_meta)


def _portable(path: Path) -> str:
    """A path as its last two parts (the model file is shared; this machine's folders are not)."""
    return "/".join(path.resolve().parts[-2:])


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="fst add-style", description=__doc__.splitlines()[0],
                            epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a multi-style model file or name (e.g. gallery)")
    parser.add_argument("painting", type=Path, help="the new style's painting")
    parser.add_argument("--name", required=True, help="the new style's name")
    parser.add_argument("-o", "--output", type=Path, help="file to write (default: ./<model>+<name>.safetensors)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="training steps (default %(default)s)")
    parser.add_argument("--lr", type=float, default=DEFAULT_LR, help="Adam learning rate (default %(default)s)")
    parser.add_argument("--warmup-steps", type=int, default=DEFAULT_WARMUP, help="default %(default)s")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="photos per step (default %(default)s)")
    parser.add_argument("--crop", type=int, default=DEFAULT_CROP, help="photo crop side in px (default %(default)s)")
    parser.add_argument("--style-size", type=int, default=DEFAULT_STYLE_SIZE,
                        help="painting's longer side for its Gram targets (default %(default)s, twice the crop)")
    parser.add_argument("--photos", type=Path, default=TRAIN_PHOTOS_DIR,
                        help="folder of training photos (default: the bundled ones)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    written = add_style(args.model, args.painting, args.name, args.output, steps=args.steps, lr=args.lr,
                        warmup_steps=args.warmup_steps, batch_size=args.batch, crop=args.crop,
                        style_size=args.style_size, photos=args.photos, seed=args.seed, overwrite=args.overwrite,
                        progress=not args.quiet)
    print(written)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
