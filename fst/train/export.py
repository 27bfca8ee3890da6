"""Model export: a Lightning checkpoint or a model file -> a self-contained model file.

``fst export SOURCE [-o OUT] [--format safetensors|onnx|torchscript]``

SOURCE is a Lightning checkpoint written by fst.train, an fst ``.safetensors`` model
(to convert it) or a pytorch/examples fast_neural_style ``.pth``/``.model`` state dict.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from fst.errors import ArgumentParser, FstError, run_command
from fst.nets.legacy import LEGACY_SUFFIXES
from fst.nets.model_file import MODEL_SUFFIX, full_metadata, load, save_model, without_header
from fst.nets.transformer import TransformerNet
from fst.train.checkpoint import net_from_checkpoint

FORMATS = {"safetensors": ".safetensors", "onnx": ".onnx", "torchscript": ".torchscript.pt"}


def load_source(path: str | Path) -> tuple[TransformerNet, dict[str, Any]]:
    """(net, training metadata) from a Lightning checkpoint, an fst model file or a fast_neural_style state dict."""
    if Path(path).suffix.lower() in (MODEL_SUFFIX, *LEGACY_SUFFIXES):
        net, meta = load(path)
        return net, without_header(meta)
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
    parser = ArgumentParser(prog="fst export", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="Lightning checkpoint, fst .safetensors model or fast_neural_style .pth")
    parser.add_argument("-o", "--output", help="file to write (default: next to SOURCE, suffix by format)")
    parser.add_argument("--format", choices=list(FORMATS), default="safetensors", help="default: %(default)s")
    parser.add_argument("--no-verify", action="store_true", help="skip the ONNX/TorchScript vs eager check")
    args = parser.parse_args(argv)
    path, error = export_model(args.source, args.output, args.format, verify=not args.no_verify)
    if error is not None:
        print(f"verified: max |{args.format} - eager| = {error:.2e} at input sizes "
              f"{', '.join('x'.join(map(str, s)) for s in _verify_shapes())}", file=sys.stderr)
    print(path)
    return 0


def _verify_shapes() -> tuple[tuple[int, ...], ...]:
    from fst.nets.export_formats import VERIFY_SHAPES

    return VERIFY_SHAPES


if __name__ == "__main__":
    sys.exit(run_command(main))
