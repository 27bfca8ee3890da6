"""What the Train tab does, without the page: check the painting and name, start one training, follow it.

A training runs as ``python -m fst.app.runner`` (which runs ``python -m fst.train``) in a
new session and process group: closing the browser, or stopping and restarting the app,
leaves it running, and the runner installs the model when it ends. Cancel signals the
whole group. One training at a time (each uses every core): a second is refused with the
name and step of the one running. Progress, loss and the preview image come from the
files the training writes in its run folder (``fst.train.callbacks.ProgressFile``).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock
from PIL import Image

from fst.errors import FstError
from fst.fsutil import atomic_path
from fst.images import decode_image
from fst.infer.backends import available_models
from fst.resources import TRAIN_PHOTOS_DIR, VAL_PHOTOS_DIR, user_models_dir

from fst.app.jobs import (ACTIVE_STATES, LOG_FILE, PREVIEW_FILE, PROGRESS_FILE, RUNNER_MODULE, hydra_value, pid_alive,
                          read_json, tail, write_record)
from fst.app.store import AppData, check_model_name

# The trainer refuses paintings smaller than this on the short side (fst.train.run.MIN_STYLE_SIDE).
MIN_PAINTING_SIDE = 64
# Paintings are stored at most this large: training scales them to 256-512 px anyway.
MAX_PAINTING_SIDE = 1024
# A runner that has not written its first record this long after the start is taken as dead.
START_TIMEOUT_S = 120.0
# After Cancel, the app gives the runner this long to stop before it kills the group.
CANCEL_KILL_AFTER_S = 45.0


@dataclass(frozen=True)
class Schedule:
    """A training length offered on the Train tab: its label, the overrides, the step count."""

    key: str
    label: str
    overrides: tuple[str, ...]
    steps: int


SCHEDULES = {
    "quick": Schedule("quick", "Quick: 600 steps, about 10 min on a 2-core CPU", ("experiment=quick",), 600),
    "longer": Schedule("longer", "Longer: 2000 steps, about 30 min on a 2-core CPU",
                       ("experiment=quick", "trainer.max_steps=2000"), 2000),
}
# For tests and trying the set-up: a small network for a few steps (seconds; not a usable style).
TINY = Schedule("tiny", "Tiny test: 6 steps of a small network, seconds (checks the set-up; not a usable style)",
                ("debug=tiny", f"data.root={hydra_value(str(TRAIN_PHOTOS_DIR))}",
                 f"data.val_root={hydra_value(str(VAL_PHOTOS_DIR))}", "trainer.max_steps=6",
                 "trainer.val_check_interval=3", "callbacks.progress_file.every_n_steps=1"), 6)


@dataclass
class TrainingStatus:
    """The newest training as the page shows it."""

    record: dict[str, Any] | None
    progress: dict[str, Any]
    preview: Path | None
    log_tail: str

    @property
    def state(self) -> str:
        return self.record["state"] if self.record else "idle"

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


def read_painting(path: str | Path, name: str) -> Image.Image:
    """An uploaded painting, decoded and checked (size), at most MAX_PAINTING_SIDE on its long side."""
    path = Path(path)
    from fst.app.stylizing import DEFAULT_REFUSE_PIXELS, Limits, read_photo

    limits = Limits(max_pixels=MAX_PAINTING_SIDE * MAX_PAINTING_SIDE, refuse_pixels=DEFAULT_REFUSE_PIXELS)
    decoded, _ = read_photo(path, name, limits, size=None)
    image = decoded.rgb
    if min(image.size) < MIN_PAINTING_SIDE:
        raise FstError(f"{name}: {image.size[0]}x{image.size[1]} px is too small for a painting "
                       f"(at least {MIN_PAINTING_SIDE} px on the shorter side)")
    if max(image.size) > MAX_PAINTING_SIDE:
        image = image.copy()
        image.thumbnail((MAX_PAINTING_SIDE, MAX_PAINTING_SIDE), Image.Resampling.LANCZOS)
    return image


class TrainingManager:
    """Starts, follows and cancels the app's trainings; their records live in ``data.jobs``."""

    def __init__(self, data: AppData, schedules: dict[str, Schedule] | None = None) -> None:
        self.data = data
        self.schedules = dict(schedules or SCHEDULES)
        self._children: dict[str, subprocess.Popen] = {}
        self._cancelled_at: dict[str, float] = {}
        self._exited: set[str] = set()  # runners this app started and reaped
        self._lock = threading.Lock()
        self._file_lock = FileLock(str(data.jobs / ".lock"))

    # --- records ---------------------------------------------------------------------------------

    def record_path(self, job_id: str) -> Path:
        return self.data.jobs / f"{job_id}.json"

    def records(self) -> list[dict[str, Any]]:
        """Every job record, newest first."""
        found = []
        for path in sorted(self.data.jobs.glob("*.json"), reverse=True):
            record = read_json(path)
            if record is not None and "id" in record:
                found.append(record)
        return found

    def finished_records(self) -> dict[str, dict[str, Any]]:
        """model name -> the record of the training that made it (the newest, if several)."""
        out: dict[str, dict[str, Any]] = {}
        for record in self.records():
            if record.get("state") == "finished":
                out.setdefault(record["name"], record)
        return out

    def _alive(self, record: dict[str, Any]) -> bool:
        child = self._children.get(record["id"])
        if child is not None:
            return child.poll() is None
        if record["id"] in self._exited:
            return False
        if record.get("pid"):
            return pid_alive(record["pid"])
        # Written by an app that stopped before its runner wrote a pid: give it time to.
        return time.time() - float(record.get("created", 0)) < START_TIMEOUT_S

    def reconcile(self) -> None:
        """Close the records of runners that are gone without a final word; kill cancelled ones that linger."""
        with self._lock:
            for job_id, child in list(self._children.items()):
                if child.poll() is not None:  # reaped: no zombie runners in a long-lived app
                    self._children.pop(job_id)
                    self._exited.add(job_id)
            for record in self.records():
                if record.get("state") not in ACTIVE_STATES:
                    continue
                job_id = record["id"]
                cancelled = self._cancelled_at.get(job_id)
                if self._alive(record):
                    if cancelled is not None and time.monotonic() - cancelled > CANCEL_KILL_AFTER_S:
                        self._signal(record, signal.SIGKILL)
                    continue
                fresh = read_json(self.record_path(job_id)) or record  # the runner may just have finished
                if fresh.get("state") in ACTIVE_STATES:
                    fresh.update(state="cancelled" if cancelled is not None else "failed", ended=time.time(),
                                 error=None if cancelled is not None else
                                 f"the training process ended without a word; see {Path(fresh['run_dir']) / LOG_FILE}")
                    write_record(self.record_path(job_id), fresh)

    def active(self) -> dict[str, Any] | None:
        """The record of the training running now, if any."""
        self.reconcile()
        return next((r for r in self.records() if r.get("state") in ACTIVE_STATES), None)

    # --- start and cancel -----------------------------------------------------------------------

    def start(self, painting: str | Path, painting_name: str, name: str, schedule: str) -> dict[str, Any]:
        """Check the request and start its training; returns the new record. FstError for a refusal."""
        name = check_model_name(name)
        if schedule not in self.schedules:
            raise FstError(f"unknown schedule {schedule!r}: choose one of {', '.join(self.schedules)}")
        if not painting:
            raise FstError("add a painting first")
        image = read_painting(painting, painting_name or Path(str(painting)).name)
        models = available_models()
        if name in models:
            raise FstError(f"a model called {name!r} already exists ({models[name]}): choose another name")
        plan = self.schedules[schedule]
        with self._lock, self._file_lock:
            running = self.active_unlocked()
            if running is not None:
                raise FstError(self._busy_message(running))
            job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
            run_dir = self.data.runs / job_id
            run_dir.mkdir(parents=True)
            painting_path = run_dir / "painting.jpg"
            with atomic_path(painting_path) as tmp:
                image.save(tmp, format="JPEG", quality=95)
            record = {
                "id": job_id, "name": name, "schedule": plan.key, "schedule_label": plan.label,
                "max_steps": plan.steps, "painting": str(painting_path),
                "painting_name": Path(painting_name or "painting").name, "run_dir": str(run_dir),
                "models_dir": str(user_models_dir()), "styles_dir": str(self.data.styles),
                "overrides": [*plan.overrides, f"style.image={hydra_value(str(painting_path))}", f"style.name={name}",
                              f"hydra.run.dir={hydra_value(str(run_dir))}"],
                "state": "starting", "created": time.time(), "pid": None, "error": None,
            }
            record_path = self.record_path(job_id)
            write_record(record_path, record)
            with open(run_dir / LOG_FILE, "ab") as log:
                self._children[job_id] = subprocess.Popen(
                    [sys.executable, "-m", RUNNER_MODULE, str(record_path)], stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, cwd=run_dir, start_new_session=True)
            return record

    def active_unlocked(self) -> dict[str, Any] | None:
        for record in self.records():
            if record.get("state") in ACTIVE_STATES and self._alive(record):
                return record
        return None

    def _busy_message(self, record: dict[str, Any]) -> str:
        progress = read_json(Path(record["run_dir"]) / PROGRESS_FILE) or {}
        where = f"step {progress['step']} of {progress['max_steps']}" if progress.get("step") is not None else "starting"
        return (f"a training is already running ({record['name']!r}, {where}): one at a time, as each uses "
                "every core. Wait for it to finish, or cancel it.")

    def cancel(self) -> dict[str, Any] | None:
        """Signal the running training's process group to stop; returns its record (None if none runs)."""
        record = self.active()
        if record is None:
            return None
        with self._lock:
            self._cancelled_at.setdefault(record["id"], time.monotonic())
            self._signal(record, signal.SIGTERM)
        return record

    def _signal(self, record: dict[str, Any], signum: int) -> None:
        child = self._children.get(record["id"])
        pid = child.pid if child is not None else record.get("pid")
        if not pid:
            return
        try:
            os.killpg(pid, signum)  # the runner leads its own group (start_new_session)
        except ProcessLookupError:
            pass

    def wait(self, job_id: str, timeout: float) -> dict[str, Any]:
        """Block until the job's record is final (for scripts and tests); FstError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.reconcile()
            record = read_json(self.record_path(job_id))
            if record is not None and record.get("state") not in ACTIVE_STATES:
                return record
            time.sleep(0.5)
        raise FstError(f"training {job_id} still running after {timeout:.0f} s")

    # --- status -----------------------------------------------------------------------------------

    def status(self) -> TrainingStatus:
        """The running training, else the newest one, with its progress, preview and log tail."""
        self.reconcile()
        records = self.records()
        record = next((r for r in records if r.get("state") in ACTIVE_STATES), records[0] if records else None)
        if record is None:
            return TrainingStatus(None, {}, None, "")
        run_dir = Path(record["run_dir"])
        preview = run_dir / PREVIEW_FILE
        return TrainingStatus(record, read_json(run_dir / PROGRESS_FILE) or {}, preview if preview.is_file() else None,
                              tail(run_dir / LOG_FILE))
