"""Reference photo loop: stylizing a folder the way pytorch/examples ``fast_neural_style`` does.

    python scripts/baseline_stylize_folder.py --model M.pth --size 1024 -o OUT PHOTO...

The yardstick ``scripts/bench_infer.py`` times ``fst-infer`` against, as whole processes.
Written from the example's ``stylize`` function, not copied: the model (its
TransformerNet, ``scripts/baseline_fast_neural_style.py``) is loaded once from a state dict,
then for each photo in turn, in one thread of control: open it with PIL, convert to RGB,
resize (here: the long side to ``--size``, Lanczos), ``ToTensor`` and ``* 255``, run the
network in eager PyTorch under ``torch.no_grad()``, clamp to 0-255, convert to uint8 and
save with PIL (JPEG, Pillow's default quality). With ``--model random`` the network keeps
its seeded random initialisation: the time does not depend on the weights.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from baseline_fast_neural_style import ExampleTransformerNet  # noqa: E402


def load_image(path: Path, size: int | None) -> Image.Image:
    img = Image.open(path).convert("RGB")
    if size:
        scale = size / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)
    return img


def save_image(path: Path, data: torch.Tensor) -> None:
    img = data.clone().clamp(0, 255).numpy().transpose(1, 2, 0).astype("uint8")
    Image.fromarray(img).save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", nargs="+", type=Path)
    parser.add_argument("--model", default="random", help="a state dict of ExampleTransformerNet, or 'random'")
    parser.add_argument("--size", type=int, help="long side in pixels")
    parser.add_argument("-o", "--output-dir", type=Path, required=True)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = ExampleTransformerNet()
    if args.model != "random":
        model.load_state_dict(torch.load(args.model, weights_only=True))
    model.eval()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for photo in args.photos:
        # ToTensor() then * 255: the 0-255 values as float32, channels first.
        content = torch.from_numpy(np.array(load_image(photo, args.size))).permute(2, 0, 1).float()
        with torch.no_grad():
            output = model(content.unsqueeze(0))[0]
        save_image(args.output_dir / f"{photo.stem}.jpg", output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
