"""Flicker measures of style models on video clips (``fst quality --video``).

    fst quality --video CLIP... -m MODEL [-m MODEL ...] [--size 384] [--max-frames N]
        [--every 5] [--noise 0.02] [--out DIR]

Every frame of each clip (its long side resized to --size) is stylized on its own, as
`fst stylize` does, and three numbers are reported per clip and model:

  temporal ratio  mean absolute change between consecutive stylized frames over the same
                  for the input frames. 1.0: the output moves no more than the input;
                  above 1 the style adds motion of its own (flicker). Lower is steadier.
  shift error     the output's change when its frame is moved by one pixel, compared on
                  the overlap (after moving the output back): mean absolute difference in
                  8-bit levels. 0 is a perfectly shift-stable network. Flow-free.
  noise error     the output's change when Gaussian noise (std --noise, on [0, 1] pixels)
                  is added to its frame, in 8-bit levels; ``noise gain`` is that over the
                  input's own change (1: noise passes through as it came; above 1 the
                  network amplifies it, the shimmer of video noise and compression).

The shift and noise errors are measured on every --every'th frame, with the perturbations
of the training stability term (fst.loss.perceptual.perturb), from a fixed seed.
--out DIR writes video_quality.md and video_quality.json (with the command and machine).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fst.errors import ArgumentParser, FstError, run_command
from fst.fsutil import atomic_write_text
from fst.infer import Stylizer
from fst.infer.video import iter_frames
from fst.loss.perceptual import STABILITY_NOISE_STD, perturb

DEFAULT_SIZE = 384
DEFAULT_EVERY = 5
LEVELS = 255.0  # errors are reported in 8-bit levels

Net = Callable[[torch.Tensor], torch.Tensor]  # (B, 3, H, W) in [0, 1] -> the same, stylized


def mean_abs_change(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean absolute difference of two images (or batches) in [0, 1]."""
    return float((a.float() - b.float()).abs().mean())


