"""The adversarial term in training (loss.adversarial_weight > 0): it trains under manual optimisation
with one global step per training step, its discriminator is checkpointed and resumed exactly, the
exported model holds the style network alone, and with the weight at 0 nothing changes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from conftest import VAL_PHOTOS
from fst import nets
from fst.errors import FstError
from fst.resources import ASSETS_DIR
from fst.train.config import instantiate
from fst.train.resume import load_checkpoint_if_sound
from fst.train.run import train

WEIGHT = "loss.adversarial_weight=0.5"
STEPS = 4


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Bitwise comparisons between runs need the same thread count."""


def common(photo_dir: Path, steps: int = STEPS) -> list[str]:
    return [f"data.root={photo_dir}", f"data.val_root={VAL_PHOTOS}", f"trainer.max_steps={steps}",
            "trainer.val_check_interval=2"]


def _checkpoint(path: Path) -> dict:
    ckpt, why = load_checkpoint_if_sound(path)
    assert ckpt is not None, f"{path}: {why}"
    return ckpt


def _prefixed(ckpt: dict, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and a
    for key, value in a.items():
        assert torch.equal(value, b[key]), (key, (value - b[key]).abs().max())


def test_weight_zero_builds_no_discriminator_and_trains_as_without_one(compose_cfg, photo_dir: Path,
                                                                       tmp_path: Path) -> None:
    plain = train(compose_cfg([*common(photo_dir), "~model/discriminator"], output_dir=tmp_path / "plain"))
    default = train(compose_cfg(common(photo_dir), output_dir=tmp_path / "default"))
    a = _checkpoint(tmp_path / "plain" / "checkpoints" / "last.ckpt")
    b = _checkpoint(tmp_path / "default" / "checkpoints" / "last.ckpt")
    assert not _prefixed(b, "discriminator.") and len(b["optimizer_states"]) == 1
    _assert_same_state(a["state_dict"], b["state_dict"])
    _assert_same_state(a["optimizer_states"][0]["state"][0], b["optimizer_states"][0]["state"][0])
    assert plain["metrics"]["train/total"] == default["metrics"]["train/total"]
    assert "train/adversarial" not in default["metrics"]


def test_adversarial_term_trains_both_networks_and_exports_the_style_network_alone(compose_cfg, photo_dir: Path,
                                                                                  tmp_path: Path) -> None:
    cfg = compose_cfg([*common(photo_dir), WEIGHT], output_dir=tmp_path / "run")
    initial = instantiate(cfg.model, loss=instantiate(cfg.loss))  # same seed: the weights training starts from
    result = train(cfg)
    assert result["global_step"] == STEPS  # the discriminator's steps are not global steps
    metrics = result["metrics"]
    for key in ("train/adversarial", "train/discriminator", "train/discriminator/real_logit",
                "train/discriminator/fake_logit", "train/total", "val/total"):
        assert key in metrics and torch.isfinite(torch.tensor(metrics[key])), key
    # The generator's total is the perceptual terms plus the adversarial one.
    perceptual = sum(metrics[f"train/{k}"] for k in ("content", "style", "tv", "palette", "tone"))
    assert metrics["train/total"] == pytest.approx(perceptual + metrics["train/adversarial"], rel=1e-5)

    ckpt = _checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == STEPS
    assert len(ckpt["optimizer_states"]) == 2 and len(ckpt["lr_schedulers"]) == 1
    assert ckpt["lr_schedulers"][0]["last_epoch"] == STEPS  # stepped once per training step
    disc = _prefixed(ckpt, "discriminator.")
    assert any(k.endswith("._u") for k in disc)  # spectral norm's power-iteration state
    start = {f"discriminator.{k}": v for k, v in initial.discriminator.state_dict().items()}
    assert disc.keys() == start.keys()
    assert any(not torch.equal(disc[k], start[k]) for k in disc if k.endswith("original"))  # it trained
    net_start = {f"net.{k}": v for k, v in initial.net.state_dict().items()}
    assert any(not torch.equal(ckpt["state_dict"][k], v) for k, v in net_start.items())

    model = Path(result["model_path"])
    with safe_open(str(model), "pt") as fh:
        keys = list(fh.keys())
    net, meta = nets.load(model)
    assert sorted(keys) == sorted(net.state_dict()) and not any("discriminator" in k for k in keys)
    assert meta["loss"]["adversarial_weight"] == 0.5
    _assert_same_state(net.state_dict(), {k[len("net."):]: v for k, v in _prefixed(ckpt, "net.").items()})


def test_adversarial_run_resumes_exactly_after_a_stop(compose_cfg, photo_dir: Path, tmp_path: Path) -> None:
    overrides = ["debug=faults", *common(photo_dir), WEIGHT, "callbacks.model_checkpoint.every_n_train_steps=1"]
    stopped = compose_cfg([*overrides, "callbacks.fault_injection.signal_at_step=2"], output_dir=tmp_path / "stopped")
    first = train(stopped)
    assert first["preempted"] and first["global_step"] == 2 and first["model_path"] is None
    resumed = train(compose_cfg([*overrides, "callbacks.fault_injection.signal_at_step=2"],
                                output_dir=tmp_path / "stopped"))
    assert resumed["global_step"] == STEPS and resumed["model_path"]
    clean = train(compose_cfg(overrides, output_dir=tmp_path / "clean"))
    a = _checkpoint(tmp_path / "stopped" / "checkpoints" / "last.ckpt")
    b = _checkpoint(tmp_path / "clean" / "checkpoints" / "last.ckpt")
    _assert_same_state(a["state_dict"], b["state_dict"])  # network and discriminator, spectral-norm vectors too
    for opt_a, opt_b in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        for index, state in opt_b["state"].items():
            _assert_same_state(opt_a["state"][index], state)
    _assert_same_state(nets.load(resumed["model_path"])[0].state_dict(), nets.load(clean["model_path"])[0].state_dict())


def test_several_paintings_and_refused_settings(compose_cfg, photo_dir: Path, tmp_path: Path) -> None:
    paintings = [ASSETS_DIR / "styles" / "starry_night.jpg", ASSETS_DIR / "styles" / "the_wave.jpg"]
    cfg = compose_cfg([*common(photo_dir), WEIGHT, f"+style.images=[{paintings[0]},{paintings[1]}]"])
    module = instantiate(cfg.model, loss=instantiate(cfg.loss))
    assert module.painting_crops.paths == [str(p) for p in paintings]
    assert module.painting_crops.crop == cfg.data.image_size

    with pytest.raises(FstError, match="gradient_clip_val=1.0: gradient clipping is not available"):
        train(compose_cfg([*common(photo_dir), WEIGHT, "+trainer.gradient_clip_val=1.0"], output_dir=tmp_path / "c"))
    with pytest.raises(FstError, match="needs a discriminator: model/discriminator=patch"):
        instantiate(compose_cfg([WEIGHT, "~model/discriminator"]).model, loss=instantiate(cfg.loss))
    with pytest.raises(FstError, match="objective=wasserstein"):
        instantiate(compose_cfg([WEIGHT, "model.discriminator.objective=wasserstein"]).model,
                    loss=instantiate(cfg.loss))
