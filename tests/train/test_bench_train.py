"""scripts/bench_train.py and its pytorch/examples baseline: they run, compare like with like,
and fst's fast path (bf16 autocast + channels_last) computes the same losses as fp32."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fst.loss.weights import VGGWeights, load_vgg16_weights

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import baseline_fast_neural_style as baseline  # noqa: E402
import bench_train  # noqa: E402
from fst.loss.vgg import VGG16Features  # noqa: E402

# bf16 keeps 8 mantissa bits (relative step 2^-8 = 0.4%). Through the net and 10 VGG convs
# the per-term error of the losses measured here stays below 1%; 3% leaves room for other
# inputs and CPUs while still catching a wrong layer, layout or dtype (those move terms by
# far more than 3%).
BF16_LOSS_RTOL = 3e-2
# The whole net's gradient under bf16 vs fp32: measured cosine 0.991 at 64x64 (the
# per-tensor cosines that are low belong to conv biases followed by instance norm, whose
# true gradient is zero, so they are pure rounding noise and weigh nothing in the norm).
BF16_GRAD_MIN_COSINE = 0.98
# channels_last changes only the summation order of fp32 convolutions.
CHANNELS_LAST_LOSS_RTOL = 1e-4


def test_bench_train_runs_both_steps_and_prints_the_ratio(tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    cmd = [sys.executable, str(SCRIPTS / "bench_train.py"), "--device", "cpu", "--size", "32", "--batch", "1",
           "--iters", "2", "--warmup", "1", "--blocks", "2", "--threads", "1", "--style-size", "64",
           "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = re.search(r"size 32 batch 1: fst ([\d.]+) img/s \| baseline ([\d.]+) img/s \| ratio ([\d.]+)x", proc.stdout)
    assert line, proc.stdout
    fst_ips, base_ips, ratio = map(float, line.groups())
    assert fst_ips > 0 and base_ips > 0
    assert ratio == pytest.approx(fst_ips / base_ips, rel=0.02, abs=0.01)
    record = json.loads(out.read_text().splitlines()[-1])
    assert record["size"] == 32 and record["precision"] == "fp32" and record["iters"] == 2
    assert len(record["fst_block_img_per_s"]) == 2 and len(record["baseline_block_img_per_s"]) == 2
    assert record["ratio"] == pytest.approx(record["fst_img_per_s"] / record["baseline_img_per_s"])


def _fst_pair(weights: VGGWeights, fast: dict, size: int) -> tuple[dict, dict, torch.Tensor]:
    """Loss terms of one net and photo batch through the fp32 NCHW path and a ``fast`` path,
    and the cosine between the two paths' gradients of the whole net."""
    photos = bench_train.photo_batch(2, size)
    reference = bench_train.FstStep(weights, torch.device("cpu"), "fp32", False, False, False, style_size=128)
    other = bench_train.FstStep(weights, torch.device("cpu"), compile_net=False, compile_loss=False,
                                style_size=128, **fast)
    other.module.net.load_state_dict(reference.module.net.state_dict())
    terms = []
    for step in (reference, other):
        terms.append({k: v.detach() for k, v in step.terms(photos).items()})
    grads = []
    for step in (reference, other):
        step.terms(photos)["total"].backward()
        grads.append(torch.cat([p.grad.flatten() for p in step.module.net.parameters()]))
    return terms[0], terms[1], torch.nn.functional.cosine_similarity(*grads, dim=0)


def _assert_terms_close(ref: dict, got: dict, rtol: float) -> None:
    assert ref.keys() == got.keys()
    for key, value in ref.items():
        assert got[key].dtype == torch.float32, key  # losses always come back in fp32
        assert torch.isfinite(got[key]), key
        torch.testing.assert_close(got[key], value, rtol=rtol, atol=0.0, msg=lambda m, k=key: f"{k}: {m}")


