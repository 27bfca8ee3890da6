"""Lightning callbacks: end-of-run export of the model file, the expected training time, and a
progress file with a preview image for whoever watches a run (``fst app``)."""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from fst.errors import FstError
from fst.fsutil import atomic_path, atomic_write_text
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


class ProgressFile(pl.Callback):
    """Keeps ``progress.json`` and ``preview.png`` in the run folder up to date (rank 0, atomic writes).

    ``progress.json``: step, max_steps, the last training loss, the last validation loss,
    seconds since the start and per step; written every ``every_n_steps`` steps and at
    the first and last. ``preview.png``: the first validation photos above their stylized
    versions, at each validation. A watcher reads them without touching the training.
    """

    PROGRESS_FILE = "progress.json"
    PREVIEW_FILE = "preview.png"

    def __init__(self, dirpath: str, every_n_steps: int = 10) -> None:
        self.dirpath = Path(dirpath)
        self.every_n_steps = max(1, int(every_n_steps))
        self._started: float | None = None
        self._start_step = 0
        self._loss: float | None = None
        self._val_loss: float | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started, self._start_step = time.perf_counter(), trainer.global_step
        self._write(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step % self.every_n_steps and step != 1 and step < trainer.max_steps:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            self._loss = float(loss)
        self._write(trainer)

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx or dataloader_idx or trainer.sanity_checking or not trainer.is_global_zero:
            return
        import torch
        from torchvision.utils import make_grid

        from fst.images import tensor_to_pil

        with torch.no_grad():
            # A multi-style module previews every style (fst.train.multistyle), one row each.
            preview = getattr(pl_module, "preview", None)
            stylized = (preview(batch) if callable(preview) else pl_module.net(batch)).clamp(0, 1)
        grid = make_grid(torch.cat([batch, stylized]).float().cpu(), nrow=batch.shape[0], padding=2)
        with atomic_path(self.dirpath / self.PREVIEW_FILE) as tmp:
            tensor_to_pil(grid).save(tmp, format="PNG")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get("val/total")
        if value is not None:
            self._val_loss = float(value)
        self._write(trainer)

    def _write(self, trainer: pl.Trainer) -> None:
        if not trainer.is_global_zero:
            return
        step = trainer.global_step
        elapsed = 0.0 if self._started is None else time.perf_counter() - self._started
        done = step - self._start_step
        atomic_write_text(self.dirpath / self.PROGRESS_FILE, json.dumps({
            "step": step, "max_steps": int(trainer.max_steps), "loss": self._loss, "val_loss": self._val_loss,
            "elapsed_s": round(elapsed, 1), "s_per_step": round(elapsed / done, 3) if done > 0 else None,
            "time": time.time(),
        }) + "\n")
