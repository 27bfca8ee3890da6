"""ONNX and TorchScript exports of a TransformerNet, each checked against eager PyTorch.

Both trace the network's own forward pass, which reads every size off a tensor, so the
graphs take any batch size, height and width (``image``: float32 N x 3 x H x W in [0, 1],
RGB) and return the stylized image of the same shape. The fst metadata travels inside
the file: ONNX ``metadata_props["fst_metadata"]``, TorchScript extra file
``fst_metadata.json``.

A multi-style network (fst.nets.conditional_norm) takes a second input, ``style``: float32
weights of shape (num_styles,), one per style in the order of the metadata's ``styles``
(a one-hot vector for one style, weights summing to 1 for a blend). Its check against
eager runs each shape with a pure style, another pure style and a blend.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from fst.errors import FstError
from fst.fsutil import atomic_path
from fst.nets.transformer import TransformerNet

ONNX_OPSET = 17
ONNX_METADATA_KEY = "fst_metadata"
TORCHSCRIPT_METADATA_FILE = "fst_metadata.json"
# Largest |exported - eager| accepted, on the [0, 1] output scale (1/255 is one 8-bit level).
EXPORT_TOLERANCE = 1e-4
# Shapes checked after export: two sizes, the second odd-sized and batched, so a graph
# that baked in the tracing shape fails.
VERIFY_SHAPES: tuple[tuple[int, int, int, int], ...] = ((1, 3, 96, 128), (2, 3, 75, 131))


def verify_styles(net: TransformerNet) -> list[torch.Tensor | None]:
    """The style inputs an export is checked with: [None] for a single-style net; else the
    first and the last style alone and a blend of all (weights 1..S, normalised)."""
    n = net.config.num_styles
    if not n:
        return [None]
    blend = torch.arange(1, n + 1, dtype=torch.float32)
    return [torch.eye(n)[0], torch.eye(n)[n - 1], blend / blend.sum()]


def example_inputs(net: TransformerNet, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The inputs a trace of ``net`` takes: (image,) or, for a multi-style net, (image, style)."""
    styles = verify_styles(net)
    return (image,) if styles[0] is None else (image, styles[-1])


def check_against_eager(
    net: TransformerNet, run: Callable[..., torch.Tensor], what: str,
    shapes: Sequence[tuple[int, int, int, int]] = VERIFY_SHAPES, tolerance: float = EXPORT_TOLERANCE,
) -> float:
    """Largest |run(x) - net(x)| over random inputs of ``shapes`` (and, for a multi-style net,
    |run(x, style) - net(x, style)| over :func:`verify_styles`); FstError above ``tolerance``."""
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for shape in shapes:
        x = torch.rand(*shape, generator=generator)
        for style in verify_styles(net):
            inputs = (x,) if style is None else (x, style)
            with torch.no_grad():
                expected = net(*inputs)
            got = run(*inputs)
            if tuple(got.shape) != tuple(expected.shape):
                raise FstError(f"{what}: output shape {tuple(got.shape)} for input {shape}, "
                               f"expected {tuple(expected.shape)}")
            worst = max(worst, float((got - expected).abs().max()))
    if worst > tolerance:
        raise FstError(f"{what}: differs from eager PyTorch by {worst:.2e} (tolerance {tolerance:.0e})")
    return worst


def export_onnx(
    net: TransformerNet, out: str | Path, metadata: dict[str, Any], opset: int = ONNX_OPSET, verify: bool = True
) -> tuple[Path, float | None]:
    """Write ``net`` as ONNX with dynamic batch/height/width; returns (path, max error vs eager or None)."""
    import onnx

    out = Path(out)
    net = net.float().cpu().eval()
    with atomic_path(out) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation/tracer notes
            inputs = example_inputs(net, torch.rand(1, 3, 64, 64))
            torch.onnx.export(
                net,
                inputs,
                str(tmp),
                dynamo=False,  # the dynamo exporter needs onnxscript; this one needs nothing extra
                input_names=["image", "style"][: len(inputs)],
                output_names=["stylized"],
                dynamic_axes={name: {0: "batch", 2: "height", 3: "width"} for name in ("image", "stylized")},
                opset_version=opset,
            )
        model = onnx.load(str(tmp))
        entry = model.metadata_props.add()
        entry.key, entry.value = ONNX_METADATA_KEY, json.dumps(metadata)
        onnx.checker.check_model(model)
        onnx.save(model, str(tmp))
        error = _verify_onnx(net, tmp) if verify else None
    return out, error


def _verify_onnx(net: TransformerNet, path: Path) -> float | None:
    try:
        import onnxruntime as ort
    except ImportError:
        warnings.warn("onnxruntime is not installed: the ONNX export was not checked against PyTorch", stacklevel=3)
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(image: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        feeds = {"image": image.numpy()} if style is None else {"image": image.numpy(), "style": style.numpy()}
        return torch.from_numpy(session.run(None, feeds)[0])

    return check_against_eager(net, run, f"{path.name} (ONNX Runtime)")


def export_torchscript(
    net: TransformerNet, out: str | Path, metadata: dict[str, Any], verify: bool = True
) -> tuple[Path, float | None]:
    """Write a traced TorchScript module (any input size); returns (path, max error vs eager or None)."""
    if not hasattr(torch.jit, "trace"):
        raise FstError("this PyTorch build has no TorchScript (torch.jit.trace); use --format onnx")
    out = Path(out)
    net = net.float().cpu().eval()
    with atomic_path(out) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit deprecation and tracer notes on shape reads
            traced = torch.jit.trace(net, example_inputs(net, torch.rand(1, 3, 64, 64)), check_trace=False)
            torch.jit.save(traced, str(tmp), _extra_files={TORCHSCRIPT_METADATA_FILE: json.dumps(metadata)})
            error = None
            if verify:
                loaded = torch.jit.load(str(tmp), map_location="cpu")
                error = check_against_eager(net, lambda *x: loaded(*x).detach(), f"{out.name} (TorchScript)")
    return out, error
