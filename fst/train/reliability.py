"""Training that survives: atomic checkpoints, a non-finite guard, preemption signals, RNG state.

* :class:`AtomicCheckpointIO` writes every checkpoint to a temporary file beside it, syncs
  it and renames it into place, so a kill at any moment leaves the previous file whole;
  a full disk keeps the previous checkpoint and stops with one clear line; a checkpoint
  holding a non-finite tensor is never written.
* :class:`NonFiniteGuard` checks the loss terms and the gradients of every step before the
  optimizer sees them: ``policy=stop`` ends the run naming the step and the term,
  ``policy=skip`` drops that step's update (up to ``max_skips`` steps in all).
* :class:`Preemption` turns SIGTERM and SIGUSR1 into a checkpoint at the next step
  boundary and a clean stop; under SLURM, SIGUSR1 (``sbatch --signal``) also requeues the job.
* :class:`RngState` carries the random number generators' state in checkpoints and puts it
  back at the first step after a resume.

See docs/reliability.md for what is promised and which test proves each.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import random
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint

from fst.errors import FstError
from fst.fsutil import atomic_path

log = logging.getLogger(__name__)

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def first_non_finite(named: Iterable[tuple[str, Any]]) -> str | None:
    """The name of the first floating tensor in ``named`` with a NaN or Inf, else None."""
    for name, value in named:
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return name
    return None


def _tensors(tree: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(tree, torch.Tensor):
        yield prefix, tree
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from _tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from _tensors(value, f"{prefix}.{i}")


def checkpoint_non_finite(checkpoint: dict[str, Any]) -> str | None:
    """The first non-finite tensor among a checkpoint's weights and optimizer state, else None."""
    return first_non_finite(
        [*_tensors(checkpoint.get("state_dict", {}), "state_dict"),
         *_tensors(checkpoint.get("optimizer_states", []), "optimizer_states")]
    )


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file, synced, then renamed over the old one.

    Lightning's own writer goes through an fsspec transaction whose temporary file lives in
    the system temp folder (moved into place: a copy, not a rename, across filesystems),
    and neither syncs the file nor tells a full disk from other errors; this one writes
    beside the target, syncs, names a full disk, and refuses
    to write non-finite weights. ``fault_hook`` (tests only, set by
    :class:`fst.train.faults.FaultInjection`) is called with the step and path once half of the
    bytes are written.
    """

    def __init__(self) -> None:
        super().__init__()
        self.fault_hook: Callable[[int, Path], None] | None = None

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        path = Path(path)
        step = int(checkpoint.get("global_step", -1))
        bad = checkpoint_non_finite(checkpoint)
        if bad is not None:
            raise FstError(f"refusing to write checkpoint {path} at step {step}: {bad} is not finite")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        data = buffer.getbuffer()
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                half = len(data) // 2
                fh.write(data[:half])
                if self.fault_hook is not None:
                    self.fault_hook(step, path)
                fh.write(data[half:])
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            if exc.errno in DISK_FULL_ERRNOS:
                kept = [p.name for p in sorted(path.parent.glob("*.ckpt"))]
                raise FstError(
                    f"disk full while writing checkpoint {path} at step {step}; the previous checkpoints are "
                    f"kept ({', '.join(kept) or 'none yet'}): free space (or set keep_last_n) and rerun the "
                    "same command to continue"
                ) from None
            raise
        fsync_dir(path.parent)


class PeriodicCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that keeps only the newest ``keep_last_n`` periodic checkpoints (-1: all).

    Older ``step_N.ckpt`` files (numbered by global step) are removed only after the new
    one is whole on disk; ``last.ckpt`` is kept besides. (Lightning's own ``save_top_k``
    needs a monitored metric, which defers saves at epoch ends to validation.)
    """

    def __init__(self, *args: Any, keep_last_n: int = -1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.keep_last_n = int(keep_last_n)

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        if self.keep_last_n < 0 or not trainer.is_global_zero or self.dirpath is None:
            return
        numbered = sorted((int(m.group(1)), p) for p in Path(self.dirpath).glob("*.ckpt")
                          if (m := _STEP_NAME.fullmatch(p.name)))
        for _, old in numbered[: max(0, len(numbered) - self.keep_last_n)]:
            if old.resolve() != Path(filepath).resolve():
                old.unlink(missing_ok=True)


_STEP_NAME = re.compile(r"step_(\d+)\.ckpt")


class NonFiniteGuard(pl.Callback):
    """Stops (or skips) a step whose loss or gradients hold a NaN or Inf, before the weights change.

    Checked in ``on_before_optimizer_step``: the loss terms of the step (kept by the
    LightningModule as ``last_terms``) and every gradient. ``policy=stop`` raises an
    FstError naming the step and the term (or parameter), so the last checkpoint on disk
    holds the last good weights; ``policy=skip`` drops the update and raises only after
    ``max_skips`` skipped steps. The decision is shared across ranks under DDP.
    """

    def __init__(self, policy: str = "stop", max_skips: int = 10) -> None:
        if policy not in ("stop", "skip"):
            raise FstError(f"nan_policy must be stop or skip, got {policy!r}")
        self.policy = policy
        self.max_skips = int(max_skips)
        self.skipped = 0

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        terms = getattr(pl_module, "last_terms", None) or {}
        # (With fp16's GradScaler, Inf gradients are its business: it skips those steps itself.)
        check_grads = getattr(trainer.precision_plugin, "scaler", None) is None
        grads = [(n, p.grad) for n, p in pl_module.named_parameters() if p.grad is not None] if check_grads else []
        # One device-to-host sync per step: all terms and gradient norms checked at once.
        parts = [v.detach().float().reshape(-1) for v in terms.values()
                 if isinstance(v, torch.Tensor) and v.is_floating_point()]
        parts += [g.detach().float().norm().reshape(1) for _, g in grads]
        what = None
        if parts and not bool(torch.isfinite(torch.cat(parts)).all()):
            bad_term = first_non_finite(terms.items())
            if bad_term is not None:
                what = f"loss term '{bad_term}' is {_describe(terms[bad_term])}"
            else:
                what = f"gradient of {first_non_finite(grads) or 'the network (norm overflow)'} is not finite"
        bad = trainer.strategy.reduce_boolean_decision(what is not None, all=False)
        if not bad:
            return
        step = trainer.global_step + 1  # the step being taken (global_step counts finished ones)
        what = what or "a non-finite value on another rank"
        if self.policy == "skip" and self.skipped < self.max_skips:
            self.skipped += 1
            for group in optimizer.param_groups:
                for param in group["params"]:
                    param.grad = None
            print(f"warning: step {step}: {what}; update skipped ({self.skipped} of at most {self.max_skips})",
                  file=sys.stderr, flush=True)
            return
        limit = f" after {self.skipped} skipped steps (nan_max_skips={self.max_skips})" if self.policy == "skip" else ""
        raise FstError(f"non-finite training at step {step}: {what}{limit}; stopped with the last finite "
                       "weights in the last checkpoint")

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))


