"""Lightning callbacks: end-of-run export of the model file, and the expected training time."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from fst.nets.model_file import save_model
from fst.train.checkpoint import module_metadata

log = logging.getLogger(__name__)


class ExportModel(pl.Callback):
    """Writes ``model.safetensors`` when training ends (rank 0 only)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.written: Path | None = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self.written = save_model(pl_module.net, self.path, module_metadata(pl_module, trainer.global_step))
        log.info("exported model: %s", self.written)


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
