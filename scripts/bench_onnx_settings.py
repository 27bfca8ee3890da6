"""ONNX Runtime session settings for fst's CPU graphs, measured side by side.

    python scripts/bench_onnx_settings.py [--model starry_night] [--threads 2] [--rounds 5]
                                          [--sizes 512x512 1024x1024] [--settings ...] [--json FILE]

Every worker keeps its arena at its largest size's peak: about 3 GB each at 1920x1080, so
all eight settings at that size do not fit in 24 GB (pick fewer --settings).

fst runs its ``.safetensors`` models through ONNX Runtime on the CPU with the session
options of ``fst.infer.onnx_cache.session_options``. This script is how those options were
chosen: it exports the model's ``plain`` graph the way ``fst-infer`` does (into a fresh
$FST_HOME), then opens it under each setting below, each in its own worker process (so that
each one's peak memory is its own), and times them taking turns: every round runs each
setting once at each size, so load from other processes hits all of them alike.

Settings (each differs from ``fst`` in one respect, except ``ort defaults``):

* ``fst``: what fst-infer uses;
* ``level disable`` / ``level basic`` / ``level extended``: another graph optimisation level
  (fst: ``all``, which adds the CPU layout transformations);
* ``ort memory``: ONNX Runtime's own memory planning (per-shape memory patterns, a private
  arena growing in powers of two) instead of fst's shared arena grown as asked;
* ``no spinning``: intra-op threads sleep instead of spinning between operators;
* ``1 thread``: one intra-op thread (fst: ``--threads``);
* ``ort defaults``: a bare ``InferenceSession`` (ONNX Runtime picks everything).

Printed first: the graph's node types as exported and after ONNX Runtime's basic and full
optimisation (what it folded and fused). Reported per setting: the session's creation time (graph optimisation happens there: it is
paid once per process by every fst-infer run), and per size the best and median time over
the rounds, its ratio to ``fst``, and the worker's peak resident memory after that size's
first run (sizes run smallest first) and its rise over the worker before the session was
created. All outputs are compared with ``fst``'s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_infer import Worker, _rss_mb, machine_line  # this script's folder is on sys.path

BASE = "fst"
SETTINGS = ("fst", "level disable", "level basic", "level extended", "ort memory", "no spinning", "1 thread",
            "ort defaults")
LEVELS = {"level disable": "ORT_DISABLE_ALL", "level basic": "ORT_ENABLE_BASIC", "level extended": "ORT_ENABLE_EXTENDED"}


def _options(setting: str, threads: int) -> Any:
    import onnxruntime as ort

    from fst.infer.onnx_cache import session_options

    if setting == "ort defaults":
        return None
    if setting == "ort memory":
        options = ort.SessionOptions()  # fst's options, less its memory settings
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        return options
    options = session_options(1 if setting == "1 thread" else threads)
    if setting in LEVELS:
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[setting])
    if setting == "no spinning":
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def worker(setting: str, graph: str, threads: int) -> int:
    """Serve timing requests on stdin/stdout, one JSON line each."""
    import numpy as np
    import onnxruntime as ort

    options = _options(setting, threads)  # imports fst (and torch) for every setting alike
    idle = _rss_mb()
    start = time.perf_counter()
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    create_s = time.perf_counter() - start
    name = session.get_inputs()[0].name
    print(json.dumps({"ready": True, "idle_rss_mb": idle, "create_s": create_s}), flush=True)
    feeds: dict[str, Any] = {}
    for line in sys.stdin:
        h, w = json.loads(line)["size"]
        key = f"{h}x{w}"
        if key not in feeds:
            rng = np.random.default_rng(h * 7919 + w)
            feeds[key] = {name: rng.random((1, 3, h, w), dtype=np.float32)}
            out = session.run(None, feeds[key])[0]  # warm-up: kernel selection, allocator growth
            np.save(Path(os.environ["BENCH_OUTPUTS"]) / f"{setting.replace(' ', '_')}_{key}.npy", out)
            print(json.dumps({"peak_rss_mb": _rss_mb()}), flush=True)
            continue
        start = time.perf_counter()
        session.run(None, feeds[key])
        print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)
    return 0


def export_plain_graph(model: str, home: Path) -> Path:
    """The model's ``plain`` graph for sides that are multiples of 4, exported by fst-infer's own code."""
    import torch

    from fst.infer.stylizer import Stylizer

    os.environ["FST_HOME"] = str(home)
    Stylizer.load(model)(torch.rand(1, 3, 64, 64), tile=None)
    graphs = sorted(home.glob("onnx/*/plain-x4-*.onnx"))
    if len(graphs) != 1:
        raise SystemExit(f"expected one plain graph under {home}/onnx, found {len(graphs)}")
    return graphs[0]


def op_counts(graph: Path, level: str | None, tmp: Path) -> dict[str, int]:
    """Node types of ``graph`` as exported (``level`` None) or as ONNX Runtime rewrote it at
    ``level``: which convolutions, norms and activations it fused."""
    import onnx
    import onnxruntime as ort

    path = graph
    if level is not None:
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        options.optimized_model_filepath = str(tmp / f"{level}.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        path = tmp / f"{level}.onnx"
    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        name = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="starry_night", help="model name or .safetensors file")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", nargs="+", default=["512x512", "1024x1024"], help="WxH")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--graph", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.graph, args.threads)
    if BASE not in args.settings:
        args.settings.insert(0, BASE)

    import numpy as np

    sizes = sorted((tuple(int(v) for v in s.split("x"))[::-1] for s in args.sizes), key=lambda hw: hw[0] * hw[1])
    print(machine_line(args.threads))
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="fst-bench-onnx-") as tmp:
        tmp_path = Path(tmp)
        start = time.perf_counter()
        graph = export_plain_graph(args.model, tmp_path / "home")
        print(f"graph: {graph.name} of {args.model}, exported and checked in {time.perf_counter() - start:.1f} s")
        ops = {"exported": op_counts(graph, None, tmp_path),
               **{level: op_counts(graph, level, tmp_path) for level in ("ORT_ENABLE_BASIC", "ORT_ENABLE_ALL")}}
        for stage, counts in ops.items():
            print(f"nodes, {stage}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        outputs = tmp_path / "outputs"
        outputs.mkdir()
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "BENCH_OUTPUTS": str(outputs),
               "PYTHONWARNINGS": "ignore"}
        workers = {s: Worker([sys.executable, __file__, "--worker", s, "--graph", str(graph), "--threads",
                              str(args.threads)], env) for s in args.settings}
        failed = {s: w.hello["error"] for s, w in workers.items() if "error" in w.hello}
        if failed:
            raise SystemExit(f"worker failed: {failed}")
        results: dict[str, Any] = {s: {"create_s": w.hello["create_s"], "idle_rss_mb": w.hello["idle_rss_mb"], "sizes": {}} for s, w in workers.items()}
        for s, w in workers.items():
            for hw in sizes:
                results[s]["sizes"][f"{hw[1]}x{hw[0]}"] = {"peak_rss_mb": w.ask(hw)["peak_rss_mb"], "seconds": []}
        for _ in range(args.rounds):
            for hw in sizes:
                for s, w in workers.items():
                    results[s]["sizes"][f"{hw[1]}x{hw[0]}"]["seconds"].append(w.ask(hw)["seconds"])
        for w in workers.values():
            w.close()
        for s in args.settings:
            for hw in sizes:
                base = np.load(outputs / f"{BASE}_{hw[0]}x{hw[1]}.npy")
                mine = np.load(outputs / f"{s.replace(' ', '_')}_{hw[0]}x{hw[1]}.npy")
                results[s]["sizes"][f"{hw[1]}x{hw[0]}"]["max_abs_vs_fst"] = float(np.abs(mine - base).max())
    print(f"load average after: {os.getloadavg()[0]:.1f}\n")
    print(f"| setting | session created (s) | " + " | ".join(f"{w}x{h}: best s (median), x fst, peak MB rise" for h, w in sizes)
          + " | max diff vs fst |")
    print("|---|---|" + "---|" * len(sizes) + "---|")
    for s in args.settings:
        cells = []
        for hw in sizes:
            r = results[s]["sizes"][f"{hw[1]}x{hw[0]}"]
            best, base = min(r["seconds"]), min(results[BASE]["sizes"][f"{hw[1]}x{hw[0]}"]["seconds"])
            rise = r["peak_rss_mb"] - results[s]["idle_rss_mb"]
            cells.append(f"{best:.3f} ({statistics.median(r['seconds']):.3f}), {best / base:.2f}x, +{rise:.0f}")
        diff = max(r["max_abs_vs_fst"] for r in results[s]["sizes"].values())
        print(f"| {s} | {results[s]['create_s']:.2f} | " + " | ".join(cells) + f" | {diff:.1e} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_line(args.threads), "nodes": ops, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
