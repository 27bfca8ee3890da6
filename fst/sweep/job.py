"""One job of a Hydra multirun sweep: device check, run, and the ``summary.json`` the sweep
report is built from.

fst.train runs every multirun job through the ``sweep.job`` config node, by default
:func:`run_sweep_job`. Inside a sweep a job never raises: a failure is written to its
summary (status ``failed`` and the error) and the next job runs. Hydra's basic sweeper
would otherwise stop the sweep at the first failed job and skip the end-of-sweep report,
which is where failed jobs are reported (fst.sweep.callbacks.BuildSweepReport).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from fst.errors import FstError
from fst.fsutil import atomic_write_text

log = logging.getLogger(__name__)

SUMMARY_NAME = "summary.json"
SUMMARY_FORMAT = "fst.sweep.job/1"
LOSS_TERMS = ("total", "content", "style", "tv")
FINAL_LOSS_WINDOW = 50  # final losses: mean over this many last training steps
# Config values every job reports to TensorBoard's hparams view, besides its own overrides.
CORE_HPARAMS = (
    "style.name", "loss.content_weight", "loss.style_weight", "loss.tv_weight", "model.optimizer.lr",
    "model.net.width", "data.image_size", "data.batch_size", "trainer.max_steps",
)
# Strategies that start one process per device (Lightning re-runs the command for each).
_MULTI_PROCESS_STRATEGIES = ("ddp", "fsdp", "deepspeed")


def _requests_several(devices: Any) -> bool:
    if isinstance(devices, bool) or devices is None:
        return False
    if isinstance(devices, int):
        return devices > 1 or devices == -1
    if isinstance(devices, str):
        text = devices.strip()
        if text == "auto" or not text:
            return False
        if "," in text:
            return len([d for d in text.split(",") if d.strip()]) > 1
        return text == "-1" or (text.isdigit() and int(text) > 1)
    return len(list(devices)) > 1  # a list of device indices


def multirun_device_problem(trainer_cfg: Mapping[str, Any]) -> str | None:
    """Why this trainer config cannot run as one job of a multirun sweep, or None if it can."""
    strategy = trainer_cfg.get("strategy")
    strategy_text = str(OmegaConf.to_container(strategy) if OmegaConf.is_config(strategy) else strategy)
    devices = trainer_cfg.get("devices", 1)
    devices = OmegaConf.to_container(devices) if OmegaConf.is_config(devices) else devices
    num_nodes = int(trainer_cfg.get("num_nodes", 1) or 1)
    reasons = []
    if any(name in strategy_text.lower() for name in _MULTI_PROCESS_STRATEGIES):
        reasons.append(f"trainer.strategy={strategy_text}")
    if _requests_several(devices):
        reasons.append(f"trainer.devices={devices}")
    if num_nodes > 1:
        reasons.append(f"trainer.num_nodes={num_nodes}")
    if not reasons:
        return None
    return (
        f"multirun (-m) cannot train multi-device DDP jobs ({', '.join(reasons)}): Lightning starts one "
        "process per GPU by re-running the command, which would re-run the whole sweep in each of them. "
        "Sweep single-device jobs in parallel instead: -m hydra/launcher=joblib trainer=gpu ... "
        "(one GPU per job), or run DDP trainings one at a time without -m"
    )


def _scalar(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)


def _parse(override: str) -> Override | None:
    try:
        return OverridesParser.create().parse_overrides([override])[0]
    except HydraException:
        return None


def override_key(override: str) -> str:
    """``+loss.style_weight=10`` -> ``loss.style_weight``; ``style=udnie`` -> ``style``."""
    parsed = _parse(override)
    if parsed is None:
        return override.split("=", 1)[0].lstrip("+~")
    return parsed.key_or_group + (f"@{parsed.package}" if parsed.package else "")


def override_value(override: str) -> str:
    """The value of an override as text: ``data.root='/a b'`` -> ``/a b``; ``~key`` -> ``""``."""
    parsed = _parse(override)
    if parsed is None:
        return override.split("=", 1)[1] if "=" in override else ""
    if parsed.is_delete():
        return ""
    value = parsed.value()
    return value if isinstance(value, str) else parsed.get_value_element_as_str()


def job_hparams(cfg: DictConfig, overrides: Sequence[str]) -> dict[str, Any]:
    """The job's overrides (typed where the config has a plain value) plus the core settings."""
    params: dict[str, Any] = {}
    for key in CORE_HPARAMS:
        value = OmegaConf.select(cfg, key, default=None)
        if not OmegaConf.is_config(value):
            params[key] = _scalar(value)
    for override in overrides:
        key = override_key(override)
        value = OmegaConf.select(cfg, key, default=None) if not override.startswith("~") else None
        params[key] = _scalar(value) if value is not None and not OmegaConf.is_config(value) else override_value(override)
    return params


