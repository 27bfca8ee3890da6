"""ONNX Runtime graphs of fst model files: exported on first use, checked, kept on disk.

On the CPU, ``fst stylize`` runs a ``.safetensors`` (or pytorch/examples ``.pth``) model
through ONNX Runtime (fst.infer.backends). Its graphs are traced from the model's own
network, rewritten exactly for inference (fst.nets.subpixel: sub-pixel upsampling, a
separable output convolution), and each is compared with eager PyTorch when it is made
(largest difference at most :data:`~fst.nets.export_formats.EXPORT_TOLERANCE`). They are
kept under

    $FST_HOME/onnx/<sha256 of the model file>/<kind>-<sizes>-fst<version>-opset<N>-g<GRAPH_FORMAT>.onnx

written atomically (fst.fsutil). The name is the cache key: another model file, fst
version, opset or graph layout gives another name, so a stale graph is never read.
Every graph also records its key in its metadata; one that ONNX Runtime cannot load, or
whose key does not match (a truncated, corrupted or swapped file), is rebuilt in place.

Graph kinds, all with dynamic batch, height and width:

* ``plain``: ``image`` -> ``stylized``;
* ``stats``: ``image`` -> ``mean_0, var_0, mean_1, ...``: every instance norm layer's input
  statistics per channel, pooled over the batch (fst.infer.tiling records the same);
* ``fixed``: ``image, mean_0, var_0, ...`` -> ``stylized`` with every norm layer using the
  given statistics: the tiles of a large image, all normalised like the whole image.

``sizes`` is ``x4`` for inputs whose sides are multiples of 4 (both decoder stages double
exactly) or ``any`` (the last decoder row and column of each stage recomputed with the
original 3x3 kernel, which odd sizes need: a few more operations on two thin strips).
"""

from __future__ import annotations

import io
import json
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fst._version import __version__
from fst.errors import FstError
from fst.fsutil import atomic_write_bytes, file_sha256
from fst.infer.tiling import fixed_norm_stats, record_norm_stats, recording_norm_stats
from fst.nets.export_formats import EXPORT_TOLERANCE, ONNX_METADATA_KEY, ONNX_OPSET, check_against_eager
from fst.nets.subpixel import rewrite_for_inference
from fst.resources import fst_home

# Bump when the graphs' layout changes (inputs, outputs, rewrites): older files are then not read.
GRAPH_FORMAT = 2
KINDS = ("plain", "stats", "fixed")
SIZES = ("x4", "any")
GRAPH_KEY = "fst_graph"
# Input shapes each graph is checked on when it is made: sides multiples of 4 for x4,
# odd ones (and a batch) for any.
CHECK_SHAPES = {"x4": ((1, 3, 96, 128), (2, 3, 64, 80)), "any": ((1, 3, 96, 128), (2, 3, 75, 131))}

# ONNX Runtime settings (measured on the 2-core CPU: scripts/bench_onnx_settings.py, BENCHMARKS.md).
GRAPH_OPTIMIZATION = "ORT_ENABLE_ALL"
_shared_arena: bool | None = None


def cache_dir() -> Path:
    """Where the graphs live: ``$FST_HOME/onnx``."""
    return fst_home() / "onnx"


def sizes_for(height: int, width: int) -> str:
    """The graph for an input of this size: ``x4`` when both sides are multiples of 4."""
    return "x4" if height % 4 == 0 and width % 4 == 0 else "any"


def session_options(threads: int | None = None) -> Any:
    """ONNX Runtime session options: full graph optimisation, ``threads`` intra-op threads
    (default: torch's thread count, which OMP_NUM_THREADS sets), one inter-op thread, and
    one memory arena for all of a process's graphs (tiling runs two), grown by what is asked
    for (not in powers of two) and without per-shape memory plans. Measured against the
    alternatives by scripts/bench_onnx_settings.py (BENCHMARKS.md): the full optimisation
    level is 8-16 % faster than the extended one; ONNX Runtime's own memory planning and
    its defaults were within the run-to-run spread of these settings."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_OPTIMIZATION)
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: ORT's notes on its own optimisations are not the user's business
    options.enable_mem_pattern = False
    if _register_shared_arena():
        options.add_session_config_entry("session.use_env_allocators", "1")
    return options


def _register_shared_arena() -> bool:
    """Register (once per process) the CPU arena that every fst session shares; False if this
    onnxruntime cannot, and each session then keeps its own."""
    global _shared_arena
    if _shared_arena is None:
        import onnxruntime as ort

        try:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg({"arena_extend_strategy": 1}))  # kSameAsRequested
            _shared_arena = True
        except Exception:  # noqa: BLE001 - e.g. another library registered one first: not an error
            _shared_arena = False
    return _shared_arena


def providers_for(device: torch.device) -> list[str]:
    """CUDA first where the device is CUDA and this onnxruntime build has it, the CPU otherwise."""
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return providers


class StatsGraph(nn.Module):
    """``image`` -> every norm layer's (mean, var), flattened: what tiling records first."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with recording_norm_stats(self.net) as stats:
            self.net(image)
        return tuple(t for pair in stats for t in pair)


