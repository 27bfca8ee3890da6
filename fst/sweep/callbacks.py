"""Hydra callbacks for ``python -m fst.train -m ...`` (wired in configs/hydra/default.yaml).

- ``RefuseMultirunDdp``: stops a sweep of multi-device DDP jobs before the first job starts.
- ``JoblibJobSetup``: under ``hydra/launcher=joblib``, DataLoader workers and one GPU per
  parallel job (fst.sweep.gpu_slots).
- ``BuildSweepReport``: the contact sheet and table, once every job has finished.

All three do nothing in single-run mode.
"""

from __future__ import annotations

import logging
import multiprocessing
import sys
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from fst.sweep import gpu_slots
from fst.sweep.job import multirun_device_problem

log = logging.getLogger(__name__)

# Outcome of the sweeps finished in this process, for the exit status of fst.train.
_failed: list[str] = []


def _is_multirun(config: DictConfig) -> bool:
    return OmegaConf.select(config, "hydra.mode") == RunMode.MULTIRUN


class RefuseMultirunDdp(Callback):
    """One clear line and exit status 2 instead of a sweep that re-launches itself per GPU rank."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        problem = multirun_device_problem(config.trainer)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            raise SystemExit(2)  # not an Exception: Hydra would print it with a traceback


class JoblibJobSetup(Callback):
    """Jobs of a joblib sweep run in loky worker processes: give them the platform's own
    multiprocessing start method back (loky's cannot start DataLoader workers) and pin each
    job to one GPU (``jobs_per_gpu`` jobs share a GPU)."""

    def __init__(self, jobs_per_gpu: int = 1) -> None:
        self.jobs_per_gpu = jobs_per_gpu

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not _is_multirun(config) or "joblib" not in str(OmegaConf.select(config, "hydra.launcher._target_")):
            return  # sequential and cluster launchers need neither: SLURM allocates GPUs itself
        platform_default = multiprocessing.get_all_start_methods()[0]
        if multiprocessing.get_start_method(allow_none=True) != platform_default:
            multiprocessing.set_start_method(platform_default, force=True)
        if str(OmegaConf.select(config, "trainer.accelerator", default="auto")) == "cpu":
            return
        lock_dir = Path(str(config.hydra.sweep.dir)) / gpu_slots.LOCK_DIR_NAME
        gpu_slots.pin_job(lock_dir, int(config.hydra.job.num), self.jobs_per_gpu)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        gpu_slots.release_job()


class BuildSweepReport(Callback):
    """Writes contact_sheet.png, sweep_report.md and sweep_report.csv into the sweep dir."""

    def __init__(self, photos: int = 3, size: int = 192, device: str = "cpu") -> None:
        self.photos = photos
        self.size = size
        self.device = device

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from fst.sweep.report import build_report  # torch + PIL work only once the jobs are done

        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            report = build_report(sweep_dir, count=self.photos, size=self.size, device=self.device)
        except Exception as exc:  # noqa: BLE001 - the jobs' results are on disk either way
            log.exception("sweep report for %s failed", sweep_dir)
            _failed.append(f"the sweep report for {sweep_dir} could not be built ({exc}); "
                           f"retry with python -m fst.sweep.report {sweep_dir}")
            return
        print(f"sweep report: {report.markdown}")
        print(f"contact sheet: {report.contact_sheet}")
        failed = [job for job in report.jobs if job.status != "completed"]
        if failed:
            _failed.append(f"{len(failed)} of {len(report.jobs)} sweep jobs failed "
                           f"(job {', '.join(str(j.num) for j in failed)}); see {report.markdown}")


def sweep_failure_message() -> str | None:
    """Why the sweeps run in this process should exit non-zero (failed jobs), or None."""
    return "; ".join(_failed) or None
