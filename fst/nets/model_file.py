"""The exported model file: one ``.safetensors`` holding the TransformerNet weights and,
in its string metadata, everything needed to rebuild and describe it. Loading never
executes code (safetensors stores tensors and strings only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from fst.errors import FstError
from fst.fsutil import atomic_path
from fst.nets.transformer import TransformerNet, TransformerNetConfig

FORMAT = "fst.model/1"
PREPROCESSING = {"input": "RGB", "range": [0.0, 1.0], "layout": "NCHW", "output": "RGB in [0, 1]"}


def fst_version() -> str:
    from fst import __version__

    return __version__


def save_model(net: TransformerNet, path: str | Path, metadata: dict[str, Any]) -> Path:
    """Write ``net`` to ``path`` (atomically) with JSON-encoded ``metadata``.

    Standard keys: ``style_name``, ``style_sha256``, ``loss`` (dict), ``steps``;
    ``format``, ``architecture``, ``fst_version`` and ``preprocessing`` are added here.
    """
    path = Path(path)
    header = {
        "format": FORMAT,
        "architecture": net.config.to_dict(),
        "fst_version": fst_version(),
        "preprocessing": PREPROCESSING,
        **metadata,
    }
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in net.state_dict().items()}
    strings = {k: json.dumps(v) for k, v in header.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=strings)
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The decoded metadata of a model file."""
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
    """Rebuild the TransformerNet stored in ``path``; returns (net in eval mode, metadata)."""
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
