"""The wheel, installed outside the checkout, is a working fst: configs, bundled models and
paintings come from the package, not from the source tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from fst.resources import ASSETS_DIR

CHECKOUT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A fresh venv holding only the built wheel; its dependencies are borrowed read-only from
    this interpreter's site-packages through a path entry (whose .pth files, among them the
    editable install of the checkout, are not processed)."""
    root = tmp_path_factory.mktemp("wheel")
    wheel_dir = root / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheel_dir), str(CHECKOUT)], check=True, capture_output=True, text=True, timeout=600)
    (wheel,) = wheel_dir.glob("fst-*.whl")
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, text=True, timeout=600)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FST_MODELS")}
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env['PATH']}"
    env["OMP_NUM_THREADS"] = "1"
    return env_dir, env


def _run(env: dict[str, str], cwd: Path, *cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_wheel_imports_fst_from_its_own_site_packages(installed, tmp_path: Path) -> None:
    env_dir, env = installed
    proc = _run(env, tmp_path, str(env_dir / "bin" / "python"), "-c", "import fst, fst.resources as r; print(fst.__file__); print(r.CONFIG_DIR)")
    assert proc.returncode == 0, proc.stderr
    module_file, config_dir = proc.stdout.split()
    assert Path(module_file).is_relative_to(env_dir) and not Path(module_file).is_relative_to(CHECKOUT)
    assert (Path(config_dir) / "train.yaml").is_file()


def test_wheel_help_lists_every_command(installed, tmp_path: Path) -> None:
    env_dir, env = installed
    proc = _run(env, tmp_path, str(env_dir / "bin" / "fst"), "--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("train", "stylize", "export", "weights", "shards", "sweep-report", "quality"):
        assert f"\n  {command} " in proc.stdout


def test_wheel_stylizes_with_a_bundled_model(installed, tmp_path: Path) -> None:
    env_dir, env = installed
    photo = tmp_path / "photo.png"
    shutil.copy(ASSETS_DIR / "photos" / "val" / "skimage" / "chelsea.png", photo)
    proc = _run(env, tmp_path, str(env_dir / "bin" / "fst-infer"), "-m", "starry_night", "photo.png", "-o", "out",
                "--size", "96", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    (written,) = (tmp_path / "out").glob("photo_*.jpg")
    assert written.stat().st_size > 1000


def test_wheel_trains_two_steps_outside_the_checkout(installed, tmp_path: Path) -> None:
    env_dir, env = installed
    photos = tmp_path / "photos"
    photos.mkdir()
    for src in sorted((ASSETS_DIR / "photos" / "train" / "coco").glob("*.jpg"))[:4]:
        shutil.copy(src, photos / src.name)
    shutil.copy(ASSETS_DIR / "styles" / "the_wave.jpg", tmp_path / "painting.jpg")
    proc = _run(env, tmp_path, str(env_dir / "bin" / "python"), "-m", "fst.train", "style.image=painting.jpg",
                "style.name=mine", "data.root=photos/", "trainer.max_steps=2", "debug=tiny", "hydra.run.dir=run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "model.safetensors").is_file()
