"""One training started by the app: ``python -m fst.app.runner JOBS/ID.json``.

Runs ``python -m fst.train`` with the record's overrides, in the process group the app
started it in (so Cancel stops both with one signal), and outlives the app and the
browser. When training finishes it copies the model into the models folder (atomically,
never over another model) and the painting beside the app's other style images, then
records the outcome: finished (with steps, time and the last losses), failed (with the
error line of the log) or cancelled.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from fst.fsutil import atomic_path
from fst.app.jobs import LOG_FILE, PROGRESS_FILE, last_error_line, read_json, write_record

# After Cancel, the trainer gets this long to stop (it checkpoints at its next step) before SIGKILL.
CANCEL_GRACE_S = 30.0


class _Cancel:
    requested_at: float | None = None


def _on_sigterm(child: list[subprocess.Popen], cancel: _Cancel) -> Any:
    def handler(signum: int, frame: FrameType | None) -> None:
        if cancel.requested_at is None:
            cancel.requested_at = time.monotonic()
        for proc in child:  # the group signal reached it too; this covers a runner signalled alone
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    return handler


def install_model(record: dict[str, Any]) -> Path:
    """Copy the run's model to ``models_dir/NAME.safetensors`` without replacing an existing file."""
    run_dir = Path(record["run_dir"])
    dest = Path(record["models_dir"]) / f"{record['name']}.safetensors"
    try:
        with atomic_path(dest, overwrite=False) as tmp:
            shutil.copyfile(run_dir / "model.safetensors", tmp)
    except FileExistsError:
        raise RuntimeError(f"a model called {record['name']!r} appeared in {dest.parent} meanwhile; "
                           f"this one stays at {run_dir / 'model.safetensors'}") from None
    styles = Path(record["styles_dir"])
    with atomic_path(styles / f"{record['name']}{Path(record['painting']).suffix}") as tmp:
        shutil.copyfile(record["painting"], tmp)
    return dest


def run(record_path: Path) -> int:
    record = read_json(record_path)
    if record is None:
        print(f"error: {record_path}: no readable job record", file=sys.stderr)
        return 1
    run_dir = Path(record["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    cancel, child = _Cancel(), []
    signal.signal(signal.SIGTERM, _on_sigterm(child, cancel))
    record.update(state="running", pid=os.getpid(), started=time.time())
    write_record(record_path, record)

    command = [sys.executable, "-m", "fst.train", *record["overrides"]]
    with open(run_dir / LOG_FILE, "ab") as log:
        log.write(("$ " + " ".join(command) + "\n").encode())
        log.flush()
        child.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      cwd=run_dir))
        code = _wait(child[0], cancel)
        if cancel.requested_at is not None:
            log.write(b"cancelled: the app stopped this training\n")

    record = read_json(record_path) or record
    record["ended"] = time.time()
    record["exit_code"] = code
    progress = read_json(run_dir / PROGRESS_FILE) or {}
    record["losses"] = {"train": progress.get("loss"), "val": progress.get("val_loss")}
    record["steps"] = progress.get("step")
    if cancel.requested_at is not None:
        record.update(state="cancelled", error=None)
    elif code == 0 and (run_dir / "model.safetensors").is_file() and (run_dir / "finished.json").is_file():
        try:
            record.update(state="finished", model=str(install_model(record)), error=None)
        except (RuntimeError, OSError) as exc:
            record.update(state="failed", error=str(exc))
    else:
        reason = last_error_line(run_dir / LOG_FILE) or "no output"
        record.update(state="failed", error=f"training stopped (exit status {code}): {reason}")
    write_record(record_path, record)
    return 0 if record["state"] != "failed" else 1


def _wait(proc: subprocess.Popen, cancel: _Cancel) -> int:
    while True:
        try:
            return proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            if cancel.requested_at is not None and time.monotonic() - cancel.requested_at > CANCEL_GRACE_S:
                proc.kill()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m fst.app.runner JOB_RECORD.json", file=sys.stderr)
        return 2
    return run(Path(args[0]))


if __name__ == "__main__":
    sys.exit(main())
