"""What fst adds to Lightning checkpoints and model files, and reading it back.

A checkpoint written by :class:`~fst.train.module.StyleTransferModule` carries, next to
Lightning's own entries, ``fst_net_config`` (the TransformerNet architecture) and
``fst_metadata`` (:func:`module_metadata`): enough to rebuild the network without the
training code's configs, and what the exported model file records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fst.errors import FstError
from fst.fsutil import file_sha256
from fst.nets.transformer import TransformerNet, TransformerNetConfig

NET_CONFIG_KEY = "fst_net_config"
METADATA_KEY = "fst_metadata"
NET_PREFIX = "net."


def module_metadata(module: Any, steps: int) -> dict[str, Any]:
    """What a model file records about how a StyleTransferModule was trained.

    ``loss`` is the resolved loss config (``configs/loss``), so that
    ``hydra.utils.instantiate(meta["loss"])`` rebuilds the training loss exactly.
    """
    config = dict(module.loss.config)
    style_image = config.get("style_image")
    meta = {
        "style_name": module.style_name,
        "style_sha256": file_sha256(style_image) if style_image else None,
        "loss": config,
        "steps": int(steps),
    }
    if getattr(module, "init_source", None):  # trained on from another model file (model.init_from)
        meta["init_from"] = module.init_source
    extra = getattr(module, "extra_metadata", None)  # a multi-style module's style names (fst.train.multistyle)
    if callable(extra):
        meta.update(extra())
    return meta


def add_metadata(checkpoint: dict[str, Any], module: Any, steps: int) -> None:
    """Record the net's architecture and the training metadata in a checkpoint being saved."""
    checkpoint[NET_CONFIG_KEY] = module.net.config.to_dict()
    checkpoint[METADATA_KEY] = module_metadata(module, steps)


def net_from_checkpoint(ckpt_path: str | Path) -> tuple[TransformerNet, dict[str, Any]]:
    """The TransformerNet and its training metadata from a Lightning checkpoint (no code is run)."""
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise FstError(f"{ckpt_path}: no such checkpoint")
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a safe checkpoint"
        raise FstError(f"{ckpt_path}: not a loadable Lightning checkpoint ({exc})") from None
    if NET_CONFIG_KEY not in ckpt:
        raise FstError(f"{ckpt_path}: not an fst checkpoint (no {NET_CONFIG_KEY!r} entry)")
    net = TransformerNet(TransformerNetConfig(**ckpt[NET_CONFIG_KEY]))
    state = {k[len(NET_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(NET_PREFIX)}
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise FstError(f"{ckpt_path}: the network weights do not match its {NET_CONFIG_KEY} ({exc})") from None
    meta = dict(ckpt.get(METADATA_KEY, {}))
    meta["steps"] = int(ckpt.get("global_step", meta.get("steps", 0)))
    return net.eval(), meta
