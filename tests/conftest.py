"""Shared fixtures: the real Hydra configs, composed and shrunk for CPU tests."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from fst.resources import ASSETS_DIR, CONFIG_DIR
from fst.train.config import register_resolvers

ASSETS = ASSETS_DIR
TRAIN_PHOTOS = ASSETS / "photos" / "train"
VAL_PHOTOS = ASSETS / "photos" / "val"

# configs/debug/tiny.yaml: small enough for 2 CPU cores, large enough that every part runs for real.
TINY = ["debug=tiny"]


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """compose(overrides) of configs/train.yaml with debug=tiny and an output dir in tmp_path."""
    register_resolvers()

    def _compose(overrides: Sequence[str] = (), output_dir: Path | None = None) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="train", overrides=[*TINY, *overrides])
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir or tmp_path / "run")
        return cfg

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture
def photo_dir(tmp_path: Path) -> Path:
    """A folder of 4 real photos (4 = two batches of 2: one epoch ends every 2 steps)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for src in sorted((TRAIN_PHOTOS / "coco").glob("*.jpg"))[:4]:
        shutil.copy(src, folder / src.name)
    return folder


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a test module with one torch thread (for modules of tiny networks), then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
