"""Where fst finds what it ships and where it keeps what it fetches: every such path, in one place.

Shipped with the package (so a wheel installed anywhere finds them): the Hydra configs,
the bundled paintings and example photos, and the bundled models. Fetched or trained
later: ``$FST_HOME`` (default ``~/.cache/fst``) holds the VGG16 weights cache and
``$FST_HOME/models``, searched for models by name after ``$FST_MODELS``.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CONFIG_DIR = PACKAGE_DIR / "configs"
ASSETS_DIR = PACKAGE_DIR / "assets"
STYLES_DIR = ASSETS_DIR / "styles"
TRAIN_PHOTOS_DIR = ASSETS_DIR / "photos" / "train"
VAL_PHOTOS_DIR = ASSETS_DIR / "photos" / "val"
BUNDLED_MODELS_DIR = PACKAGE_DIR / "checkpoints"

HOME_ENV = "FST_HOME"
MODELS_ENV = "FST_MODELS"


def fst_home() -> Path:
    """``$FST_HOME``, else ``~/.cache/fst`` (not created here)."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".cache" / "fst").expanduser()


def user_models_dir() -> Path:
    """Where trained or downloaded models go to be found by name."""
    return fst_home() / "models"


def model_search_dirs() -> list[Path]:
    """Where bare model names are looked up, in order: ``$FST_MODELS``, ``$FST_HOME/models``, bundled."""
    dirs = [Path(p).expanduser() for p in os.environ.get(MODELS_ENV, "").split(os.pathsep) if p]
    return [*dirs, user_models_dir(), BUNDLED_MODELS_DIR]


def bundled_style(name: str) -> Path:
    """The bundled painting called ``name`` (``starry_night`` ...)."""
    return STYLES_DIR / f"{name}.jpg"
