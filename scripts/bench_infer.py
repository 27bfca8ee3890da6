"""Inference latency and peak memory vs resolution, through the same Stylizer as fst-infer.

    python scripts/bench_infer.py [--model PATH|NAME] [--device cpu|cuda] [--repeat N]

Each configuration runs in a fresh subprocess, so peak memory is that configuration's own:
on CPU the peak resident set size (and its rise over the idle process with the model
loaded), on CUDA ``torch.cuda.max_memory_allocated``. Latency is the median of
``--repeat`` timed runs after one warm-up run (which pays for kernel selection), from
a [0, 1] tensor already in memory to the stylized tensor back on the host; image
decoding and encoding are not included. Without --model, a randomly initialised
width-32 Johnson network is used: speed depends on the architecture, not the weights.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fst.errors import ArgumentParser, run_command

# (label, height, width, tile): tile None = one pass; "auto" = what fst-infer does by default.
CONFIGS = [
    ("512x512", 512, 512, None),
    ("1024x1024", 1024, 1024, None),
    ("1080p", 1080, 1920, None),
    ("4K tiled", 2160, 3840, 1024),
]


def _rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(model: str, device: str, precision: str, height: int, width: int, tile, repeat: int, threads: int) -> dict:
    """Measure one configuration in this process (called in a child)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from fst.infer.stylizer import Stylizer

    stylizer = Stylizer.load(model, device=device, precision=precision)
    cuda = stylizer.device.type == "cuda"
    stylizer(torch.rand(1, 3, 64, 64), tile=None)  # load kernels before the idle baseline
    idle_rss = _rss_mb()
    image = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    options = dict(tile=tile if tile else None)

    def once() -> float:
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        stylizer(image, **options)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    once()  # warm-up
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = [once() for _ in range(repeat)]
    result = {
        "latency_s": statistics.median(times),
        "latency_min_s": min(times),
        "peak_rss_mb": _rss_mb(),
        "rss_rise_mb": _rss_mb() - idle_rss,
        "dtype": str(stylizer.backend.dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
    }
    if cuda:
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["gpu"] = torch.cuda.get_device_name()
    return result


def _default_model(folder: Path) -> str:
    import torch

    from fst.nets.model_file import save_model
    from fst.nets.transformer import TransformerNet

    torch.manual_seed(0)
    return str(save_model(TransformerNet(width=32), folder / "bench_w32.safetensors", {"style_name": "random"}))


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model name or file (default: random width-32 net)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per configuration (median reported)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--only", nargs="*", help="labels of CONFIGS to run (default: all)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        height, width, tile = json.loads(args.child)
        print(json.dumps(run_one(args.model, args.device, args.precision, height, width, tile, args.repeat,
                                 args.threads)))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or _default_model(Path(tmp))
        load = os.getloadavg()
        print(f"# {platform.node()}: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
              f"load average {load[0]:.1f}; device {args.device}, model {args.model or 'random width-32'}")
        print("| input | tiling | device | dtype | threads | latency (median) | peak memory |")
        print("|---|---|---|---|---|---|---|")
        rows = []
        for label, height, width, tile in CONFIGS:
            if args.only and label not in args.only:
                continue
            cmd = [sys.executable, __file__, "--model", model, "--device", args.device, "--precision",
                   args.precision, "--repeat", str(args.repeat), "--threads", str(args.threads),
                   "--child", json.dumps([height, width, tile])]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"| {label} | failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr else proc.returncode} |")
                continue
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            result.update(label=label, height=height, width=width, tile=tile)
            rows.append(result)
            memory = (f"{result['peak_cuda_mb']:.0f} MiB CUDA" if "peak_cuda_mb" in result
                      else f"{result['peak_rss_mb']:.0f} MiB RSS (+{result['rss_rise_mb']:.0f})")
            tiling = f"{tile} px tiles, 128 overlap" if tile else "one pass"
            print(f"| {label} ({width}x{height}) | {tiling} | {args.device} | {result['dtype']} | "
                  f"{result['threads']} | {result['latency_s']:.2f} s | {memory} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
