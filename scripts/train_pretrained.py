"""Train the bundled styles with one recipe and ship them as the package's bundled models.

    python scripts/train_pretrained.py [--experiment quick] [--styles ...] [--overwrite] [overrides...]

Each style trains with ``python -m fst.train style=<style> experiment=<experiment>`` into
outputs/pretrained/<style>/<time>; its model.safetensors (which records the schedule that made
it) is copied to fst/checkpoints/<style>.safetensors, never over an existing file unless
--overwrite, and one JSON line per style gives the wall time for the README.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from fst.errors import ArgumentParser, FstError, run_command
from fst.nets.model_file import read_metadata
from fst.resources import BUNDLED_MODELS_DIR, STYLES_DIR

CHECKOUT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="scripts/train_pretrained.py", description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="quick")
    parser.add_argument("--styles", nargs="+", default=sorted(p.stem for p in STYLES_DIR.glob("*.jpg")))
    parser.add_argument("--out", type=Path, default=CHECKOUT / "outputs" / "pretrained")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every style")
    args = parser.parse_args(argv)
    failed = []
    for style in args.styles:
        # A fresh folder each time: a finished run in the same folder would only be resumed.
        run_dir = args.out / style / time.strftime("%Y-%m-%d_%H-%M-%S")
        target = BUNDLED_MODELS_DIR / f"{style}.safetensors"
        if target.exists() and not args.overwrite:
            print(f"{style}: {target} exists (--overwrite replaces it)", flush=True)
            continue
        cmd = [sys.executable, "-m", "fst.train", f"style={style}", f"experiment={args.experiment}",
               f"hydra.run.dir={run_dir}", *args.overrides]
        print("$", " ".join(cmd), flush=True)
        started = time.perf_counter()
        if subprocess.call(cmd) != 0:
            print(f"error: {style}: training failed (see above)", file=sys.stderr, flush=True)
            failed.append(style)
            continue
        minutes = (time.perf_counter() - started) / 60
        shutil.copyfile(run_dir / "model.safetensors", target)
        training = read_metadata(target).get("training", {})
        print(json.dumps({"style": style, "model": str(target.relative_to(CHECKOUT)), "wall_minutes": round(minutes, 1),
                          **{k: training.get(k) for k in ("steps", "batch_size", "crop", "photos", "machine")}}),
              flush=True)
    if failed:
        raise FstError(f"training failed for {', '.join(failed)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
