"""Print each style layer's share of the style gradient, raw Gram MSE vs fst's normalised,
weighted loss, for every bundled style over the held-out photos.

    python scripts/style_layer_balance.py [--size 128] [--weights caffe] [Hydra overrides ...]

The loss of each style is fst/configs/loss (as training builds it), e.g.
``loss.style_layers.relu4_3=0.1`` to try another weight.
"""

from __future__ import annotations

import sys

import torch
from hydra import compose, initialize_config_dir
from torchvision.transforms import v2

from fst.errors import ArgumentParser, run_command
from fst.images import list_images, open_rgb, pil_to_tensor, resize_short_side
from fst.research.diagnostics import style_gradient_shares
from fst.resources import CONFIG_DIR, STYLES_DIR, VAL_PHOTOS_DIR
from fst.train.config import instantiate, register_resolvers


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--weights", default="caffe", help="loss.vgg_weights")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the training config")
    args = parser.parse_args(argv)
    crop = v2.CenterCrop(args.size)
    photos = [crop(pil_to_tensor(resize_short_side(open_rgb(p), args.size))) for p in list_images(VAL_PHOTOS_DIR)]
    batch = torch.stack(photos)
    register_resolvers()
    styles = sorted(p.stem for p in STYLES_DIR.glob("*.jpg"))
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        configs = {style: compose("train", [f"style={style}", f"loss.vgg_weights={args.weights}", *args.overrides])
                   for style in styles}
    layers = list(next(iter(configs.values())).loss.style_layers)
    print(f"| style | loss | {' | '.join(layers)} |")
    print("|---|---|" + "---|" * len(layers))
    for style, cfg in configs.items():
        loss = instantiate(cfg.loss)
        for label, normalised in (("raw Gram MSE", False), ("fst (relative, weighted)", True)):
            shares = style_gradient_shares(loss, batch, normalised=normalised)
            print(f"| {style} | {label} | " + " | ".join(f"{100 * shares[l]:.1f}%" for l in layers) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
