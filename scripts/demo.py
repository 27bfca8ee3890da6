"""The README's first command (`make demo`): train starry_night on the bundled photos with
the CPU preset `experiment=quick`, export the model, stylize two photos that were not in
training, and print where everything is."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from fst.resources import VAL_PHOTOS_DIR

ROOT = Path(__file__).resolve().parents[1]
HELD_OUT = [VAL_PHOTOS_DIR / "skimage" / "chelsea.png", VAL_PHOTOS_DIR / "skimage" / "coffee.png"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "outputs/demo"), help="run directory")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. trainer.max_steps=100")
    args = parser.parse_args()
    out = Path(args.out)

    started = time.perf_counter()
    cmd = [sys.executable, "-m", "fst.train", "experiment=quick", f"hydra.run.dir={out}", *args.overrides]
    print("$", " ".join(cmd), flush=True)
    if subprocess.call(cmd, cwd=ROOT) != 0:
        print("error: demo training failed (see above)", file=sys.stderr)
        return 1
    trained = time.perf_counter() - started

    from fst import stylize

    model = out / "model.safetensors"
    written = []
    for photo in HELD_OUT:
        target = out / f"{photo.stem}_starry_night.jpg"
        stylize(model, photo).save(target, quality=92)
        written.append(target)
    print(f"\ntrained in {trained / 60:.1f} min")
    print(f"model:    {model}")
    for path in written:
        print(f"stylized: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