def shift_error(net: Net, frame: torch.Tensor, output: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> float:
    """Mean |net(frame) - net(frame moved 1 px)| on the overlap (output moved back), in [0, 1] units."""
    batch = frame[None] if frame.dim() == 3 else frame
    output = net(batch) if output is None else (output[None] if output.dim() == 3 else output)
    p = perturb(batch, generator, kind="shift")
    a, b = p.align(output, net(p.photos))
    return mean_abs_change(a, b)


def noise_error(net: Net, frame: torch.Tensor, output: torch.Tensor | None = None,
                generator: torch.Generator | None = None, noise_std: float = STABILITY_NOISE_STD) -> tuple[float, float]:
    """(mean |net(frame) - net(frame + noise)|, mean |noise actually added|), both in [0, 1] units."""
    batch = frame[None] if frame.dim() == 3 else frame
    output = net(batch) if output is None else (output[None] if output.dim() == 3 else output)
    p = perturb(batch, generator, kind="noise", noise_std=noise_std)
    return mean_abs_change(output, net(p.photos)), mean_abs_change(batch, p.photos)


@dataclass
class FlickerStats:
    """Running sums over a clip; :meth:`summary` gives the reported measures."""

    frames: int = 0
    pairs: int = 0
    input_change: float = 0.0
    output_change: float = 0.0
    sampled: int = 0
    shift: float = 0.0
    noise: float = 0.0
    noise_input: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def add_pair(self, prev_in: torch.Tensor, frame: torch.Tensor, prev_out: torch.Tensor, out: torch.Tensor) -> None:
        self.pairs += 1
        self.input_change += mean_abs_change(prev_in, frame)
        self.output_change += mean_abs_change(prev_out, out)

    def summary(self) -> dict[str, Any]:
        pairs, sampled = max(self.pairs, 1), max(self.sampled, 1)
        ratio = self.output_change / self.input_change if self.input_change > 0 else float("nan")
        return {
            **self.extra,
            "frames": self.frames,
            "temporal_ratio": ratio if self.pairs else float("nan"),
            "input_change": LEVELS * self.input_change / pairs,
            "output_change": LEVELS * self.output_change / pairs,
            "shift_error": LEVELS * self.shift / sampled if self.sampled else float("nan"),
            "noise_error": LEVELS * self.noise / sampled if self.sampled else float("nan"),
            "noise_gain": self.noise / self.noise_input if self.noise_input > 0 else float("nan"),
            "sampled_frames": self.sampled,
        }


def measure_clip(net: Net, clip: str | Path, size: int | None = DEFAULT_SIZE, max_frames: int | None = None,
                 every: int = DEFAULT_EVERY, noise_std: float = STABILITY_NOISE_STD, seed: int = 0) -> dict[str, Any]:
    """The flicker measures of ``net`` on one clip, streamed frame by frame."""
    generator = torch.Generator().manual_seed(seed)
    stats = FlickerStats()
    prev: tuple[torch.Tensor, torch.Tensor] | None = None
    for index, frame in enumerate(iter_frames(clip, size=size, limit=max_frames)):
        out = net(frame[None])[0].float().cpu()
        if prev is not None:
            stats.add_pair(prev[0], frame, prev[1], out)
        if every and index % every == 0:
            stats.sampled += 1
            stats.shift += shift_error(net, frame, out, generator)
            moved, added = noise_error(net, frame, out, generator, noise_std)
            stats.noise += moved
            stats.noise_input += added
        stats.frames += 1
        prev = (frame, out)
    if stats.frames == 0:
        raise FstError(f"{clip}: no decodable video frames")
    return stats.summary()


def stylizer_net(stylizer: Stylizer) -> Net:
    """The forward pass `fst stylize` runs (no tiling at measuring sizes), on CPU tensors."""
    return lambda batch: stylizer.stylize_batch(batch, tile=None).float().cpu()


COLUMNS = ("model", "clip", "frames", "temporal_ratio", "input_change", "output_change", "shift_error",
           "noise_error", "noise_gain")
TITLES = {"temporal_ratio": "temporal ratio", "input_change": "input change", "output_change": "output change",
          "shift_error": "shift error", "noise_error": "noise error", "noise_gain": "noise gain"}


def _cell(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def table(rows: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(TITLES.get(c, c) for c in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    return "\n".join([head, rule, *("| " + " | ".join(_cell(r[c]) for c in COLUMNS) + " |" for r in rows)])


def markdown(rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    machine = summary["machine"]
    return "\n".join([
        "# Flicker measures",
        "",
        f"`{summary['command']}` on {machine['cpu']} ({machine['device']}, torch {machine['torch']}), "
        f"frames at {summary['size']} px, shift/noise on every {summary['every']}th frame, noise std "
        f"{summary['noise_std']}.",
        "",
        "temporal ratio: consecutive-frame change of the output / of the input (1 = no added motion, "
        "lower is steadier); changes and errors in 8-bit levels; noise gain = output change / noise added.",
        "",
        table(rows),
        "",
    ])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="fst quality --video", description="Flicker measures of style models on clips.")
    parser.add_argument("clips", nargs="+", type=Path, help="video clips")
    parser.add_argument("-m", "--model", action="append", required=True, dest="models",
                        help="a model file or name; repeat to compare models")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help=f"frames' long side (default {DEFAULT_SIZE}; 0 keeps)")
    parser.add_argument("--max-frames", type=int, help="only the first N frames of each clip")
    parser.add_argument("--every", type=int, default=DEFAULT_EVERY,
                        help=f"shift/noise errors on every Nth frame (default {DEFAULT_EVERY}; 0: none)")
    parser.add_argument("--noise", type=float, default=STABILITY_NOISE_STD,
                        help=f"std of the added Gaussian noise on [0, 1] pixels (default {STABILITY_NOISE_STD})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="auto | cpu | cuda | mps (default cpu)")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32")
    parser.add_argument("--out", type=Path, help="write video_quality.md and video_quality.json here")
    args = parser.parse_args(argv)
    if args.every < 0 or (args.max_frames is not None and args.max_frames < 1) or args.size < 0:
        parser.error("--every, --size must be >= 0 and --max-frames >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = []
    stylizer = None
    # Each model by its file's stem, or as given where stems repeat (every run's export is model.safetensors).
    stems = [Path(spec).name.split(".")[0] for spec in args.models]
    labels = {spec: stem if stems.count(stem) == 1 else spec for spec, stem in zip(args.models, stems)}
    for spec in args.models:
        stylizer = Stylizer.load(spec, device=args.device, precision=args.precision)
        net = stylizer_net(stylizer)
        for clip in args.clips:
            started = time.perf_counter()
            with torch.inference_mode():
                row = measure_clip(net, clip, size=args.size or None, max_frames=args.max_frames, every=args.every,
                                   noise_std=args.noise, seed=args.seed)
            rows.append({"model": labels[spec], "clip": clip.name, **row, "wall_s": time.perf_counter() - started})
            print(" ".join(f"{c}={_cell(rows[-1][c])}" for c in COLUMNS), flush=True)
    if args.out:
        assert stylizer is not None
        summary = {"command": "fst quality --video " + " ".join(argv if argv is not None else sys.argv[1:]),
                   "size": args.size, "every": args.every, "noise_std": args.noise, "seed": args.seed,
                   "machine": {"device": str(stylizer.device), "cpu": platform.processor() or platform.machine(),
                               "torch": torch.__version__},
                   "rows": rows}
        atomic_write_text(args.out / "video_quality.json", json.dumps(summary, indent=2) + "\n")
        atomic_write_text(args.out / "video_quality.md", markdown(rows, summary))
        print(f"-> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
