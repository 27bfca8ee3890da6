"""Training throughput: fst's training step against the pytorch/examples fast_neural_style step.

    python scripts/bench_train.py --device cpu
    python scripts/bench_train.py --device cuda --size 256 512 --batch 32 --compile

Both steps are built in one process on the same photos. After warm-up they run in
alternating timed blocks (fst first in even blocks, the baseline first in odd ones), so
load from other processes, clock changes and thermal drift hit both alike; the ratio is
the figure to quote. fst's step is the trainer's own: ``StyleTransferModule.training_step``
(TransformerNet + PerceptualLoss) under torch.autocast, then Adam from
``configure_optimizers``, with the model/loss/trainer defaults read from fst's Hydra
configs (``fst/configs``, ``fst.resources.CONFIG_DIR``).
The baseline is ``scripts/baseline_fast_neural_style.py``. Data loading is not timed:
each step reuses one batch of real photos already on the device.

``--profile`` adds a phase breakdown of both steps (forward hooks and a gradient hook,
synchronised) and the top operators from torch.profiler.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
for entry in (str(ROOT), str(SCRIPTS)):  # runnable from a bare checkout (e.g. the GPU machine)
    if entry not in sys.path:
        sys.path.insert(0, entry)

from baseline_fast_neural_style import BaselineTrainer  # noqa: E402
from bench_train_profile import profile_baseline, profile_fst  # noqa: E402

import fst.loss.perceptual as fst_losses  # noqa: E402
from fst.errors import ArgumentParser, FstError, run_command  # noqa: E402
from fst.images import open_rgb, pil_to_tensor, resize_short_side  # noqa: E402
from fst.loss.perceptual import PerceptualLoss  # noqa: E402
from fst.loss.weights import CONV_LAYERS, VGGWeights, load_vgg16_weights  # noqa: E402
from fst.nets.transformer import TransformerNet  # noqa: E402
from fst.resources import CONFIG_DIR, TRAIN_PHOTOS_DIR, bundled_style  # noqa: E402
from fst.train.module import StyleTransferModule  # noqa: E402

STYLE_NAME = "starry_night"
STYLE_IMAGE = bundled_style(STYLE_NAME)
PHOTOS = TRAIN_PHOTOS_DIR
TRAINER_PRECISION = {"32-true": "fp32", "32": "fp32", "bf16-mixed": "bf16", "16-mixed": "fp16"}
AUTOCAST_DTYPE = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Conv layers the loss networks read (up to conv4_3 = features index 21): all a subset file needs.
SUBSET_CONVS = [idx for idx, *_ in CONV_LAYERS if idx <= 21]


def config(group: str, name: str) -> dict:
    return yaml.safe_load((CONFIG_DIR / group / f"{name}.yaml").read_text())


def resolve_channels_last(value: bool | str, device: str) -> bool:
    """The model config's ``channels_last`` (``auto`` = on CUDA only) for ``device``."""
    return device == "cuda" if value == "auto" else bool(value)


# ---------------------------------------------------------------- VGG weights
def load_vgg_weights(spec: str) -> VGGWeights:
    """``caffe`` (fst.loss.weights, sha256-checked) or a safetensors file written by --write-vgg-subset."""
    if spec == "caffe":
        return load_vgg16_weights("caffe")
    from safetensors.torch import load_file

    state = load_file(spec)
    missing = [f"{i}.{p}" for i in SUBSET_CONVS for p in ("weight", "bias") if f"{i}.{p}" not in state]
    if missing:
        raise FstError(f"{spec}: missing VGG16 tensors {missing[:3]}; write it with --write-vgg-subset")
    return VGGWeights({k: v.float() for k, v in state.items()}, "caffe", f"subset file {spec}")


def write_vgg_subset(path: Path) -> None:
    """The caffe tensors up to conv4_3 (30 MB instead of 59): small enough to copy to a GPU machine."""
    from safetensors.torch import save_file

    full = load_vgg16_weights("caffe").state_dict
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: full[k] for i in SUBSET_CONVS for k in (f"{i}.weight", f"{i}.bias")}, str(path))
    print(f"wrote {path}")


# ---------------------------------------------------------------- experiments
# Candidate changes to fst's step, measurable here before they go into fst itself.
EXPERIMENTS = {
    "gram_nhwc": "Gram from channels_last features as F^T F over (B, HW, C) views, without a layout copy",
    "fused_adam": "torch.optim.Adam(fused=True) instead of the default (foreach) implementation",
    "conv_out_nhwc": "the net's last conv (32 -> 3 channels, 9x9) in channels_last when the rest runs NCHW",
}


