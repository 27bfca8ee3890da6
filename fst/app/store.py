"""The app's data folder: where uploads, results, training runs and job records go.

Layout (default ``$FST_HOME/app``, or ``fst app --data DIR``)::

    uploads/   files as the browser sent them (Gradio's upload cache)
    results/   one folder per stylize request: the outputs and their zip
    runs/      one folder per training: what ``python -m fst.train`` writes (log, checkpoints, progress)
    jobs/      one JSON record per training (what, when, state, final losses)
    styles/    the painting of each model trained here
    samples/   thumbnails shown on the Models tab (style image, a sample output)

Every path the app writes is built from names it checked (:func:`check_model_name`,
:func:`safe_stem`) under this folder; a finished model is the one file written elsewhere,
to ``$FST_HOME/models/NAME.safetensors``.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from fst.errors import FstError
from fst.resources import fst_home

SUBDIRS = ("uploads", "results", "runs", "jobs", "styles", "samples")
# Stylize results are kept for downloading; older request folders are removed beyond this many.
KEEP_RESULT_FOLDERS = 100
MODEL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,47}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def default_data_dir() -> Path:
    """``$FST_HOME/app``."""
    return fst_home() / "app"


@dataclass(frozen=True)
class AppData:
    """The data folder, created with its subfolders."""

    root: Path

    @classmethod
    def at(cls, root: str | Path | None = None) -> AppData:
        path = Path(root).expanduser() if root else default_data_dir()
        try:
            path.mkdir(parents=True, exist_ok=True)
            path = path.resolve()
            for sub in SUBDIRS:
                (path / sub).mkdir(exist_ok=True)
        except OSError as exc:
            raise FstError(f"{path}: cannot use as the app's data folder ({exc.strerror or exc})") from None
        return cls(path)

    @property
    def uploads(self) -> Path:
        return self.root / "uploads"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def styles(self) -> Path:
        return self.root / "styles"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    def inside(self, path: str | Path) -> Path:
        """``path`` resolved; FstError unless it lies in the data folder."""
        resolved = Path(path).resolve()
        if not resolved.is_relative_to(self.root):
            raise FstError(f"{path}: outside the app's data folder {self.root}")
        return resolved

    def new_result_folder(self) -> Path:
        """A fresh folder under ``results/`` (named by time, then random), after pruning old ones."""
        self.prune_results()
        folder = self.results / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"
        folder.mkdir()
        return folder

    def prune_results(self, keep: int = KEEP_RESULT_FOLDERS) -> None:
        folders = sorted((p for p in self.results.iterdir() if p.is_dir()), key=lambda p: p.name)
        for old in folders[: max(0, len(folders) - keep + 1)]:
            shutil.rmtree(old, ignore_errors=True)


def check_model_name(name: str) -> str:
    """``name`` stripped, if it can name a model file and a Hydra override; FstError otherwise."""
    name = (name or "").strip()
    if not name:
        raise FstError("give the new style a name")
    if not MODEL_NAME_RE.fullmatch(name):
        raise FstError(f"model name {name!r}: use up to 48 letters, digits, '_' or '-', starting with a letter or digit")
    return name


def safe_stem(filename: str, fallback: str = "image") -> str:
    """A file name's stem reduced to letters, digits, '.', '_' and '-' (at most 60): safe to write under."""
    stem = _UNSAFE.sub("_", Path(os.path.basename(filename or "")).stem).strip("._")[:60]
    return stem or fallback


def unique_path(folder: Path, stem: str, suffix: str) -> Path:
    """``folder/stem.suffix``, or ``stem-2``, ``stem-3`` ... if taken."""
    path, n = folder / f"{stem}{suffix}", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}{suffix}"
    return path
