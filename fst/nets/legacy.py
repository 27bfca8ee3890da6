"""Import of state dicts saved by the pytorch/examples ``fast_neural_style`` project.

Their network is the same architecture as :class:`~fst.nets.transformer.TransformerNet`
with ``upsample="resize_conv"`` (nearest x2 then a reflection-padded conv), under other
key names, and it works on 0-255 images with no output head. Because the first and the
last layers are plain convolutions, the 0-255 scaling folds exactly into their weights:
``conv(255 x) = (255 W) x + b`` on the way in and ``conv(h) / 255 = (W/255) h + b/255``
on the way out. The imported net is therefore an ordinary TransformerNet on [0, 1]
images (head ``clamp``, as they clamp to 0-255 when saving), so tiling, ONNX export and
the rest work on it unchanged.

One behavioural difference: they upsample by a fixed factor 2, we upsample to the
encoder's exact size. Outputs agree for heights and widths divisible by 4; for other
sizes their network changes the image size and ours keeps it.

Files are read with ``torch.load(weights_only=True)``: tensors and plain containers
only, never code.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from fst.errors import FstError
from fst.nets.transformer import TransformerNet, TransformerNetConfig

# Their module names -> ours, for every layer outside the residual blocks.
_TOP_LEVEL = {
    "conv1.conv2d": "enc1.conv",
    "in1": "enc1.norm",
    "conv2.conv2d": "enc2.conv",
    "in2": "enc2.norm",
    "conv3.conv2d": "enc3.conv",
    "in3": "enc3.norm",
    "deconv1.conv2d": "up1.conv",
    "in4": "up1.norm",
    "deconv2.conv2d": "up2.conv",
    "in5": "up2.norm",
    "deconv3.conv2d": "conv_out",
}
# Inside residual block ``resK`` (K from 1).
_RESIDUAL = {"conv1.conv2d": "block1.conv", "in1": "block1.norm", "conv2.conv2d": "block2.conv", "in2": "block2.norm"}
# Instance-norm running statistics that old torch versions stored; the layers never use them.
_STRAY_STATS = re.compile(r"(^|\.)in\d+\.(running_mean|running_var|num_batches_tracked)$")
_RESIDUAL_KEY = re.compile(r"^res(\d+)\.(.+)\.(weight|bias)$")
_PIXEL_SCALE = 255.0
# What their training script and its forks save to (``.pt`` is also TorchScript's, refused below).
LEGACY_SUFFIXES = (".pth", ".model", ".pt")


def is_legacy_state_dict(state: Any) -> bool:
    """True when ``state`` looks like a pytorch/examples TransformerNet state dict."""
    return isinstance(state, dict) and "conv1.conv2d.weight" in state and "deconv3.conv2d.weight" in state


def map_key(key: str) -> str | None:
    """Our parameter name for one of their keys; None for keys we do not know."""
    module, _, param = key.rpartition(".")
    if param not in ("weight", "bias"):
        return None
    if module in _TOP_LEVEL:
        return f"{_TOP_LEVEL[module]}.{param}"
    match = _RESIDUAL_KEY.match(key)
    if match and int(match[1]) >= 1 and match[2] in _RESIDUAL:
        return f"residuals.{int(match[1]) - 1}.{_RESIDUAL[match[2]]}.{param}"
    return None


def convert_state_dict(state: dict[str, torch.Tensor], source: str = "state dict") -> TransformerNet:
    """Build the equivalent [0, 1]-range TransformerNet from their state dict.

    Width and number of residual blocks are read off the tensors; every key must map
    and every shape must match, otherwise FstError names the first offending key.
    """
    if not is_legacy_state_dict(state):
        raise FstError(f"{source}: not a fast_neural_style state dict (no conv1.conv2d / deconv3.conv2d weights)")
    kept = {k: v for k, v in state.items() if not _STRAY_STATS.search(k)}
    for key, value in kept.items():
        if not isinstance(value, torch.Tensor):
            raise FstError(f"{source}: entry {key!r} is not a tensor")
    width = int(kept["conv1.conv2d.weight"].shape[0])
    blocks = {int(m[1]) for k in kept if (m := _RESIDUAL_KEY.match(k))}
    num_residual = max(blocks, default=0)
    if blocks != set(range(1, num_residual + 1)):
        raise FstError(f"{source}: residual blocks are not numbered res1..resN (found {sorted(blocks)})")

    net = TransformerNet(TransformerNetConfig(width=width, num_residual=num_residual, upsample="resize_conv", output_head="clamp"))
    ours = net.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in kept.items():
        target = map_key(key)
        if target is None or target not in ours:
            raise FstError(f"{source}: unexpected key {key!r} for a fast_neural_style network")
        if tuple(value.shape) != tuple(ours[target].shape):
            raise FstError(
                f"{source}: key {key!r} has shape {tuple(value.shape)}, expected {tuple(ours[target].shape)} "
                f"for width {width}"
            )
        mapped[target] = value.detach().float()
    missing = sorted(set(ours) - set(mapped))
    if missing:
        raise FstError(f"{source}: missing weights for {missing[0]} ({len(missing)} missing in all)")

    mapped["enc1.conv.weight"] = mapped["enc1.conv.weight"] * _PIXEL_SCALE
    mapped["conv_out.weight"] = mapped["conv_out.weight"] / _PIXEL_SCALE
    mapped["conv_out.bias"] = mapped["conv_out.bias"] / _PIXEL_SCALE
    net.load_state_dict(mapped)
    return net.eval()


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 1)[-1].startswith(("code/", "constants.pkl")) for name in archive.namelist())


def load_legacy_model(path: str | Path) -> tuple[TransformerNet, dict[str, Any]]:
    """Read a ``.pth`` / ``.model`` file without executing code; returns (net, metadata)."""
    path = Path(path)
    if not path.is_file():
        raise FstError(f"{path}: no such model file")
    if _is_torchscript(path):
        raise FstError(f"{path}: a TorchScript export (for torch.jit.load in other programs); "
                       "fst reads .safetensors, .onnx or fast_neural_style .pth files")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every unpickling failure means "refused"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FstError(f"{path}: refused to load: not a plain tensor state dict ({first_line})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict) and not is_legacy_state_dict(state):
        state = state["state_dict"]
    net = convert_state_dict(state, source=str(path))
    meta = {
        "style_name": path.stem,
        "source": "pytorch/examples fast_neural_style",
        "architecture": net.config.to_dict(),
    }
    return net, meta