def gram_matrix_nhwc(features: torch.Tensor) -> torch.Tensor:
    """fst.loss.perceptual.gram_matrix, reading channels_last memory in place (same values, fp32)."""
    b, c, h, w = features.shape
    with torch.autocast(device_type=features.device.type, enabled=False):
        f = features.float()
        if f.is_contiguous(memory_format=torch.channels_last):
            flat = f.permute(0, 2, 3, 1).reshape(b, h * w, c)  # a view for channels_last memory
            return torch.bmm(flat.transpose(1, 2), flat) / (c * h * w)
        flat = f.reshape(b, c, h * w)
        return torch.bmm(flat, flat.transpose(1, 2)) / (c * h * w)


def apply_experiments(names: list[str], fst: FstStep) -> None:
    if "gram_nhwc" in names:
        fst_losses.gram_matrix = gram_matrix_nhwc  # StyleTargets looks it up at call time
    if "conv_out_nhwc" in names:
        # oneDNN's NCHW kernels for a 3-channel output are ~2x slower (fwd+bwd) than its NHWC ones.
        conv_out = fst.module.net.conv_out
        conv_out.register_forward_pre_hook(lambda m, a: (a[0].contiguous(memory_format=torch.channels_last),))
        conv_out.register_forward_hook(lambda m, a, out: out.contiguous())
    if "fused_adam" in names:
        fst.optimizer = torch.optim.Adam(fst.module.net.parameters(), lr=fst.lr, fused=True)


# ---------------------------------------------------------------- the two steps
def photo_batch(batch: int, size: int) -> torch.Tensor:
    """``batch`` bundled photos, short side resized to ``size``, centre-cropped: (B, 3, size, size) in [0, 1]."""
    files = sorted(PHOTOS.rglob("*.jpg"))
    crops = []
    for i in range(batch):
        img = resize_short_side(open_rgb(files[i % len(files)]), size)
        t = pil_to_tensor(img)
        top, left = (t.shape[1] - size) // 2, (t.shape[2] - size) // 2
        crops.append(t[:, top:top + size, left:left + size])
    return torch.stack(crops)


