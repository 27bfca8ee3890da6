"""Print each style layer's share of the style gradient, raw Gram MSE vs fst's normalised,
weighted loss, for every bundled style over the held-out photos.

    python scripts/style_layer_balance.py [--size 128] [--weights caffe]
"""

from __future__ import annotations

import argparse

import torch
from torchvision.transforms import v2

from fst.resources import ASSETS_DIR, BUNDLED_MODELS_DIR
from fst.research.diagnostics import style_gradient_shares
from fst.images import list_images, open_rgb, pil_to_tensor, resize_short_side
from fst.loss.perceptual import PerceptualLoss
from fst.loss.weights import load_vgg16_weights

ROOT_DIR = Path(__file__).resolve().parents[1]  # the checkout (scripts/, cwd of subprocesses)

LAYERS = {"relu1_2": 1.0, "relu2_2": 1.0, "relu3_3": 0.3, "relu4_3": 0.03}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--weights", default="caffe")
    args = parser.parse_args()
    weights = load_vgg16_weights(args.weights)
    crop = v2.CenterCrop(args.size)
    photos = [crop(pil_to_tensor(resize_short_side(open_rgb(p), args.size))) for p in list_images(ASSETS_DIR / "photos/val")]
    batch = torch.stack(photos)
    print(f"| style | loss | {' | '.join(LAYERS)} |")
    print("|---|---|" + "---|" * len(LAYERS))
    for style in sorted(p.stem for p in (ASSETS_DIR / "styles").glob("*.jpg")):
        loss = PerceptualLoss(ASSETS_DIR / f"styles/{style}.jpg", 512, style_layers=LAYERS, vgg_weights=weights)
        for label, normalised in (("raw Gram MSE", False), ("fst (relative, weighted)", True)):
            shares = style_gradient_shares(loss, batch, normalised=normalised)
            print(f"| {style} | {label} | " + " | ".join(f"{100 * shares[l]:.1f}%" for l in LAYERS) + " |")


if __name__ == "__main__":
    main()