class FixedStatsGraph(nn.Module):
    """``image, mean_0, var_0, ...`` -> the stylized image, each norm layer using the given statistics."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor, *stats: torch.Tensor) -> torch.Tensor:
        with fixed_norm_stats(self.net, list(zip(stats[0::2], stats[1::2]))):
            return self.net(image)


def norm_channels(net: nn.Module) -> list[int]:
    """Channels of every instance norm layer, in the order tiling records them."""
    return [m.num_features for m in net.modules() if isinstance(m, nn.InstanceNorm2d)]


def stat_names(net: nn.Module) -> list[str]:
    return [f"{kind}_{i}" for i in range(len(norm_channels(net))) for kind in ("mean", "var")]


def export_graph(net: nn.Module, kind: str, sizes: str, key: dict[str, Any], metadata: dict[str, Any]) -> bytes:
    """The serialised ONNX graph of ``kind`` for inputs of ``sizes`` (see the module docstring)."""
    import onnx

    if kind not in KINDS or sizes not in SIZES:
        raise ValueError(f"graph kind must be one of {KINDS} and sizes one of {SIZES}, got {kind!r}, {sizes!r}")
    fast = rewrite_for_inference(net.float().cpu().eval(), edges="never" if sizes == "x4" else "always")
    image = torch.rand(1, 3, 64, 64)
    image_axes = {0: "batch", 2: "height", 3: "width"}
    if kind == "plain":
        module, inputs, input_names, output_names = fast, (image,), ["image"], ["stylized"]
    elif kind == "stats":
        module, inputs, input_names, output_names = StatsGraph(fast), (image,), ["image"], stat_names(net)
    else:
        stats = [t for c in norm_channels(net) for t in (torch.zeros(c), torch.ones(c))]
        module, inputs = FixedStatsGraph(fast), (image, *stats)
        input_names, output_names = ["image", *stat_names(net)], ["stylized"]
    dynamic = {"image": image_axes}
    if "stylized" in output_names:
        dynamic["stylized"] = image_axes
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation and tracer notes
        torch.onnx.export(module, inputs, buffer, dynamo=False, input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic, opset_version=ONNX_OPSET)
    model = onnx.load_from_string(buffer.getvalue())
    for name, value in ((ONNX_METADATA_KEY, metadata), (GRAPH_KEY, key)):
        entry = model.metadata_props.add()
        entry.key, entry.value = name, json.dumps(value)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def check_graph(net: nn.Module, session: Any, kind: str, sizes: str) -> float:
    """Largest difference between ``session`` and eager PyTorch on :data:`CHECK_SHAPES`
    (statistics relative to their size); FstError above EXPORT_TOLERANCE."""
    what = f"the {kind} ONNX graph ({sizes} sizes)"
    names = stat_names(net)
    shapes = CHECK_SHAPES[sizes]
    if kind == "plain":
        return check_against_eager(net, lambda x: torch.from_numpy(session.run(None, {"image": x.numpy()})[0]),
                                   what, shapes=shapes)
    generator = torch.Generator().manual_seed(1)
    worst = 0.0
    for shape in shapes:
        image = torch.rand(1, *shape[1:], generator=generator)
        with torch.no_grad():
            stats = record_norm_stats(net, image)
        if kind == "stats":
            got = session.run(None, {"image": image.numpy()})
            expected = [t.numpy() for pair in stats for t in pair]
            worst = max(worst, max(float(np.max(np.abs(g - e) / (1.0 + np.abs(e)))) for g, e in zip(got, expected)))
        else:
            # The statistics of another image, as for a tile: the graph must use them, not its own.
            tile = torch.rand(*shape, generator=generator)
            with torch.no_grad(), fixed_norm_stats(net, stats):
                expected_out = net(tile)
            feeds = {"image": tile.numpy(), **dict(zip(names, (t.numpy() for pair in stats for t in pair)))}
            worst = max(worst, float(np.max(np.abs(session.run(None, feeds)[0] - expected_out.numpy()))))
    if worst > EXPORT_TOLERANCE:
        raise FstError(f"{what} differs from eager PyTorch by {worst:.2e} (tolerance {EXPORT_TOLERANCE:.0e})")
    return worst


class CachedGraphs:
    """The ONNX Runtime sessions of one model file, each exported on first use and cached on disk.

    ``threads``: ONNX Runtime's intra-op threads (default: torch's thread count).
    ``folder``: the cache folder (default :func:`cache_dir`).
    """

    def __init__(self, model_path: str | Path, net: nn.Module, metadata: dict[str, Any],
                 device: torch.device = torch.device("cpu"), threads: int | None = None,
                 folder: str | Path | None = None) -> None:
        self.model_path = Path(model_path)
        self.net = net.float().cpu().eval()
        self.metadata = metadata
        self.device = device
        self.threads = threads
        self.folder = Path(folder) if folder is not None else cache_dir()
        self.sha256 = file_sha256(self.model_path)
        self._sessions: dict[tuple[str, str], Any] = {}
        self._sessions_lock = threading.Lock()  # photos stylized at once share one session per graph
        self.rebuilt: list[Path] = []  # graphs found unusable on disk and made again (for reporting and tests)

    def key(self, kind: str, sizes: str) -> dict[str, Any]:
        return {"model_sha256": self.sha256, "kind": kind, "sizes": sizes, "fst_version": __version__,
                "opset": ONNX_OPSET, "graph_format": GRAPH_FORMAT}

    def path(self, kind: str, sizes: str) -> Path:
        name = f"{kind}-{sizes}-fst{__version__}-opset{ONNX_OPSET}-g{GRAPH_FORMAT}.onnx"
        return self.folder / self.sha256 / name

    def session(self, kind: str, sizes: str) -> Any:
        """The session for ``kind`` and ``sizes``: from the cache, or exported, checked and cached."""
        with self._sessions_lock:
            if (kind, sizes) not in self._sessions:
                self._sessions[kind, sizes] = self._load_or_build(kind, sizes)
            return self._sessions[kind, sizes]

    def use_threads(self, threads: int) -> None:
        """Run on ``threads`` intra-op threads from now on (sessions already open are reopened)."""
        with self._sessions_lock:
            if threads != (self.threads or torch.get_num_threads()):
                self.threads = threads
                self._sessions.clear()

    def _load_or_build(self, kind: str, sizes: str) -> Any:
        path = self.path(kind, sizes)
        if path.is_file():
            session = self._open(path)
            if session is not None and self._key_of(session) == self.key(kind, sizes):
                return session
            self.rebuilt.append(path)
        data = export_graph(self.net, kind, sizes, self.key(kind, sizes), self.metadata)
        session = self._open(data)
        if session is None:
            raise FstError(f"{self.model_path}: ONNX Runtime cannot load the graph exported from it")
        check_graph(self.net, session, kind, sizes)
        try:
            atomic_write_bytes(path, data)
        except OSError as exc:
            warnings.warn(f"cannot cache the ONNX graph in {path.parent} ({exc.strerror or exc}); "
                          f"it is exported again in every process", stacklevel=3)
        return session

    def _open(self, source: Path | bytes) -> Any:
        """An ONNX Runtime session, or None when the file or bytes are not a loadable graph."""
        import onnxruntime as ort

        try:
            model = str(source) if isinstance(source, Path) else source
            return ort.InferenceSession(model, session_options(self.threads), providers=providers_for(self.device))
        except Exception:  # noqa: BLE001 - ORT raises its own exception types for unreadable graphs
            return None

    @staticmethod
    def _key_of(session: Any) -> dict[str, Any] | None:
        raw = session.get_modelmeta().custom_metadata_map.get(GRAPH_KEY)
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    def stats(self, image: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every norm layer's input (mean, var) for ``image`` (1, 3, H, W), as fst.infer.tiling records them."""
        session = self.session("stats", sizes_for(*image.shape[-2:]))
        flat = session.run(None, {"image": as_array(image)})
        return [(torch.from_numpy(m), torch.from_numpy(v)) for m, v in zip(flat[0::2], flat[1::2])]

    def run(self, batch: torch.Tensor, stats: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        """The stylized ``batch`` (B, 3, H, W), normalised with ``stats`` if given."""
        sizes = sizes_for(*batch.shape[-2:])
        feeds = {"image": as_array(batch)}
        if stats is None:
            return torch.from_numpy(self.session("plain", sizes).run(None, feeds)[0])
        names = stat_names(self.net)
        feeds.update(zip(names, (as_array(t) for pair in stats for t in pair)))
        return torch.from_numpy(self.session("fixed", sizes).run(None, feeds)[0])


def as_array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().contiguous().numpy()
