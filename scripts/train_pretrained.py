"""Train the shipped styles and put their model files in checkpoints/.

    python scripts/train_pretrained.py [--experiment pretrained_cpu|pretrained_gpu] [--styles ...] [overrides...]

Each style trains with `python -m fst.train style=<style> experiment=<experiment>` into
outputs/pretrained/<style>; its model.safetensors is copied to checkpoints/<style>.safetensors
(never over an existing file unless --overwrite) and a line per style is printed for the
README table (steps, wall time, final losses).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STYLES = ["starry_night", "the_wave", "the_scream", "composition_vii", "udnie"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="pretrained_cpu")
    parser.add_argument("--styles", nargs="+", default=STYLES)
    parser.add_argument("--out", default=str(ROOT / "outputs/pretrained"))
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    failed = 0
    for style in args.styles:
        run_dir = Path(args.out) / style
        target = ROOT / "checkpoints" / f"{style}.safetensors"
        if target.exists() and not args.overwrite:
            print(f"{style}: {target} exists (use --overwrite)")
            continue
        cmd = [sys.executable, "-m", "fst.train", f"style={style}", f"experiment={args.experiment}",
               f"hydra.run.dir={run_dir}", *args.overrides]
        print("$", " ".join(cmd), flush=True)
        started = time.perf_counter()
        if subprocess.call(cmd, cwd=ROOT) != 0:
            print(f"error: {style} failed", file=sys.stderr)
            failed += 1
            continue
        minutes = (time.perf_counter() - started) / 60
        shutil.copyfile(run_dir / "model.safetensors", target)
        meta = _metadata(target)
        print(json.dumps({"style": style, "model": str(target), "minutes": round(minutes, 1), "steps": meta.get("steps")}))
    return 1 if failed else 0


def _metadata(path: Path) -> dict:
    from fst.nets.model_file import read_metadata

    return read_metadata(path)


if __name__ == "__main__":
    sys.exit(main())