class FstStep:
    """One training iteration exactly as Lightning runs StyleTransferModule (automatic optimisation)."""

    def __init__(self, weights: VGGWeights, device: torch.device, precision: str, channels_last: bool,
                 compile_net: bool, compile_loss: bool, style_size: int | None = None) -> None:
        model_cfg, loss_cfg = config("model", "johnson"), config("loss", "caffe")
        net_kwargs = {k: v for k, v in model_cfg["net"].items() if k != "_target_"}
        # fst/configs/loss/caffe.yaml as Hydra instantiates it; the style image and size are
        # interpolated from fst/configs/style there, and the weights come in already loaded.
        loss_kwargs = {k: v for k, v in loss_cfg.items()
                       if k not in ("_target_", "style_image", "style_size", "vgg_weights")}
        loss = PerceptualLoss(style_image=STYLE_IMAGE, style_size=style_size or config("style", STYLE_NAME)["size"],
                              vgg_weights=weights, **loss_kwargs)
        self.lr = float(model_cfg["optimizer"]["lr"])
        self.module = StyleTransferModule(
            TransformerNet(**net_kwargs), loss, optimizer=functools.partial(torch.optim.Adam, lr=self.lr),
            scheduler=None, channels_last=channels_last, compile=compile_net, style_name=STYLE_NAME).to(device)
        self.optimizer = self.module.configure_optimizers()  # no scheduler: plain Adam
        self.device = device
        self.precision = precision
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        self.compiled = compile_net or compile_loss
        self.module.setup("fit")  # where the module compiles its net, as under the Trainer
        if compile_loss:
            # In place (nn.Module.compile) so parameter names stay those of the plain modules.
            loss.vgg.compile()
            loss.content_vgg.compile()
        self.module.train()

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AUTOCAST_DTYPE[self.precision])

    def terms(self, photos: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss terms for ``photos`` with this step's precision and layout (no update)."""
        with self.autocast():
            return self.module.loss(self.module(photos), self.module._layout(photos))

    def __call__(self, photos: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            total = self.module.training_step(photos, 0)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            total.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(total).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return total.detach()

    def drop_compile(self) -> None:
        """Fallback to eager after a failed compile."""
        self.module.__dict__.pop("_compiled_net", None)
        for vgg in (self.module.loss.vgg, self.module.loss.content_vgg):
            vgg._compiled_call_impl = None
        self.compiled = False


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], object], n: int, device: torch.device) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) for ``n`` calls of ``step``."""
    synchronize(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        step()
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - start_cpu


def warm_up(fst: FstStep, photos: torch.Tensor, n: int) -> float:
    """Runs ``n`` fst steps; returns the first one's seconds (compile time when compiling)."""
    first = 0.0
    for i in range(n):
        try:
            seconds = timed(lambda: fst(photos), 1, photos.device)[0]
        except Exception as exc:  # inductor/toolchain failures surface at the first call
            if not fst.compiled:
                raise
            print(f"  torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                  "falling back to eager")
            fst.drop_compile()
            seconds = timed(lambda: fst(photos), 1, photos.device)[0]
        first = seconds if i == 0 else first
    return first


# ---------------------------------------------------------------- one size
def bench_size(args: argparse.Namespace, size: int, weights: VGGWeights, device: torch.device) -> dict:
    torch._dynamo.reset()  # each size compiles afresh, with static shapes
    photos = photo_batch(args.batch, size).to(device)
    fst = FstStep(weights, device, args.precision, args.channels_last, args.compile,
                  args.compile and args.compile_loss, args.style_size)
    apply_experiments(args.experiment, fst)
    style = pil_to_tensor(resize_short_side(open_rgb(STYLE_IMAGE), size)) * 255.0
    baseline = BaselineTrainer(style, args.batch, weights.state_dict, device)
    photos_0_255 = photos * 255.0

    use_benchmark = {"fst": bool(config("trainer", "default").get("benchmark", False)), "baseline": False}
    steps = {"fst": lambda: fst(photos), "baseline": lambda: baseline.step(photos_0_255)}

    def select(name: str) -> None:
        # cudnn autotuning as each side configures it: fst's Trainer sets benchmark=true, the example does not.
        torch.backends.cudnn.benchmark = use_benchmark[name]

    select("fst")
    first = warm_up(fst, photos, args.warmup)
    select("baseline")
    timed(steps["baseline"], args.warmup, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    blocks = max(1, min(args.blocks, args.iters))
    per_block = [args.iters // blocks + (1 if b < args.iters % blocks else 0) for b in range(blocks)]
    seconds: dict[str, list[float]] = {"fst": [], "baseline": []}
    cpu_seconds: dict[str, list[float]] = {"fst": [], "baseline": []}
    for b, n in enumerate(per_block):
        for name in (("fst", "baseline") if b % 2 == 0 else ("baseline", "fst")):
            select(name)
            wall, cpu = timed(steps[name], n, device)
            seconds[name].append(wall)
            cpu_seconds[name].append(cpu)
    result = {"size": size, "batch": args.batch, "iters": args.iters, "blocks": blocks,
              "first_fst_step_s": round(first, 3), "fst_compiled": fst.compiled}
    for name, times in seconds.items():
        result[f"{name}_img_per_s"] = args.batch * args.iters / sum(times)
        result[f"{name}_block_img_per_s"] = [round(args.batch * n / t, 3) for n, t in zip(per_block, times)]
        result[f"{name}_cpu_s_per_step"] = sum(cpu_seconds[name]) / args.iters
    result["ratio"] = result["fst_img_per_s"] / result["baseline_img_per_s"]
    # CPU seconds are what a step costs when the cores are shared with other work (wall time
    # then includes waiting for a core); with --threads 1 they are the contention-free figure.
    result["cpu_time_ratio"] = result["fst_cpu_s_per_step"] / result["baseline_cpu_s_per_step"]
    if device.type == "cuda":
        result["peak_mem_gib_both"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    if args.profile:
        select("fst")
        result["profile_fst"] = profile_fst(fst, photos, args.profile_steps)
        select("baseline")
        result["profile_baseline"] = profile_baseline(baseline, photos_0_255, args.profile_steps)
    return result


def describe_machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{platform.processor() or platform.machine()} {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}, load average {load}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--size", type=int, nargs="+", default=[256], help="square training crop sizes (default 256)")
    p.add_argument("--batch", type=int, default=None, help="photos per step (default 4 on cpu, 32 on cuda)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default=None,
                   help="fst's autocast precision (default: fst/configs/trainer/{cpu,gpu}.yaml)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="fst in channels_last (default: fst/configs/model/johnson.yaml; auto = on CUDA only)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile fst's net (default: fst/configs/model/johnson.yaml)")
    p.add_argument("--compile-loss", action=argparse.BooleanOptionalAction, default=True,
                   help="with --compile, also compile the VGG loss networks (default on)")
    p.add_argument("--iters", type=int, default=None, help="timed steps per side (default 8 on cpu, 200 on cuda)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per side first (default 2 cpu, 20 cuda)")
    p.add_argument("--blocks", type=int, default=4, help="alternating timed blocks the steps are split into")
    p.add_argument("--style-size", type=int, default=None,
                   help="long side of fst's style image (default: fst/configs/style; the baseline uses the crop size)")
    p.add_argument("--experiment", action="append", default=[], choices=sorted(EXPERIMENTS),
                   help="apply a candidate change to fst's step (repeatable): "
                   + "; ".join(f"{k}: {v}" for k, v in EXPERIMENTS.items()))
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on cpu")
    p.add_argument("--vgg-weights", default="caffe", help="caffe, or a file from --write-vgg-subset")
    p.add_argument("--write-vgg-subset", type=Path, default=None, help="write the caffe conv1_1..conv4_3 tensors and exit")
    p.add_argument("--profile", action="store_true", help="also print a phase breakdown and top operators")
    p.add_argument("--profile-steps", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="append the results as one JSON line")
    args = p.parse_args(argv)
    gpu = args.device == "cuda"
    model_cfg = config("model", "johnson")
    args.batch = args.batch or (32 if gpu else 4)
    args.precision = args.precision or TRAINER_PRECISION[str(config("trainer", "gpu" if gpu else "cpu")["precision"])]
    if args.channels_last is None:
        args.channels_last = resolve_channels_last(model_cfg["channels_last"], args.device)
    args.compile = model_cfg["compile"] if args.compile is None else args.compile
    args.iters = args.iters or (200 if gpu else 8)
    args.warmup = args.warmup if args.warmup is not None else (20 if gpu else 2)
    args.warmup = max(1, args.warmup)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.write_vgg_subset:
        write_vgg_subset(args.write_vgg_subset)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        raise FstError("--device cuda but torch.cuda.is_available() is False")
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*self.log.*")  # training_step logs; no Trainer here
    device = torch.device(args.device)
    weights = load_vgg_weights(args.vgg_weights)
    print(f"machine: {describe_machine(device)}")
    print(f"fst: precision {args.precision}, channels_last {args.channels_last}, compile {args.compile}"
          f"{' (net + loss VGG)' if args.compile and args.compile_loss else ' (net)' if args.compile else ''}"
          f"{', experiments ' + '+'.join(args.experiment) if args.experiment else ''}; "
          f"baseline: fp32 NCHW eager; batch {args.batch}, {args.iters} timed steps per side in "
          f"{min(args.blocks, args.iters)} alternating blocks after {args.warmup} warm-up")
    for size in args.size:
        r = bench_size(args, size, weights, device)
        print(f"size {size} batch {args.batch}: fst {r['fst_img_per_s']:.2f} img/s | baseline "
              f"{r['baseline_img_per_s']:.2f} img/s | ratio {r['ratio']:.2f}x "
              f"(fst step takes {1 / r['ratio']:.2f}x the baseline's time)")
        print(f"  per block img/s: fst {r['fst_block_img_per_s']} baseline {r['baseline_block_img_per_s']}; "
              f"first fst step {r['first_fst_step_s']} s{' (compiled)' if r['fst_compiled'] else ''}"
              + (f"; peak memory {r['peak_mem_gib_both']} GiB" if "peak_mem_gib_both" in r else ""))
        if device.type == "cpu":
            print(f"  process CPU seconds per step: fst {r['fst_cpu_s_per_step']:.3f} baseline "
                  f"{r['baseline_cpu_s_per_step']:.3f} -> fst/baseline {r['cpu_time_ratio']:.3f}")
        for key in ("profile_fst", "profile_baseline"):
            if key in r:
                print(r[key]["text"])
        if args.json:
            record = {k: v for k, v in vars(args).items() if k not in ("json", "write_vgg_subset")} | r
            record["machine"] = describe_machine(device)
            with args.json.open("a") as f:
                f.write(json.dumps(record, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
