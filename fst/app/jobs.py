"""Training job records: one JSON file per training under ``jobs/``, shared by the app and the runner.

The app writes a record once, before it starts the runner (:mod:`fst.app.runner`); from then on
the runner alone writes it (running, then finished, failed or cancelled), except when the
app finds the runner gone without a final word and closes the record itself.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from fst.fsutil import atomic_write_text

ACTIVE_STATES = ("starting", "running")
FINAL_STATES = ("finished", "failed", "cancelled")
PROGRESS_FILE = "progress.json"  # written by fst.train.callbacks.ProgressFile in the run folder
PREVIEW_FILE = "preview.png"
LOG_FILE = "train.log"
RUNNER_MODULE = "fst.app.runner"
_PLAIN = re.compile(r"[A-Za-z0-9_./:+-]*")


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None if missing or unreadable (a writer may be mid-rename)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_record(path: Path, record: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(record, indent=1, sort_keys=True) + "\n")


def hydra_value(value: str) -> str:
    """``value`` as a Hydra override value: quoted unless it is plain (paths with spaces, '=' or ',')."""
    if _PLAIN.fullmatch(value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def pid_alive(pid: int | None) -> bool:
    """Whether ``pid`` is a live training runner (a recycled pid running something else is not)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        try:
            text = cmdline.read_bytes()
        except OSError:
            return False
        if not text:  # a zombie: exited, not yet reaped
            return False
        return RUNNER_MODULE.encode() in text
    return True


def last_error_line(log: Path, limit: int = 400) -> str | None:
    """The last ``error: ...`` line of a training log, else its last line (trimmed)."""
    try:
        lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith("error:"):
            return line[:limit]
    return lines[-1][:limit] if lines else None


def tail(path: Path, lines: int = 20, max_bytes: int = 16384) -> str:
    """The last ``lines`` lines of a text file ('' if missing)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
