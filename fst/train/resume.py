"""Auto-resume: which checkpoint a rerun continues from, and whether its config still matches.

A run directory holds ``config.yaml`` (the resolved config it started with),
``checkpoints/`` (``last.ckpt`` and the periodic ``step_NNNNNN.ckpt``) and, once training
reached its step count and the model was exported, ``finished.json``. Rerunning the same
command with the same directory (``hydra.run.dir=DIR``, or ``resume=auto``, which finds
the newest run of the same style with the same config) continues from the newest
checkpoint that loads and holds only finite numbers; an unreadable one is named in one
line and the one before it is used.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from fst.errors import FstError
from fst.fsutil import atomic_write_text
from fst.train.reliability import checkpoint_non_finite

CONFIG_FILE = "config.yaml"
FINISHED_FILE = "finished.json"
CHECKPOINT_DIR = "checkpoints"
# Keys that may differ between the runs of one directory: how to resume, not what to train.
IGNORED_KEYS = ("resume", "ckpt_path", "paths.output_dir")
_STEP_FILE = re.compile(r"step_(\d+)\.ckpt$")


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: tree}


def resolved(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every setting that differs (keys in :data:`IGNORED_KEYS` aside)."""
    a, b = flatten(old), flatten(new)
    diffs = []
    for key in sorted(set(a) | set(b)):
        if any(key == k or key.startswith(k + ".") for k in IGNORED_KEYS):
            continue
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            diffs.append(f"{key}: {a.get(key, '<unset>')} -> {b.get(key, '<unset>')}")
    return diffs


def read_config(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise FstError(f"{path}: unreadable ({exc}); pass a new hydra.run.dir") from None


def checkpoint_step(path: Path) -> int | None:
    match = _STEP_FILE.search(path.name)
    return int(match.group(1)) if match else None


def load_checkpoint_if_sound(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(checkpoint, None) when ``path`` loads and holds only finite numbers, else (None, why)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, corrupt or foreign: all mean "skip it"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return None, f"unreadable ({reason[:120]})"
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "global_step" not in ckpt:
        return None, "not a Lightning training checkpoint"
    bad = checkpoint_non_finite(ckpt)
    if bad is not None:
        return None, f"{bad} is not finite"
    return ckpt, None


def find_resume_checkpoint(ckpt_dir: Path) -> tuple[Path, int] | None:
    """The newest sound checkpoint in ``ckpt_dir`` and its global step, or None.

    Candidates: ``last.ckpt`` and every ``step_N.ckpt``, newest (highest step) first; one
    that does not load is named in a warning line and the next one is tried.
    """
    if not ckpt_dir.is_dir():
        return None
    periodic = sorted((p for p in ckpt_dir.glob("step_*.ckpt") if checkpoint_step(p) is not None),
                      key=checkpoint_step, reverse=True)
    last = ckpt_dir / "last.ckpt"
    best: tuple[Path, int] | None = None
    if last.is_file():
        ckpt, why = load_checkpoint_if_sound(last)
        if ckpt is None:
            print(f"warning: skipping {last}: {why}", file=sys.stderr, flush=True)
        else:
            best = (last, int(ckpt["global_step"]))
    for path in periodic:
        if best is not None and checkpoint_step(path) <= best[1]:  # type: ignore[operator]
            break
        ckpt, why = load_checkpoint_if_sound(path)
        if ckpt is None:
            print(f"warning: skipping {path}: {why}", file=sys.stderr, flush=True)
            continue
        return path, int(ckpt["global_step"])
    return best


def remove_stale_temporaries(ckpt_dir: Path) -> None:
    """Temporary files left by a process killed while writing a checkpoint."""
    for tmp in ckpt_dir.glob(".*.ckpt.*.tmp"):
        tmp.unlink(missing_ok=True)


def read_finished(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / FINISHED_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_finished(run_dir: Path, steps: int, model: Path | None) -> None:
    atomic_write_text(run_dir / FINISHED_FILE, json.dumps(
        {"steps": int(steps), "model": model.name if model else None}, indent=1) + "\n")
