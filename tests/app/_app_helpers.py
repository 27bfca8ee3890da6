"""Helpers shared by the app tests and their fixtures."""

from __future__ import annotations

import os
import socket
from pathlib import Path

CHROMIUM = Path(os.environ.get("FST_TEST_CHROMIUM", "/usr/bin/chromium"))


def real_cache_dir() -> str:
    """Where the VGG16 weights are cached outside the tests (before FST_HOME is redirected)."""
    return os.environ.get("FST_CACHE") or os.environ.get("FST_HOME") or str(Path.home() / ".cache" / "fst")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
