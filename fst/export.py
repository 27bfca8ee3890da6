"""Model export: a Lightning checkpoint or a live module -> the self-contained model file.

``python -m fst.export CKPT [-o OUT.safetensors]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from fst.errors import FstError
from fst.images import file_sha256
from fst.model_file import save_model
from fst.transformer_net import TransformerNet, TransformerNetConfig


def module_metadata(module: Any, steps: int) -> dict[str, Any]:
    """What the model file records about how a StyleTransferModule was trained."""
    loss = module.loss
    style_image = getattr(loss, "style_image_path", None)
    return {
        "style_name": module.style_name,
        "style_sha256": file_sha256(style_image) if style_image else None,
        "loss": {
            "content_layers": loss.content_layers,
            "style_layers": loss.style_layer_weights,
            "content_weight": loss.content_weight,
            "style_weight": loss.style_weight,
            "tv_weight": loss.tv_weight,
            "vgg": loss.vgg_source,
        },
        "steps": int(steps),
    }


def net_from_checkpoint(ckpt_path: str | Path) -> tuple[TransformerNet, dict[str, Any]]:
    """The TransformerNet and its training metadata from a Lightning checkpoint."""
    ckpt_path = Path(ckpt_path)
    if not ckpt_path.is_file():
        raise FstError(f"{ckpt_path}: no such checkpoint")
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a safe checkpoint"
        raise FstError(f"{ckpt_path}: not a loadable Lightning checkpoint ({exc})") from None
    if "fst_net_config" not in ckpt:
        raise FstError(f"{ckpt_path}: not an fst checkpoint (no 'fst_net_config' entry)")
    net = TransformerNet(TransformerNetConfig(**ckpt["fst_net_config"]))
    prefix = "net."
    net.load_state_dict({k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)})
    meta = dict(ckpt.get("fst_metadata", {}))
    meta["steps"] = int(ckpt.get("global_step", meta.get("steps", 0)))
    return net.eval(), meta


def export_checkpoint(ckpt_path: str | Path, out: str | Path | None = None) -> Path:
    net, meta = net_from_checkpoint(ckpt_path)
    out = Path(out) if out else Path(ckpt_path).with_suffix(".safetensors")
    return save_model(net, out, meta)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fst.export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="Lightning checkpoint written by fst.train")
    parser.add_argument("-o", "--output", help="model file to write (default: next to the checkpoint)")
    args = parser.parse_args(argv)
    try:
        path = export_checkpoint(args.checkpoint, args.output)
    except FstError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
