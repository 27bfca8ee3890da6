"""One GPU per parallel sweep job (``hydra/launcher=joblib``).

Joblib runs jobs in a pool of worker processes that are reused from job to job. Before a
worker first touches CUDA, the job it runs claims a free GPU slot (an exclusive file lock,
``filelock.FileLock``, on ``<sweep dir>/.gpu_slots/gpu<ID>-<i>.lock``) and sets
``CUDA_VISIBLE_DEVICES`` to that GPU alone, so Lightning's ``devices=1`` means "this job's
GPU". CUDA reads the variable once per process, so a worker stays bound to its GPU: its
later jobs wait for a slot on that same GPU. Slots are released when a job ends and by the
OS if a worker dies. A job prefers GPU ``job_num % n_gpus``; with more workers than slots
the extra ones wait, so each GPU runs ``jobs_per_gpu`` jobs at a time. Without GPUs nothing
happens and jobs run on the CPU.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from itertools import takewhile
from pathlib import Path

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)

LOCK_DIR_NAME = ".gpu_slots"


def visible_gpus() -> list[str]:
    """The GPU ids this process may use, without initialising CUDA."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        # CUDA ignores everything from the first invalid (negative) id on: "-1" hides all GPUs.
        ids = [d.strip() for d in env.split(",") if d.strip()]
        return list(takewhile(lambda d: not d.startswith("-"), ids))
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]  # NVML-based: CUDA stays uninitialised


@dataclass
class Slot:
    """A claimed GPU slot: held until :meth:`release` (or until the process ends)."""

    gpu: str
    path: Path
    lock: FileLock | None = field(default=None, repr=False)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


class GpuSlots:
    """``jobs_per_gpu`` lock files per GPU under ``lock_dir``."""

    def __init__(self, lock_dir: Path, gpus: list[str], jobs_per_gpu: int = 1) -> None:
        if not gpus:
            raise ValueError("no GPUs to share out")
        self.lock_dir = Path(lock_dir)
        self.gpus = list(gpus)
        self.jobs_per_gpu = max(1, int(jobs_per_gpu))

    def _path(self, gpu: str, index: int) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in gpu)
        return self.lock_dir / f"gpu{safe}-{index}.lock"

    def _try(self, gpu: str, index: int, block: bool) -> Slot | None:
        path = self._path(gpu, index)
        # thread_local=False: the slot belongs to the process, whichever thread releases it.
        lock = FileLock(path, thread_local=False)
        try:
            lock.acquire(timeout=-1 if block else 0)
        except Timeout:
            return None
        return Slot(gpu, path, lock)

    def acquire(self, job_num: int, bound: str | None = None, block: bool = True) -> Slot | None:
        """A free slot, preferring GPU ``job_num % n``; only GPU ``bound`` if given.

        With every candidate slot taken: waits for the preferred one when ``block``,
        else returns None.
        """
        if bound is not None:
            order = [bound]
        else:
            start = job_num % len(self.gpus)
            order = self.gpus[start:] + self.gpus[:start]
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        for gpu in order:
            for index in range(self.jobs_per_gpu):
                slot = self._try(gpu, index, block=False)
                if slot is not None:
                    return slot
        if not block:
            return None
        log.info("job %d waits for a free slot on GPU %s", job_num, order[0])
        return self._try(order[0], job_num % self.jobs_per_gpu, block=True)


# Per process: the GPU list seen before pinning, the GPU this process is bound to, the held slot.
_pool: list[str] | None = None
_bound: str | None = None
_held: Slot | None = None


def pin_job(lock_dir: Path, job_num: int, jobs_per_gpu: int = 1) -> str | None:
    """Claim a GPU for this job and make it the only visible one; returns its id, or None
    when there is no GPU (or CUDA was already started in this process by something else)."""
    global _pool, _bound, _held
    release_job()
    if _bound is None:
        import torch

        if torch.cuda.is_initialized():
            log.warning("job %d: CUDA already started in this process; the job is not pinned to a GPU", job_num)
            return None
        _pool = visible_gpus()
    if not _pool:
        return None
    slot = GpuSlots(lock_dir, _pool, jobs_per_gpu).acquire(job_num, bound=_bound)
    assert slot is not None  # blocking acquire
    _held, _bound = slot, slot.gpu
    os.environ["CUDA_VISIBLE_DEVICES"] = slot.gpu
    log.info("job %d: GPU %s", job_num, slot.gpu)
    return slot.gpu


def release_job() -> None:
    """Free this process's GPU slot (it stays bound to the GPU for its next job)."""
    global _held
    if _held is not None:
        _held.release()
        _held = None