def test_bf16_channels_last_losses_match_fp32() -> None:
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.nn.functional.conv2d(torch.ones(1, 1, 3, 3), torch.ones(1, 1, 1, 1))
    except RuntimeError as exc:  # pragma: no cover - depends on the CPU build
        pytest.skip(f"bf16 autocast unsupported on this CPU build: {exc}")
    ref, fast, grad_cosine = _fst_pair(load_vgg16_weights("caffe"), {"precision": "bf16", "channels_last": True}, 64)
    assert ref["total"] > 0
    _assert_terms_close(ref, fast, BF16_LOSS_RTOL)
    assert grad_cosine >= BF16_GRAD_MIN_COSINE


def test_channels_last_fp32_losses_match_nchw() -> None:
    ref, cl, grad_cosine = _fst_pair(load_vgg16_weights("caffe"), {"precision": "fp32", "channels_last": True}, 48)
    _assert_terms_close(ref, cl, CHANNELS_LAST_LOSS_RTOL)
    assert grad_cosine >= 0.9999


def test_baseline_vgg_slices_are_fst_taps_with_imagenet_input() -> None:
    # Same tensors through the example's torchvision-layout slices (0-255 input, /255,
    # ImageNet mean/std) and through fst's VGG16Features told the input is ImageNet-style:
    # equal activations prove the slices end at relu1_2, relu2_2, relu3_3 and relu4_3.
    state = load_vgg16_weights("caffe").state_dict
    taps = ["relu1_2", "relu2_2", "relu3_3", "relu4_3"]
    fst_vgg = VGG16Features(taps, VGGWeights(state, "imagenet", "test"))
    example_vgg = baseline.ExampleVGG16(state)
    photos = bench_train.photo_batch(1, 40)
    with torch.no_grad():
        expected = fst_vgg(photos)
        got = example_vgg(baseline.example_normalise(photos * 255.0))
    for tap, tensor in zip(taps, got):
        torch.testing.assert_close(tensor, expected[tap], rtol=1e-4, atol=1e-3)


def test_baseline_gram_and_normalisation_follow_the_example() -> None:
    f = torch.arange(12.0).reshape(1, 3, 2, 2)
    flat = f.reshape(3, 4)
    torch.testing.assert_close(baseline.example_gram(f)[0], flat @ flat.T / 12)
    batch = torch.full((1, 3, 1, 1), 255.0)
    out = baseline.example_normalise(batch)
    assert batch.max() == 1.0  # divided in place, as the example does
    expected = (1 - torch.tensor(baseline.IMAGENET_MEAN)) / torch.tensor(baseline.IMAGENET_STD)
    torch.testing.assert_close(out.flatten(), expected)


def test_baseline_step_trains_its_net() -> None:
    torch.manual_seed(0)
    style = bench_train.photo_batch(1, 32)[0] * 255.0
    trainer = baseline.BaselineTrainer(style, 2, load_vgg16_weights("caffe").state_dict, "cpu")
    photos = bench_train.photo_batch(2, 32) * 255.0
    before = [p.detach().clone() for p in trainer.net.parameters()]
    first = trainer.step(photos.clone())
    assert torch.isfinite(first) and first > 0
    assert trainer.content_total > 0 and trainer.style_total > 0
    after = dict(trainer.net.named_parameters())
    names = [name for name, _ in trainer.net.named_parameters()]
    for name in ("down.0.conv.weight", "residuals.2.conv_a.conv.weight", "out.conv.weight", "out.conv.bias"):
        assert not torch.equal(before[names.index(name)], after[name]), name
    assert trainer.net(photos).shape == photos.shape  # the example's net keeps the size (even sizes)


def test_gram_nhwc_experiment_computes_fst_gram() -> None:
    # The GPU run's candidate Gram must be the same function, only reading memory differently.
    from fst.loss.perceptual import gram_matrix

    f = torch.randn(2, 8, 5, 7)
    for t in (f, f.contiguous(memory_format=torch.channels_last),
              f.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)):
        got = bench_train.gram_matrix_nhwc(t)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, gram_matrix(t), rtol=1e-5, atol=1e-5)
