"""Model export: a Lightning checkpoint or a live module -> the self-contained model file.

``python -m fst.train.export SOURCE [-o OUT] [--format safetensors|onnx|torchscript]``

SOURCE is a Lightning checkpoint written by fst.train, an fst ``.safetensors`` model
(to convert it) or a pytorch/examples fast_neural_style ``.pth``/``.model`` state dict.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from fst.errors import FstError
from fst.fsutil import file_sha256
from fst.nets.model_file import full_metadata, load_model, save_model
from fst.nets.transformer import TransformerNet, TransformerNetConfig


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
            "vgg": loss.vgg_spec,
            "style_size": loss.style_size,
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


FORMATS = {"safetensors": ".safetensors", "onnx": ".onnx", "torchscript": ".torchscript.pt"}
_LEGACY_SUFFIXES = (".pth", ".model")


def load_source(path: str | Path) -> tuple[TransformerNet, dict[str, Any]]:
    """(net, metadata) from a Lightning checkpoint, an fst model file or a fast_neural_style state dict."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        net, meta = load_model(path)
        return net, {k: v for k, v in meta.items() if k not in ("format", "architecture", "fst_version", "preprocessing")}
    if suffix in _LEGACY_SUFFIXES:
        from fst.nets.legacy import load_legacy_model

        net, meta = load_legacy_model(path)
        return net, {k: v for k, v in meta.items() if k != "architecture"}
    return net_from_checkpoint(path)


def default_output(source: str | Path, fmt: str) -> Path:
    source = Path(source)
    return source.with_name(source.name.split(".")[0] + FORMATS[fmt])


def export_model(
    source: str | Path, out: str | Path | None = None, fmt: str = "safetensors", verify: bool = True
) -> tuple[Path, float | None]:
    """Export ``source`` to ``out`` in ``fmt``; returns (path, max error vs eager, None if unchecked)."""
    if fmt not in FORMATS:
        raise FstError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = Path(out) if out else default_output(source, fmt)
    if out.exists() and Path(source).exists() and out.resolve() == Path(source).resolve():
        raise FstError(f"{out}: refusing to overwrite the source model; pass -o")
    net, meta = load_source(source)
    if fmt == "safetensors":
        return save_model(net, out, meta), None
    from fst.nets.export_formats import export_onnx, export_torchscript

    header = full_metadata(net, meta)
    if fmt == "onnx":
        return export_onnx(net, out, header, verify=verify)
    return export_torchscript(net, out, header, verify=verify)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fst.train.export", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="Lightning checkpoint, fst .safetensors model or fast_neural_style .pth")
    parser.add_argument("-o", "--output", help="file to write (default: next to SOURCE, suffix by format)")
    parser.add_argument("--format", choices=list(FORMATS), default="safetensors", help="default: %(default)s")
    parser.add_argument("--no-verify", action="store_true", help="skip the ONNX/TorchScript vs eager check")
    args = parser.parse_args(argv)
    try:
        path, error = export_model(args.source, args.output, args.format, verify=not args.no_verify)
    except FstError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if error is not None:
        print(f"verified: max |{args.format} - eager| = {error:.2e} at input sizes "
              f"{', '.join('x'.join(map(str, s)) for s in _verify_shapes())}", file=sys.stderr)
    print(path)
    return 0


def _verify_shapes() -> tuple[tuple[int, ...], ...]:
    from fst.nets.export_formats import VERIFY_SHAPES

    return VERIFY_SHAPES


if __name__ == "__main__":
    sys.exit(main())
