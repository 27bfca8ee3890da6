"""Screenshots of the web app's three tabs for the README, taken by the browser the tests drive.

    python scripts/app_screenshots.py [--out docs/images/app] [--preview-step 200] [--skip-train]

Starts ``fst app`` on a free loopback port with a temporary FST_HOME and data folder, and
drives it with Playwright and Debian's chromium (``apt-get install chromium``):

* Train: starts ``experiment=quick`` on a bundled painting and waits until the run has
  written its first preview (step 200 of 600), then cancels it;
* Stylize: two bundled photos with the_wave, results beside them;
* Models: the card of starry_night (style image, sample output, training facts).

Writes ``stylize.png``, ``train.png`` and ``models.png`` into ``--out``. The training
part takes a while on a CPU (the first preview comes at step 200: minutes); ``--skip-train``
retakes the other two only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fst.resources import STYLES_DIR, TRAIN_PHOTOS_DIR, VAL_PHOTOS_DIR  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1280, "height": 900}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(tmp: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "FST_HOME": str(tmp / "home"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "FST_CACHE": os.environ.get("FST_CACHE") or os.environ.get("FST_HOME") or str(Path.home() / ".cache/fst")}
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fst.cli", "app", "--port", str(port), "--data", str(tmp / "data")],
                            env=env, stdout=open(tmp / "server.log", "wb"), stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"fst app exited:\n{(tmp / 'server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return proc, url
        except OSError:
            time.sleep(0.5)
    raise SystemExit("fst app did not start")


def small_copies(tmp: Path) -> dict[str, Path]:
    """The inputs at sizes that stylize quickly on a CPU."""
    out = {}
    for key, source, side in (("cat", VAL_PHOTOS_DIR / "skimage" / "chelsea.png", 512),
                              ("garden", TRAIN_PHOTOS_DIR / "nature" / "Garden.jpg", 512),
                              ("painting", STYLES_DIR / "the_scream.jpg", 768)):
        image = Image.open(source).convert("RGB")
        image.thumbnail((side, side))
        out[key] = tmp / f"{source.stem}.jpg"
        image.save(out[key], quality=92)
    return out


def choose(page, dropdown: str, option: str) -> None:
    page.locator(f"{dropdown} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def start_training(page, painting: Path) -> None:
    page.get_by_role("tab", name="Train").click()
    page.locator("#train-painting input[type=file]").set_input_files(str(painting))
    name = page.locator("#train-name textarea, #train-name input").first
    page.wait_for_function("(el) => el.value !== ''", arg=name.element_handle())
    name.fill("my_scream")
    page.get_by_label("Quick", exact=False).check()
    page.locator("#train-start").click()
    page.get_by_text("Started my_scream").wait_for()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "app")
    parser.add_argument("--preview-step", type=int, default=200,
                        help="take the Train screenshot once the run reaches this step (its first preview)")
    parser.add_argument("--skip-train", action="store_true", help="only the Stylize and Models screenshots")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="fst_app_shots_"))
    proc, url = start_app(tmp)
    inputs = small_copies(tmp)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                                 args=["--no-sandbox", "--disable-dev-shm-usage"])
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(120_000)
            page.goto(url)
            page.wait_for_selector("#stylize-run")

            if not args.skip_train:
                start_training(page, inputs["painting"])

            page.get_by_role("tab", name="Stylize").click()
            page.locator("#stylize-input input[type=file]").set_input_files([str(inputs["cat"]), str(inputs["garden"])])
            choose(page, "#stylize-model", "the_wave")
            page.locator("#stylize-run").click()
            page.locator("#stylize-results a").nth(1).wait_for()
            page.mouse.move(0, 0)
            page.wait_for_timeout(1500)
            page.screenshot(path=str(args.out / "stylize.png"), full_page=True)

            page.get_by_role("tab", name="Models").click()
            choose(page, "#models-pick", "starry_night")
            page.locator("#models-facts").get_by_text("bundled").wait_for()
            page.mouse.move(0, 0)
            page.wait_for_timeout(1500)
            page.screenshot(path=str(args.out / "models.png"), full_page=True)
            if not args.skip_train:
                page.get_by_role("tab", name="Train").click()
                progress_file = next((tmp / "data" / "runs").iterdir()) / "progress.json"
                while True:
                    try:
                        step = json.loads(progress_file.read_text()).get("step", 0)
                    except (OSError, ValueError):
                        step = 0
                    if step >= args.preview_step and (progress_file.parent / "preview.png").is_file():
                        break
                    print(f"training: step {step} of {args.preview_step} needed for the preview", flush=True)
                    time.sleep(20)
                page.mouse.move(0, 0)
                page.wait_for_timeout(3000)  # the page polls every second
                page.screenshot(path=str(args.out / "train.png"), full_page=True)
                page.locator("#train-cancel").click()
                page.wait_for_selector("#train-state[data-state=cancelled]")
            browser.close()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        for record in (tmp / "data" / "jobs").glob("*.json"):
            job = json.loads(record.read_text())
            pid = job.get("pid") if job.get("state") in ("starting", "running") else None
            if pid:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(tmp, ignore_errors=True)
    for name in ("stylize", "models") if args.skip_train else ("stylize", "models", "train"):
        path = args.out / f"{name}.png"
        Image.open(path).save(path, optimize=True)
        print(path, Image.open(path).size, f"{path.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
