"""Fault injection for the reliability tests (``debug=faults``); never configured in normal runs.

Each fault fires at a given global step:

* ``kill_at_steps``: SIGKILL this process at the end of each listed step (before that step's
  checkpoint), once per step: the kills that fired are listed in ``record`` (a file in the
  run folder), so the same command, rerun, dies at the next listed step;
* ``kill_during_save_at_step``: SIGKILL halfway through writing that step's ``last.ckpt``
  (its periodic checkpoint is whole: a rerun continues from it and passes that step);
* ``signal_at_step``: send this process SIGTERM (or ``signal_name``) during that step;
* ``nan_at_step``: make the style term of the loss NaN at that step;
* ``enospc_at_step``: fail that step's checkpoint write with "No space left on device".
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from fst.train.reliability import AtomicCheckpointIO


class FaultInjection(pl.Callback):
    def __init__(
        self,
        kill_at_steps: Sequence[int] | None = None,
        kill_during_save_at_step: int | None = None,
        signal_at_step: int | None = None,
        signal_name: str = "SIGTERM",
        nan_at_step: int | None = None,
        enospc_at_step: int | None = None,
        record: str | None = None,
    ) -> None:
        self.kill_at_steps = sorted(int(s) for s in kill_at_steps or ())
        self.kill_during_save_at_step = kill_during_save_at_step
        self.signal_at_step = signal_at_step
        self.signal_name = signal_name
        self.nan_at_step = nan_at_step
        self.enospc_at_step = enospc_at_step
        self.record = Path(record) if record else None
        self._forward: Any = None

    def _fired(self) -> set[str]:
        return set(self.record.read_text().split()) if self.record and self.record.is_file() else set()

    def _kill(self, what: str) -> None:
        """SIGKILL this process, once per ``what`` (recorded first, synced, so a rerun goes past it)."""
        if what in self._fired():
            return
        if self.record is not None:
            self.record.parent.mkdir(parents=True, exist_ok=True)
            with open(self.record, "a") as fh:
                fh.write(what + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        io = trainer.strategy.checkpoint_io
        if isinstance(io, AtomicCheckpointIO):
            io.fault_hook = self._while_saving

    def _while_saving(self, step: int, path: Path) -> None:
        if step == self.enospc_at_step:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if step == self.kill_during_save_at_step and path.name == "last.ckpt":
            self._kill(f"save:{step}")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        step = trainer.global_step + 1
        if step == self.signal_at_step:
            os.kill(os.getpid(), getattr(signal, self.signal_name))
        if step == self.nan_at_step:
            loss = pl_module.loss
            original = loss.forward

            def poisoned(*args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
                terms = dict(original(*args, **kwargs))
                terms["style"] = terms["style"] * float("nan")
                terms["total"] = terms["total"] + terms["style"]
                return terms

            loss.forward = poisoned
            self._forward = original

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._unpoison(pl_module)
        if trainer.global_step in self.kill_at_steps:
            self._kill(f"step:{trainer.global_step}")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._unpoison(pl_module)

    def _unpoison(self, pl_module: pl.LightningModule) -> None:
        if self._forward is not None:
            del pl_module.loss.forward
            self._forward = None
