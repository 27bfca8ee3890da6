"""Where a training step's time goes: phase breakdown and top operators (for bench_train --profile).

Phases come from forward hooks on the networks plus a gradient hook on the transformer
net's output (it fires when the loss-network backward has delivered the gradient to the
image, so what follows is the net's own backward). Each mark synchronises the device
first, which serialises a CUDA step a little; on the CPU, where autograd runs the
backward synchronously, the marks cost nothing. Hooks are only placed on eager modules:
for a compiled step only the operator table is given.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

import torch
from torch import nn

FST_PHASES = {
    ("start", "net>"): "step entry, layout",
    ("net>", "net<"): "transformer net forward",
    ("net<", "vgg>"): "loss entry",
    ("vgg>", "vgg<"): "VGG16 forward on output, to relu4_3",
    ("vgg<", "content_vgg>"): "between VGG passes",
    ("content_vgg>", "content_vgg<"): "VGG16 forward on photo, to relu2_2 (no grad)",
    ("content_vgg<", "forward<"): "loss terms forward (Gram, MSE, TV), logging",
    ("forward<", "backward>"): "zero_grad",
    ("backward>", "image grad"): "backward: loss terms, Gram, VGG16",
    ("image grad", "backward<"): "backward: transformer net",
    ("backward<", "end"): "Adam step",
}
BASELINE_PHASES = {
    ("start", "net>"): "step entry, zero_grad",
    ("net>", "net<"): "transformer net forward",
    ("net<", "vgg1>"): "normalise output and photo",
    ("vgg1>", "vgg1<"): "VGG16 forward on output, to relu4_3",
    ("vgg1<", "vgg2>"): "between VGG passes",
    ("vgg2>", "vgg2<"): "VGG16 forward on photo, to relu4_3",
    ("vgg2<", "forward<"): "loss terms forward (Gram, MSE)",
    ("forward<", "backward>"): "-",
    ("backward>", "image grad"): "backward: loss terms, Gram, VGG16",
    ("image grad", "backward<"): "Adam step, .item() x2, and backward: transformer net",
    ("backward<", "end"): "-",
}


class PhaseClock:
    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.marks: list[tuple[str, float]] = []
        self.calls: dict[str, int] = defaultdict(int)

    def mark(self, name: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.marks.append((name, time.perf_counter()))

    def watch(self, module: nn.Module, label: str, numbered: bool = False, image_grad: bool = False) -> list:
        """Marks ``label>`` / ``label<`` around ``module``'s forward (``label1>``... when ``numbered``)."""
        def name() -> str:
            return f"{label}{self.calls[label]}" if numbered else label

        def before(mod: nn.Module, inputs: tuple) -> None:
            self.calls[label] += 1
            self.mark(name() + ">")

        def after(mod: nn.Module, inputs: tuple, output: object) -> None:
            self.mark(name() + "<")
            if image_grad and isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(lambda grad: self.mark("image grad"))

        return [module.register_forward_pre_hook(before), module.register_forward_hook(after)]


def _phases(clock: PhaseClock, names: dict[tuple[str, str], str], steps: int) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for (a, ta), (b, tb) in zip(clock.marks, clock.marks[1:]):
        if a == "end":
            continue
        totals[names.get((a, b), f"{a} -> {b}")] += (tb - ta) / steps
    return dict(totals)


def _top_ops(run: Callable[[], object], device: torch.device, steps: int, rows: int = 10) -> tuple[list, float]:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def self_time(e) -> float:  # microseconds, on the device that does the work
        if device.type == "cuda":
            return getattr(e, "self_device_time_total", 0) or getattr(e, "self_cuda_time_total", 0)
        return e.self_cpu_time_total

    events = [e for e in prof.key_averages() if self_time(e) > 0]
    total = sum(self_time(e) for e in events) or 1.0
    events.sort(key=self_time, reverse=True)
    top = [(e.key, self_time(e) / 1e6 / steps, self_time(e) / total) for e in events[:rows]]
    bmm_share = sum(self_time(e) for e in events if e.key == "aten::bmm") / total
    return top, bmm_share


def _render(title: str, phases: dict[str, float], top: list, bmm_share: float) -> str:
    lines = [title]
    step = sum(phases.values())
    for label, seconds in phases.items():
        if label != "-":
            lines.append(f"    {label:<56} {seconds * 1e3:9.1f} ms {100 * seconds / step:5.1f}%")
    if phases:
        lines.append(f"    {'whole step (with marks)':<56} {step * 1e3:9.1f} ms")
    lines.append(f"  top operators by self time (aten::bmm, i.e. Gram fwd+bwd: {100 * bmm_share:.1f}%):")
    for key, seconds, share in top:
        lines.append(f"    {key:<56} {seconds * 1e3:9.1f} ms {100 * share:5.1f}%")
    return "\n".join(lines)


def profile_fst(fst, photos: torch.Tensor, steps: int) -> dict:
    """Phase breakdown (eager only) and top operators of ``FstStep``."""
    clock = PhaseClock(photos.device)
    module, loss = fst.module, fst.module.loss
    handles = []
    if not fst.compiled:
        handles += clock.watch(module.net, "net", image_grad=True)
        handles += clock.watch(loss.vgg, "vgg")
        handles += clock.watch(loss.content_vgg, "content_vgg")

    def marked_step() -> None:
        clock.mark("start")
        with fst.autocast():
            total = module.training_step(photos, 0)
        clock.mark("forward<")
        fst.optimizer.zero_grad(set_to_none=True)
        clock.mark("backward>")
        scaled = total if fst.scaler is None else fst.scaler.scale(total)
        scaled.backward()
        clock.mark("backward<")
        if fst.scaler is None:
            fst.optimizer.step()
        else:
            fst.scaler.step(fst.optimizer)
            fst.scaler.update()
        clock.mark("end")

    try:
        for _ in range(steps):
            marked_step()
    finally:
        for h in handles:
            h.remove()
    phases = _phases(clock, FST_PHASES, steps) if not fst.compiled else {}
    top, bmm = _top_ops(lambda: fst(photos), photos.device, steps)
    title = f"  fst step{' (compiled: operator table only)' if fst.compiled else ''}, mean of {steps}:"
    return {"phases_s": phases, "top_ops": top, "bmm_share": bmm, "text": _render(title, phases, top, bmm)}


def profile_baseline(baseline, photos_0_255: torch.Tensor, steps: int) -> dict:
    clock = PhaseClock(photos_0_255.device)
    handles = clock.watch(baseline.net, "net", image_grad=True) + clock.watch(baseline.vgg, "vgg", numbered=True)

    def marked_step() -> None:
        clock.calls.clear()
        clock.mark("start")
        content, style = baseline.losses(photos_0_255)
        clock.mark("forward<")
        clock.mark("backward>")
        baseline.update(content, style)
        clock.mark("backward<")
        clock.mark("end")

    try:
        for _ in range(steps):
            marked_step()
    finally:
        for h in handles:
            h.remove()
    phases = _phases(clock, BASELINE_PHASES, steps)
    top, bmm = _top_ops(lambda: baseline.step(photos_0_255), photos_0_255.device, steps)
    title = f"  baseline step, mean of {steps}:"
    return {"phases_s": phases, "top_ops": top, "bmm_share": bmm, "text": _render(title, phases, top, bmm)}
