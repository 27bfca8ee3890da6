"""Lightning callbacks: end-of-run export of the model file, and the expected training time."""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from fst.errors import FstError
from fst.nets.model_file import save_model
from fst.resources import PACKAGE_DIR
from fst.train.checkpoint import module_metadata
from fst.train.reliability import first_non_finite

log = logging.getLogger(__name__)


class ExportModel(pl.Callback):
    """Writes ``model.safetensors`` when training ends (rank 0 only).

    ``schedule`` (from the config: steps, batch, crop size, photos, precision) goes into the
    model's metadata as ``training``, with the wall time of this run and the machine, so
    every model file says what made it.
    """

    def __init__(self, path: str, schedule: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.schedule = dict(schedule or {})
        self.written: Path | None = None
        self._started: float | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A run stopped by a signal is not finished: its rerun exports the model.
        if any(getattr(c, "preempted", False) for c in trainer.callbacks):
            return
        self.export(trainer, pl_module)

    def export(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Write the model file (rank 0), after checking that every weight is finite."""
        if not trainer.is_global_zero:
            return
        bad = first_non_finite(pl_module.net.state_dict().items())
        if bad is not None:
            raise FstError(f"not exporting {self.path}: weight {bad} is not finite at step {trainer.global_step}")
        meta = module_metadata(pl_module, trainer.global_step)
        meta["training"] = {
            **{k: _portable(v) for k, v in self.schedule.items()},
            "wall_minutes_this_run": None if self._started is None else round((time.perf_counter() - self._started) / 60, 1),
            "machine": _machine(trainer),
        }
        self.written = save_model(pl_module.net, self.path, meta)
        log.info("exported model: %s", self.written)


def _portable(value: Any) -> Any:
    """A path inside the installed package as ``fst/...``, any other path as its last two parts."""
    if isinstance(value, str) and os.sep in value:
        path = Path(value)
        try:
            return "fst/" + path.resolve().relative_to(PACKAGE_DIR).as_posix()
        except ValueError:
            return "/".join(path.parts[-2:])
    return value


def _machine(trainer: pl.Trainer) -> str:
    import torch

    if trainer.accelerator.__class__.__name__.lower().startswith("cuda") and torch.cuda.is_available():
        return f"{trainer.num_devices} x {torch.cuda.get_device_name(0)}"
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


class TrainingTimeEstimate(pl.Callback):
    """Prints, once the first ``after_steps`` steps are timed, how long the whole run will take.

    The first steps pay one-off costs (allocations, data workers starting), so the rate is
    taken over the steps after ``warmup_steps``. Rank 0 only; one line on stderr.
    """

    def __init__(self, warmup_steps: int = 3, after_steps: int = 10) -> None:
        self.warmup_steps = warmup_steps
        self.after_steps = after_steps
        self._started: float | None = None
        self._start_step = 0
        self.seconds_per_step: float | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not trainer.is_global_zero or self.seconds_per_step is not None:
            return
        step = trainer.global_step
        if self._started is None:
            if step >= self._start_step + self.warmup_steps or trainer.max_steps <= self.after_steps:
                self._started, self._start_step = time.perf_counter(), step
            return
        if step - self._start_step < self.after_steps:
            return
        self.seconds_per_step = (time.perf_counter() - self._started) / (step - self._start_step)
        left = max(0, trainer.max_steps - step) * self.seconds_per_step
        print(f"expected: {trainer.max_steps} steps at {self.seconds_per_step:.2f} s/step, "
              f"about {left / 60:.1f} min left", file=sys.stderr, flush=True)