class FinalLosses(pl.Callback):
    """Final training losses (mean of the last ``window`` steps, so one odd batch does not
    decide a comparison) and, at train end, hyperparameters + those losses to TensorBoard's
    hparams view."""

    def __init__(self, hparams: Mapping[str, Any], window: int = FINAL_LOSS_WINDOW) -> None:
        self.hparams = dict(hparams)
        self.window = window
        self.recent: dict[str, deque] = {term: deque(maxlen=window) for term in LOSS_TERMS}
        self.losses: dict[str, float] = {}
        self.steps = 0
        self.averaged_steps = 0
        self.device: str | None = None
        self.val_photos: list[str] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.device = str(pl_module.device)  # by now the module sits on its training device
        files = getattr(trainer.datamodule, "val_files", None) or []
        self.val_photos = [str(Path(p).resolve()) for p in files]

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.steps = trainer.global_step
        for term, values in self.recent.items():
            value = trainer.callback_metrics.get(f"train/{term}")
            if value is not None:
                values.append(value.detach())  # kept on device: no host sync per step

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.steps = trainer.global_step
        self.losses = {term: float(torch.stack(list(v)).float().mean()) for term, v in self.recent.items() if v}
        self.averaged_steps = max((len(v) for v in self.recent.values()), default=0)
        if not trainer.is_global_zero or not self.losses:
            return
        metrics = {f"hp/final_{term}": value for term, value in self.losses.items()}
        for logger in trainer.loggers:
            if isinstance(logger, pl.loggers.TensorBoardLogger):
                logger.log_hyperparams(self.hparams, metrics=metrics, step=trainer.global_step)


def error_text(exc: BaseException, limit: int = 500) -> str:
    """One line: the message of a user-facing FstError, ``Type: message`` for anything else."""
    text = str(exc) if isinstance(exc, FstError) else f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def write_summary(output_dir: Path, summary: Mapping[str, Any]) -> Path:
    """Atomic write: the report never reads a half-written summary of a running job."""
    return atomic_write_text(output_dir / SUMMARY_NAME, json.dumps(summary, indent=2, sort_keys=False) + "\n")


def _relative(path: str | None, base: Path) -> str | None:
    if not path:
        return None
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(base.resolve()))
    except ValueError:
        return str(resolved)


def run_sweep_job(
    cfg: DictConfig,
    train_fn: Callable[..., dict[str, Any]],
    job_num: int | None = None,
    overrides: Sequence[str] | None = None,
) -> float | None:
    """Run ``train_fn(cfg, extra_callbacks=[...])`` as one sweep job; never raises ``Exception``.

    ``job_num`` and ``overrides`` (the job's own command-line overrides) default to the
    running Hydra job's. Writes ``summary.json`` in the job's output dir and returns the
    final total loss (None for a failed job).
    """
    if job_num is None or overrides is None:
        hydra_cfg = HydraConfig.get()
        job_num = int(hydra_cfg.job.num) if job_num is None else job_num
        overrides = list(hydra_cfg.overrides.task) if overrides is None else overrides
    output_dir = Path(str(cfg.paths.output_dir))
    tracker = FinalLosses(job_hparams(cfg, overrides))
    summary: dict[str, Any] = {
        "format": SUMMARY_FORMAT,
        "job": job_num,
        "overrides": list(overrides),
        "style_name": OmegaConf.select(cfg, "style.name", default=None),
        "status": "failed",
        "error": None,
    }
    start = time.perf_counter()
    result: dict[str, Any] = {}
    try:
        problem = multirun_device_problem(cfg.trainer)
        if problem:
            raise FstError(problem)
        result = train_fn(cfg, extra_callbacks=[tracker])
        summary["status"] = "completed"
    except Exception as exc:  # noqa: BLE001 - one failed job must not end the sweep
        summary["error"] = error_text(exc)
        if isinstance(exc, FstError):
            log.error("job %d failed: %s", job_num, summary["error"])
        else:
            log.exception("job %d failed", job_num)  # full traceback into the job's log file
    summary.update(
        steps=tracker.steps,
        wall_time_s=round(time.perf_counter() - start, 2),
        final_losses=tracker.losses,
        final_loss_steps=tracker.averaged_steps,
        metrics=result.get("metrics", {}),
        model=_relative(result.get("model_path"), output_dir),
        val_photos=tracker.val_photos,
        device=tracker.device,
        host=socket.gethostname(),
        pid=os.getpid(),
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
    )
    try:
        write_summary(output_dir, summary)
    except OSError as exc:
        log.error("job %d: could not write %s: %s", job_num, output_dir / SUMMARY_NAME, exc)
    if summary["status"] == "completed" and summary["model"]:
        print(f"model: {output_dir / summary['model']}")
    return tracker.losses.get("total")


@dataclass
class JobRecord:
    """One job directory of the sweep, as found on disk."""

    num: int
    dir: Path
    overrides: dict[str, str]
    status: str  # completed | failed | missing (no summary: crashed or still running)
    error: str | None = None
    steps: int | None = None
    wall_time_s: float | None = None
    losses: dict[str, float] = field(default_factory=dict)
    model: Path | None = None
    val_photos: list[Path] = field(default_factory=list)
    val_root: str | None = None
    style_name: str | None = None

    def value(self, key: str) -> str:
        return self.overrides.get(key, "")
