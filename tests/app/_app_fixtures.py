"""Fixtures for the web app: an app served from a subprocess on a free loopback port, and Debian's chromium.

The app runs with FST_HOME in a temporary folder (its models folder and data folder start
empty) and FST_CACHE at the real VGG16 cache, so the tiny training does not fetch it again.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from _app_helpers import CHROMIUM, free_port, real_cache_dir
from fst.resources import STYLES_DIR, VAL_PHOTOS_DIR

START_TIMEOUT_S = 240.0


@dataclass
class AppServer:
    url: str
    home: Path
    data: Path
    log: Path
    process: subprocess.Popen

    @property
    def models(self) -> Path:
        return self.home / "models"


@pytest.fixture(scope="session")
def app_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small test files: a 128x85 photo, a 160 px painting, a text file."""
    folder = tmp_path_factory.mktemp("app_inputs")
    photo = Image.open(VAL_PHOTOS_DIR / "skimage" / "coffee.png").convert("RGB")
    photo.thumbnail((128, 128))
    photo.save(folder / "coffee.jpg", quality=95)
    painting = Image.open(STYLES_DIR / "udnie.jpg").convert("RGB")
    painting.thumbnail((160, 160))
    painting.save(folder / "udnie_small.jpg", quality=95)
    (folder / "notes.txt").write_text("a shopping list, not a picture\n")
    return {"photo": folder / "coffee.jpg", "painting": folder / "udnie_small.jpg", "text": folder / "notes.txt"}


@pytest.fixture(scope="session")
def app_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    """``fst app --test-schedule`` on a free loopback port, FST_HOME in a temporary folder."""
    pytest.importorskip("gradio", reason="the app needs Gradio (pip install 'fst[app]')")
    root = tmp_path_factory.mktemp("app")
    home, data, log = root / "home", root / "data", root / "server.log"
    env = {**os.environ, "FST_HOME": str(home), "FST_CACHE": real_cache_dir(), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("FST_MODELS", None)
    port = free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "fst.cli", "app", "--port", str(port), "--data", str(data), "--test-schedule"],
            stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            pytest.fail(f"fst app exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"fst app did not answer on {url} within {START_TIMEOUT_S:.0f} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    server = AppServer(url, home, data, log, process)
    yield server
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    stop_trainings(data)


def stop_trainings(data: Path) -> None:
    """Kill the process group of any training the tests left running (they run in sessions of their own)."""
    import json

    for record_path in (data / "jobs").glob("*.json"):
        record = json.loads(record_path.read_text())
        if record.get("state") in ("starting", "running") and record.get("pid"):
            try:
                os.killpg(record["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """Debian's chromium driven by Playwright (headless; no sandbox: CI runs as root; /tmp for shared memory)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright")
    if not CHROMIUM.exists() and not shutil.which("chromium"):
        pytest.skip(f"the browser tests need Debian's chromium at {CHROMIUM} (apt-get install chromium)")
    executable = str(CHROMIUM) if CHROMIUM.exists() else shutil.which("chromium")
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=executable,
                                              args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield instance
        instance.close()
