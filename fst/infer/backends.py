"""Finding a model by name or path and running it: eager PyTorch or ONNX Runtime.

Which engine runs a model (``--backend``): ``auto`` runs fst and pytorch/examples models
on the CPU through ONNX Runtime, from graphs exported on first use and cached
(fst.infer.onnx_cache; the same outputs as eager PyTorch within 1e-4, in less time:
BENCHMARKS.md), and in PyTorch everywhere else: on CUDA and MPS (fp16/bf16 autocast,
channels_last on CUDA, optionally torch.compile), for fp16/bf16 on the CPU, and for
multi-style models (their style input is not in the cached graphs). ``torch`` and ``onnx``
force an engine. ``.onnx`` files always run in ONNX Runtime.

Accepted model files, none of which can execute code when loaded:

* ``.safetensors`` written by ``fst.train.export`` / training (weights + JSON metadata);
* ``.onnx`` written by ``python -m fst.train.export --format onnx``;
* ``.pth`` / ``.model`` / ``.pt`` state dicts of pytorch/examples fast_neural_style
  (read with ``torch.load(weights_only=True)``, see :mod:`fst.nets.legacy`).

A bare name (``starry_night``) is looked up as ``NAME.safetensors`` then ``NAME.onnx``
in each folder of ``$FST_MODELS`` (``os.pathsep``-separated), then in ``$FST_HOME/models``,
then among the models bundled with the package (see :mod:`fst.resources`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

from fst import nets
from fst.errors import FstError, UsageError
from fst.nets.export_formats import ONNX_METADATA_KEY
from fst.nets.legacy import LEGACY_SUFFIXES
from fst.resources import model_search_dirs

NAMED_SUFFIXES = (".safetensors", ".onnx")
BACKENDS = ("auto", "torch", "onnx")


class ModelNotFound(UsageError):
    """The -m argument names no model: a usage error."""


def available_models() -> dict[str, Path]:
    """Every model name that :func:`resolve_model` would find (first hit wins)."""
    found: dict[str, Path] = {}
    for folder in model_search_dirs():
        if not folder.is_dir():
            continue
        for suffix in NAMED_SUFFIXES:
            for path in sorted(folder.glob(f"*{suffix}")):
                found.setdefault(path.name[: -len(suffix)], path)
    return found


def resolve_model(spec: str | Path) -> Path:
    """The model file that ``spec`` (a path or a bare name) refers to; ModelNotFound otherwise."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    text = str(spec)
    looks_like_path = os.sep in text or "/" in text or path.suffix.lower() in (*NAMED_SUFFIXES, *LEGACY_SUFFIXES)
    if looks_like_path:
        raise ModelNotFound(f"{spec}: no such model file")
    for folder in model_search_dirs():
        for suffix in NAMED_SUFFIXES:
            candidate = folder / f"{text}{suffix}"
            if candidate.is_file():
                return candidate
    names = ", ".join(sorted(available_models())) or "none"
    searched = ", ".join(str(d) for d in model_search_dirs())
    raise ModelNotFound(f"unknown model {text!r}: available: {names} (searched {searched})")


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> cuda, else mps, else cpu; an explicit device (``cuda:1`` too) that is missing is an FstError."""
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise FstError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {str(device)!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FstError(f"--device {device}: no CUDA device available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise FstError(f"--device {device}: there are {torch.cuda.device_count()} CUDA devices")
    if dev.type == "mps" and not _mps_available():
        raise FstError(f"--device {device}: no Apple MPS device available")
    return dev


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """``auto`` -> fp16 on CUDA (tensor cores), fp32 elsewhere."""
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if precision not in PRECISIONS:
        raise FstError(f"--precision must be auto, fp32, fp16 or bf16, got {precision!r}")
    return PRECISIONS[precision]


class TorchBackend:
    """A TransformerNet run eagerly, under autocast for fp16/bf16.

    channels_last on CUDA only: it feeds tensor-core convolutions there, while on CPU
    it measured 1.3-1.6x slower for this network (reflection padding and instance
    norm are slow in that layout; see docs/inference.md). ``compile``: run the network
    through ``torch.compile`` (falls back to eager, with a note, if compiling fails).
    """

    supports_tiling = True
    engine = "torch"

    def __init__(self, net: torch.nn.Module, metadata: dict[str, Any], device: torch.device, dtype: torch.dtype,
                 compile: bool = False) -> None:
        self.memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
        self.net = net.to(device).eval().to(memory_format=self.memory_format)
        self.metadata = metadata
        self.device = device
        self.dtype = dtype
        self.note: str | None = None  # why this engine runs the model, when that is not what the user asked for
        self._forward: Any = torch.compile(self.net) if compile else self.net

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] on any device -> (B, 3, H, W) float32 on ``self.device``.

        ``style``: a multi-style net's style weights, (num_styles,) (fst.infer.styles).
        """
        batch = batch.to(self.device, torch.float32).contiguous(memory_format=self.memory_format)
        inputs = (batch,) if style is None else (batch, style.to(self.device, torch.float32))
        if self.dtype == torch.float32:
            return self._run(inputs).float()
        with torch.autocast(device_type=self.device.type, dtype=self.dtype):
            return self._run(inputs).float()

    def _run(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if self._forward is self.net:
            return self.net(*inputs)
        try:
            return self._forward(*inputs)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: the eager network computes the same
            print(f"note: torch.compile failed ({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}); "
                  f"running eagerly", file=sys.stderr)
            self._forward = self.net
            return self.net(*inputs)


class OnnxBackend:
    """An exported ONNX graph run by ONNX Runtime (fp32; no tiling: its norm layers are fixed ops)."""

    supports_tiling = False
    engine = "onnx"
    note: str | None = None

    def __init__(self, path: Path, device: torch.device) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise FstError(f"{path}: running .onnx models needs onnxruntime (pip install onnxruntime)") from None
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise FstError(f"{path}: not a loadable ONNX model ({str(exc).splitlines()[0]})") from None
        raw = self.session.get_modelmeta().custom_metadata_map.get(ONNX_METADATA_KEY)
        self.metadata = json.loads(raw) if raw else {}
        inputs = self.session.get_inputs()
        self.input_name = inputs[0].name
        # A multi-style graph's style weights (fst.nets.export_formats).
        self.style_input = inputs[1].name if len(inputs) > 1 else None
        self.device = torch.device("cpu")
        self.dtype = torch.float32

    def __call__(self, batch: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        """``style``: a multi-style graph's second input, the style weights (num_styles,)."""
        feeds = {self.input_name: batch.detach().float().cpu().contiguous().numpy()}
        if style is not None:
            feeds[self.style_input] = style.detach().float().cpu().contiguous().numpy()
        return torch.from_numpy(self.session.run(None, feeds)[0])


class CachedOnnxBackend:
    """An fst model run by ONNX Runtime from graphs exported on first use and cached
    (fst.infer.onnx_cache): fp32, any size, batches, and tiles with shared statistics."""

    supports_tiling = True
    engine = "onnx"

    def __init__(self, path: Path, net: torch.nn.Module, metadata: dict[str, Any], device: torch.device,
                 threads: int | None = None) -> None:
        from fst.infer.onnx_cache import CachedGraphs

        self.graphs = CachedGraphs(path, net, metadata, device=device, threads=threads)
        self.metadata = metadata
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.note: str | None = None

    def __call__(self, batch: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 3, H, W) float32 on the CPU."""
        if style is not None:
            raise FstError("this model holds one style: it takes no style weights")
        return self.graphs.run(batch)

    def use_threads(self, threads: int) -> None:
        """ONNX Runtime's intra-op threads for each run from now on. Several runs may go at once
        (sessions are thread-safe): ``fst-infer`` stylizes a folder's photos side by side on one
        thread each, which measured faster on the CPU than one photo at a time on all threads."""
        self.graphs.use_threads(threads)

    def tiled(self, image: torch.Tensor, tile: int, overlap: int, stats_size: int) -> torch.Tensor:
        """One image (1, 3, H, W) in tiles sharing the statistics of its downscaled whole (fst.infer.tiling)."""
        from fst.infer.tiling import downscale_for_stats, tiled_forward_with

        stats = self.graphs.stats(downscale_for_stats(image.float().cpu(), stats_size))
        return tiled_forward_with(lambda x: self.graphs.run(x, stats), image.float().cpu(), tile, overlap)


Backend = TorchBackend | OnnxBackend | CachedOnnxBackend


def load_backend(spec: str | Path, device: str = "auto", precision: str = "auto", backend: str = "auto",
                 compile: bool = False) -> tuple[Backend, Path]:
    """Resolve ``spec`` and load it for inference with the engine ``backend`` chooses
    (module docstring); returns (backend, model path)."""
    if backend not in BACKENDS:
        raise FstError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    path = resolve_model(spec)
    dev = resolve_device(device)
    dtype = resolve_precision(precision, dev)
    if path.suffix.lower() == ".onnx":
        if backend == "torch":
            raise FstError(f"{path}: an ONNX graph runs in ONNX Runtime; --backend torch needs a .safetensors or .pth model")
        if precision not in ("auto", "fp32"):
            raise FstError(f"{path}: ONNX models run in fp32 only (got --precision {precision})")
        return OnnxBackend(path, dev), path
    net, meta = nets.load(path)
    reason = _why_not_onnx(net, dev, dtype, compile)
    if backend == "onnx" and reason:
        raise FstError(f"{path}: --backend onnx cannot run it: {reason}")
    if backend == "torch" or (backend == "auto" and reason):
        loaded = TorchBackend(net, meta, dev, dtype, compile=compile)
        if backend == "auto" and dev.type == "cpu":
            loaded.note = f"running in PyTorch: {reason}"
        return loaded, path
    return CachedOnnxBackend(path, net, meta, dev), path


def _why_not_onnx(net: torch.nn.Module, device: torch.device, dtype: torch.dtype, compile: bool) -> str | None:
    """Why the cached ONNX graphs cannot (or, for ``auto``, should not) run this model here; None if they can."""
    if getattr(getattr(net, "config", None), "num_styles", 0):
        return "a multi-style model (its style input is not in the cached ONNX graphs)"
    if dtype != torch.float32:
        return f"the ONNX graphs run in fp32, not {str(dtype).replace('torch.', '')}"
    if compile:
        return "torch.compile was asked for"
    if device.type != "cpu":
        return f"on {device.type} PyTorch runs the model (ONNX Runtime is the CPU engine)"
    return None