def _describe(value: torch.Tensor) -> str:
    return "NaN" if bool(torch.isnan(value).any()) else "Inf"


class Preemption(pl.Callback):
    """SIGTERM / SIGUSR1: save ``last.ckpt`` at the next step boundary and stop cleanly.

    The signal only sets a flag; the checkpoint is written between two steps, where
    the weights, optimizer and data position agree. Under SLURM the requeue signal
    (SIGUSR1, sent ``--signal`` seconds before the time limit) also requeues the job with
    ``scontrol requeue``, as Lightning's SLURM auto-requeue does, but from the step
    boundary rather than from inside the signal handler. Replaces Lightning's own handlers
    for these two signals while training; they are put back when training ends.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, requeue: bool = True) -> None:
        self.requeue = requeue
        self.received: int | None = None
        self.stopped_at: int | None = None
        self.saved: Path | None = None
        self._previous: dict[int, Any] = {}

    @property
    def preempted(self) -> bool:
        return self.stopped_at is not None

    def _handler(self, signum: int, frame: Any) -> None:
        self.received = signum

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            if handler is not None:
                signal.signal(sig, handler)
        self._previous = {}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            return
        if trainer.global_step >= trainer.max_steps > 0:
            return  # the run ends at this step anyway, with its final checkpoint and model
        name = signal.Signals(self.received).name if self.received else "a signal on another rank"
        path = preemption_checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        self.saved, self.stopped_at = path, trainer.global_step
        trainer.should_stop = True
        if trainer.is_global_zero:
            print(f"{name}: checkpoint saved at step {trainer.global_step} to {path}; stopping",
                  file=sys.stderr, flush=True)
            if self.requeue and self.received == signal.SIGUSR1 and os.environ.get("SLURM_JOB_ID"):
                requeue_slurm_job()


def preemption_checkpoint_path(trainer: pl.Trainer) -> Path:
    """``last.ckpt`` in the folder of the run's ModelCheckpoint (or ``checkpoints/`` under the root dir)."""
    checkpoint = trainer.checkpoint_callback
    dirpath = getattr(checkpoint, "dirpath", None) or os.path.join(trainer.default_root_dir, "checkpoints")
    return Path(dirpath) / "last.ckpt"


def requeue_slurm_job() -> None:
    """``scontrol requeue`` this job (an array task by its array id), as Lightning's auto-requeue does."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job_id = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]
    if not re.fullmatch(r"[0-9_]+", job_id):
        print(f"warning: not requeueing: odd SLURM job id {job_id!r}", file=sys.stderr)
        return
    try:
        result = subprocess.call(["scontrol", "requeue", job_id])
    except FileNotFoundError:
        result = 127
    print(f"SLURM job {job_id} {'requeued' if result == 0 else f'not requeued (scontrol exit {result})'}",
          file=sys.stderr, flush=True)


class RngState(pl.Callback):
    """Saves torch (CPU and CUDA), numpy and Python RNG states in checkpoints; restores them
    at the first training step after a resume (after the data loaders were set up, as in
    an uninterrupted run)."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        np_state = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": _to_lists(random.getstate()),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        state, self._pending = self._pending, None
        if not state:
            return
        torch.set_rng_state(state["torch"])
        if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
        random.setstate(_to_tuples(state["python"]))


def _to_lists(value: Any) -> Any:
    return [_to_lists(v) for v in value] if isinstance(value, (list, tuple)) else value


def _to_tuples(value: Any) -> Any:
    return tuple(_to_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
