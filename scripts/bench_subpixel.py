"""The decoder's upsampling layers in ONNX Runtime, three exact ways, side by side.

    python scripts/bench_subpixel.py [--size 1024] [--threads 2] [--rounds 7]

For the two upsampling stages of Johnson's network (width 32) on a SIZE x SIZE photo (128 -> 64
channels from SIZE/4 to SIZE/2, then 64 -> 32 to SIZE), each computed as:

* resize-conv: nearest x2 upsampling, reflection pad, 3x3 convolution (the trained layer as is);
* transposed: one stride-2 transposed convolution with the folded 4x4 kernel per axis
  ``[w2, w1+w2, w0+w1, w0]`` on the edge-padded map (fst's inference graphs before graph format 2);
* phases: fst.nets.subpixel.SubPixelConv, a 2x2 convolution to four phases, pixel shuffle and a
  one-pixel crop on the edge-padded map (fst's inference graphs since).

Each is exported to ONNX and run with fst's session options (fst.infer.onnx_cache), taking
turns, ``--rounds`` times; printed: best (median) ms per layer and form, ratio to resize-conv,
largest |difference| from the eager resize-conv layer. Then the whole network of ``--model``
(default: the bundled starry_night) as fst's inference graph for sides that are multiples of 4,
with its two decoder stages as transposed convolutions and as phases, on the SIZE x SIZE photo,
taking turns in the same way.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fst.infer.onnx_cache import session_options
from fst.nets.subpixel import SubPixelConv

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_infer import machine_line  # noqa: E402 - a sibling script


class ResizeConv(nn.Module):
    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(F.pad(up, (1, 1, 1, 1), mode="reflect"))


def transposed_taps(kernel: torch.Tensor, dim: int) -> torch.Tensor:
    """3 taps (w0, w1, w2) along ``dim`` -> the 4 taps of the equivalent stride-2 transposed convolution."""
    w0, w1, w2 = kernel.unbind(dim)
    return torch.stack([w2, w1 + w2, w0 + w1, w0], dim)


class Transposed(nn.Module):
    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        kernel = transposed_taps(transposed_taps(conv.weight.detach(), 2), 3)
        self.conv = nn.ConvTranspose2d(conv.in_channels, conv.out_channels, 4, stride=2, padding=3)
        with torch.no_grad():
            self.conv.weight.copy_(kernel.transpose(0, 1))
            self.conv.bias.copy_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (1, 1, 1, 1), mode="replicate"))


class PaddedTransposed(Transposed):
    """The transposed form for a :class:`~fst.nets.subpixel.SubPixelUpsample`, which pads first."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Phases(nn.Module):
    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = SubPixelConv(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (1, 1, 1, 1), mode="replicate"))


FORMS = {"resize-conv": ResizeConv, "transposed": Transposed, "phases": Phases}


def session(module: nn.Module, example: torch.Tensor, threads: int):  # noqa: ANN201 - onnxruntime type
    import onnxruntime as ort

    buffer = io.BytesIO()
    torch.onnx.export(module, (example,), buffer, opset_version=17, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {2: "h", 3: "w"}}, dynamo=False)
    return ort.InferenceSession(buffer.getvalue(), session_options(threads), providers=["CPUExecutionProvider"])


def alternate(sessions: dict, feed: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds per run of each session, taking turns."""
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, s in sessions.items():
            start = time.perf_counter()
            s.run(None, feed)
            times[name].append(time.perf_counter() - start)
    return times


def whole_network(model: str, size: int, threads: int, rounds: int) -> None:
    from fst.infer.backends import resolve_model
    from fst.nets import load
    from fst.nets.subpixel import rewrite_for_inference

    net, _ = load(resolve_model(model))
    phases = rewrite_for_inference(net.float().eval(), edges="never")
    transposed = rewrite_for_inference(net.float().eval(), edges="never")
    for name in ("up1", "up2"):
        getattr(transposed, name).conv = PaddedTransposed(getattr(net, name).conv)
    x = torch.rand(1, 3, size, size)
    sessions = {"transposed": session(transposed, x, threads), "phases": session(phases, x, threads)}
    feed = {"x": x.numpy()}
    outputs = {name: s.run(None, feed)[0] for name, s in sessions.items()}
    times = alternate(sessions, feed, rounds)
    best = {name: min(t) for name, t in times.items()}
    print(f"\nwhole network ({model}), {size}x{size}: " + ", ".join(
        f"{name} {best[name]:.3f} s ({float(np.median(times[name])):.3f})" for name in sessions)
        + f"; phases / transposed {best['phases'] / best['transposed']:.2f}x; "
        f"max |difference| {float(np.abs(outputs['phases'] - outputs['transposed']).max()):.1e}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="side of the square photo (multiple of 4)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--model", default="starry_night", help="model name or file for the whole-network timing")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    warnings.filterwarnings("ignore")  # the TorchScript exporter's deprecation notes
    print(f"# {machine_line(args.threads)}; photo {args.size}x{args.size}")
    print("| layer | form | best (median) ms | x resize-conv | max abs diff |")
    print("|---|---|---:|---:|---:|")
    for c_in, c_out, side in ((128, 64, args.size // 4), (64, 32, args.size // 2)):
        conv = nn.Conv2d(c_in, c_out, 3)
        x = torch.randn(1, c_in, side, side)
        with torch.no_grad():
            expected = ResizeConv(conv)(x).numpy()
        sessions = {name: session(form(conv).eval(), x, args.threads) for name, form in FORMS.items()}
        feed = {"x": x.numpy()}
        diffs = {name: float(np.abs(s.run(None, feed)[0] - expected).max()) for name, s in sessions.items()}
        times = alternate(sessions, feed, args.rounds)
        base = min(times["resize-conv"])
        for name in sessions:
            best, median = min(times[name]), float(np.median(times[name]))
            print(f"| {c_in}->{c_out}, {side}->{2 * side} | {name} | {best * 1e3:.1f} ({median * 1e3:.1f}) | "
                  f"{best / base:.2f}x | {diffs[name]:.1e} |")
    whole_network(args.model, args.size, args.threads, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
