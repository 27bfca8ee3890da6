"""Every option of every config group composes, resolves and instantiates.

What can be built without data or a GPU is built: the datamodule object (it reads
nothing before setup), the loss, the LightningModule with its net, the optimizer and
scheduler, the callbacks, the loggers, the sweep job wrapper, and the Trainer for options
that run on the CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from fst.loss.perceptual import PerceptualLoss
from fst.resources import CONFIG_DIR
from fst.train.config import group_options, register_resolvers
from fst.train.module import StyleTransferModule
from fst.train.multistyle import MultiStyleModule

# Hydra's own groups (hydra/launcher=...) come with its plugins and are not fst's.
GROUPS = sorted(
    p.relative_to(CONFIG_DIR).as_posix() for p in CONFIG_DIR.rglob("*")
    if p.is_dir() and p.relative_to(CONFIG_DIR).parts[0] != "hydra"
)
CASES = [(group, option) for group in GROUPS for option in group_options(group)]
# Small painting: the Gram targets of each style are computed for real, quickly.
SMALL = ["style.size=64"]
_losses: dict[str, PerceptualLoss] = {}


def test_every_documented_group_has_options() -> None:
    for group in ("style", "model", "model/scheduler", "loss", "data", "trainer", "callbacks", "logger",
                  "experiment", "debug"):
        assert group in GROUPS and group_options(group), group


def _compose(overrides: list[str], output_dir: Path) -> DictConfig:
    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


def _vgg_available(spec: str) -> bool:
    if spec != "torchvision":
        return True
    return (Path(torch.hub.get_dir()) / "checkpoints" / "vgg16-397923af.pth").is_file()  # no downloads here


def _loss(cfg: DictConfig) -> PerceptualLoss | None:
    node = OmegaConf.to_container(cfg.loss, resolve=True)
    if not _vgg_available(node["vgg_weights"]):
        assert get_object(node["_target_"]) is PerceptualLoss
        return None
    key = json.dumps(node, sort_keys=True)
    if key not in _losses:
        _losses[key] = instantiate(cfg.loss)
        assert _losses[key].config == node  # what model files record: the resolved node itself
    return _losses[key]


@pytest.mark.parametrize(("group", "option"), CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_option_composes_and_instantiates(group: str, option: str, tmp_path: Path) -> None:
    overrides = [f"{group}={option}", *SMALL]
    cfg = _compose(overrides, tmp_path)
    assert cfg.hydra.runtime.choices[group] == option
    with open_dict(cfg):
        del cfg["hydra"]
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves

    assert isinstance(instantiate(cfg.data), pl.LightningDataModule)  # reads nothing before setup()
    loss = _loss(cfg)
    if loss is not None:
        module = instantiate(cfg.model, loss=loss)
        assert isinstance(module, StyleTransferModule) and module.style_name == cfg.model.style_name
        if isinstance(module, MultiStyleModule):  # model=multistyle: styles=bundled by default
            assert module.style_names == group_options("style") and module.net.config.num_styles == 6
        else:
            assert module.style_name == cfg.style.name
        optimizers = module.configure_optimizers()
        if cfg.model.scheduler is None:
            assert isinstance(optimizers, torch.optim.Optimizer)
        else:
            scheduler = optimizers["lr_scheduler"]["scheduler"]
            assert isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler)
            assert scheduler.optimizer is optimizers["optimizer"]
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c]
    assert callbacks and all(isinstance(c, pl.Callback) for c in callbacks)
    loggers = [instantiate(c) for c in cfg.logger.values() if c]
    assert callable(instantiate(cfg.sweep.job))
    accelerator = cfg.trainer.accelerator
    if accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()):
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
        assert isinstance(trainer, pl.Trainer) and all(c in trainer.callbacks for c in callbacks)


def test_the_small_model_is_johnsons_network_narrower_and_shallower(tmp_path: Path) -> None:
    small = instantiate(_compose(["model=small", *SMALL], tmp_path).model.net)
    johnson = instantiate(_compose(["model=johnson", *SMALL], tmp_path).model.net)
    assert type(small) is type(johnson)
    assert (small.config.width, small.config.num_residual) == (12, 3)
    # The counts configs/model/small.yaml states, plus the tone conditioning's 12 numbers.
    assert small.config.tone and johnson.config.tone
    assert sum(p.numel() for p in small.parameters()) == 157_395 + 12
    assert sum(p.numel() for p in johnson.parameters()) == 1_679_235 + 12
