"""Hydra callbacks for ``python -m fst.train -m ...`` (wired in configs/hydra/default.yaml).

- ``RefuseMultirunDdp``: stops a sweep of multi-device DDP jobs before the first job starts.
- ``JoblibJobSetup``: under ``hydra/launcher=joblib``, DataLoader workers and one GPU per
  parallel job (fst.sweep.gpu_slots).
- ``BuildSweepReport``: the contact sheet and table, once every job has finished; then
  one ``error:`` line and exit status 1 if any job failed.

All three do nothing in single-run mode.
"""

from __future__ import annotations

import logging
import multiprocessing
import sys
from pathlib import Path
from typing import Any, NoReturn

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from fst.errors import EXIT_FAILED, EXIT_USAGE
from fst.sweep import gpu_slots
from fst.sweep.job import multirun_device_problem

log = logging.getLogger(__name__)


def _is_multirun(config: DictConfig) -> bool:
    return OmegaConf.select(config, "hydra.mode") == RunMode.MULTIRUN


class RefuseMultirunDdp(Callback):
    """One clear line and exit status 2 instead of a sweep that re-launches itself per GPU rank."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        problem = multirun_device_problem(config.trainer)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            raise SystemExit(EXIT_USAGE)  # not an Exception: Hydra would only warn about it


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
    """Writes contact_sheet.png, sweep_report.md and sweep_report.csv into the sweep dir.

    The sweep's outcome is reported here too: when a job failed (or the report could not
    be built) one ``error:`` line, and the process ends with exit status 1.
    """

    def __init__(self, photos: int, size: int, device: str) -> None:
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
            self._fail(f"the sweep report for {sweep_dir} could not be built ({exc}); "
                       f"retry with fst sweep-report {sweep_dir}")
        print(f"sweep report: {report.markdown}")
        print(f"contact sheet: {report.contact_sheet}")
        failed = [job for job in report.jobs if job.status != "completed"]
        if failed:
            self._fail(f"{len(failed)} of {len(report.jobs)} sweep jobs failed "
                       f"(job {', '.join(str(j.num) for j in failed)}); see {report.markdown}")

    @staticmethod
    def _fail(message: str) -> NoReturn:
        print(f"error: {message}", file=sys.stderr)
        # Not an Exception: Hydra turns those into warnings. The last thing a sweep does.
        raise SystemExit(EXIT_FAILED)
