"""Peak memory of stylizing a clip against its length: video is streamed, so a clip 10x longer
should peak within a few percent of the short one.

    python scripts/bench_video.py [--model starry_night] [--frames 40 400] [--size 320x240]

Generates one clip per length (a moving pattern at 25 fps with an AAC tone, made with
PyAV), then stylizes each in a fresh process (`Stylizer.stylize_video`, CPU, fp32) and
reports that process's peak resident memory (ru_maxrss), the wall time and frames/s,
and the long clip's peak relative to the short one's. Results go to stdout as a
Markdown table (docs/video.md quotes one).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

FPS = 25


def make_clip(path: Path, frames: int, width: int, height: int) -> Path:
    with av.open(str(path), mode="w") as out:
        vs = out.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        aus = out.add_stream("aac", rate=44100, layout="stereo")
        y, x = np.mgrid[0:height, 0:width]
        for i in range(frames):
            rgb = np.stack([(x + 3 * i) % 256, (y + 2 * i) % 256, (x + y + i) % 256], -1).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
        samples = int(44100 * frames / FPS)
        t = np.arange(samples) / 44100
        tone = np.stack([0.2 * np.sin(2 * np.pi * 440 * t)] * 2).astype(np.float32)
        for start in range(0, samples, 1024):
            chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, start:start + 1024]), format="fltp",
                                               layout="stereo")
            chunk.sample_rate, chunk.pts = 44100, start
            out.mux(aus.encode(chunk))
        out.mux(aus.encode(None))
    return path


def child(model: str, clip: str, dest: str, batch: int) -> None:
    """Runs in its own process: stylize one clip, print a JSON line with its peak RSS."""
    from fst.infer.stylizer import Stylizer

    stylizer = Stylizer.load(model, device="cpu", precision="fp32")
    started = time.perf_counter()
    result = stylizer.stylize_video(clip, dest, batch_size=batch, overwrite=True)
    wall = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"frames": result.frames, "wall_s": wall, "peak_mib": peak_kib / 1024}))


def machine() -> str:
    """CPU model and core count (from /proc/cpuinfo where there is one)."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="starry_night")
    parser.add_argument("--frames", type=int, nargs="+", default=[40, 400])
    parser.add_argument("--size", default="320x240", help="WIDTHxHEIGHT of the generated clips")
    parser.add_argument("--batch", type=int, default=4, help="frames per forward pass")
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "CLIP", "DEST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, batch=args.batch)
        return 0
    width, height = (int(v) for v in args.size.lower().split("x"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for frames in args.frames:
            clip = make_clip(Path(tmp) / f"clip{frames}.mp4", frames, width, height)
            done = subprocess.run([sys.executable, __file__, "--batch", str(args.batch), "--child", args.model,
                                   str(clip), str(Path(tmp) / f"out{frames}.mp4")],
                                  check=True, capture_output=True, text=True)
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{frames} frames: peak {row['peak_mib']:.0f} MiB, {row['wall_s']:.1f} s", file=sys.stderr, flush=True)
    base = rows[0]["peak_mib"]
    print(f"`python scripts/bench_video.py --model {args.model} --frames {' '.join(map(str, args.frames))} "
          f"--size {args.size} --batch {args.batch}` on {machine()}, "
          f"torch {torch.__version__}, PyAV {av.__version__}, {torch.get_num_threads()} torch threads\n")
    print("| frames | seconds of video | peak RSS MiB | vs shortest | wall s | frames/s |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['frames']} | {row['frames'] / FPS:.1f} | {row['peak_mib']:.0f} | "
              f"{100 * (row['peak_mib'] / base - 1):+.1f}% | {row['wall_s']:.1f} | {row['frames'] / row['wall_s']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
