"""Model files: writing fst's own, and :func:`load` for every kind fst reads.

fst's model file is one ``.safetensors`` holding the TransformerNet weights and, in its
string metadata, everything needed to rebuild and describe it: the header
(:func:`full_metadata`) that the ONNX and TorchScript exports carry too. Loading never
executes code: safetensors stores tensors and strings only, and pytorch/examples
``.pth`` / ``.model`` state dicts are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from fst._version import __version__
from fst.errors import FstError
from fst.fsutil import atomic_path
from fst.nets.legacy import LEGACY_SUFFIXES, load_legacy_model
from fst.nets.transformer import TransformerNet, TransformerNetConfig

FORMAT = "fst.model/1"
PREPROCESSING = {"input": "RGB", "range": [0.0, 1.0], "layout": "NCHW", "output": "RGB in [0, 1]"}
# What full_metadata adds to the training metadata; the rest is the caller's.
HEADER_KEYS = ("format", "architecture", "fst_version", "preprocessing")
MODEL_SUFFIX = ".safetensors"


def fst_version() -> str:
    return __version__


def full_metadata(net: TransformerNet, metadata: dict[str, Any]) -> dict[str, Any]:
    """The header every fst model file carries: format, architecture, versions, then ``metadata``.

    Standard ``metadata`` keys: ``style_name``, ``style_sha256``, ``loss`` (dict), ``steps``.
    """
    return {
        "format": FORMAT,
        "architecture": net.config.to_dict(),
        "fst_version": fst_version(),
        "preprocessing": PREPROCESSING,
        **metadata,
    }


def without_header(metadata: dict[str, Any]) -> dict[str, Any]:
    """``metadata`` less what :func:`full_metadata` adds (to write it again for another net)."""
    return {k: v for k, v in metadata.items() if k not in HEADER_KEYS}


def save_model(net: TransformerNet, path: str | Path, metadata: dict[str, Any]) -> Path:
    """Write ``net`` to ``path`` (atomically) with the JSON-encoded :func:`full_metadata` header."""
    path = Path(path)
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in net.state_dict().items()}
    strings = {k: json.dumps(v) for k, v in full_metadata(net, metadata).items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=strings)
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The decoded metadata of an fst model file."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = fh.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise FstError(f"{path}: not an fst model file ({exc})") from None
    meta = {k: json.loads(v) for k, v in raw.items()}
    if meta.get("format") != FORMAT:
        raise FstError(f"{path}: not an fst model file (metadata format is {meta.get('format')!r}, want {FORMAT!r})")
    return meta


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[TransformerNet, dict[str, Any]]:
    """Rebuild the TransformerNet stored in the fst model file ``path``; returns (net in eval mode, metadata)."""
    path = Path(path)
    if not path.is_file():
        raise FstError(f"{path}: no such model file")
    meta = read_metadata(path)
    net = TransformerNet(TransformerNetConfig(**meta["architecture"]))
    try:
        net.load_state_dict(load_file(str(path), device="cpu"))
    except RuntimeError as exc:
        raise FstError(f"{path}: weights do not match the stored architecture ({exc})") from None
    return net.to(device).eval(), meta


def load(path: str | Path) -> tuple[TransformerNet, dict[str, Any]]:
    """The network in a model file, on the CPU in eval mode, and its metadata.

    Reads fst ``.safetensors`` files and pytorch/examples ``.pth`` / ``.model`` state
    dicts, never executing code; anything else is an FstError naming the file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == MODEL_SUFFIX:
        return load_model(path)
    if suffix in LEGACY_SUFFIXES:
        return load_legacy_model(path)
    if suffix == ".ckpt":
        raise FstError(f"{path}: a training checkpoint; turn it into a model file with `fst export {path}`")
    if suffix == ".onnx":
        raise FstError(f"{path}: an ONNX graph, which runs in ONNX Runtime (fst stylize), not as a PyTorch network")
    expected = ", ".join((MODEL_SUFFIX, *LEGACY_SUFFIXES))
    raise FstError(f"{path}: unknown model format {suffix or '(no suffix)'} (expected {expected})")
