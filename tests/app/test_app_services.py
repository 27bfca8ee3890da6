"""The app's services without a browser: names, upload limits, stylizing into the data folder, one training at a time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _infer_corpus import build_corpus
from _app_helpers import multi_style_model, real_cache_dir
from fst.app.store import AppData, check_model_name, safe_stem, unique_path
from fst.app.stylizing import Limits, ModelCache, Options, read_photo, stylize_uploads, target_size
from fst.errors import FstError
from _app_fixtures import *  # noqa: F401,F403 - the app fixtures (a second conftest.py would shadow tests/conftest.py)


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AppData:
    monkeypatch.setenv("FST_CACHE", real_cache_dir())
    monkeypatch.setenv("FST_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FST_MODELS", raising=False)
    return AppData.at(tmp_path / "data")


@pytest.mark.parametrize("name", ["my_style", "Van-Gogh-2", "a", "x" * 48])
def test_good_model_names_pass(name: str) -> None:
    assert check_model_name(f" {name} ") == name


@pytest.mark.parametrize("name", ["", "../evil", "a/b", "two words", ".hidden", "-flag", "x" * 49, "style=1", "a,b"])
def test_model_names_that_could_escape_or_break_an_override_are_refused(name: str) -> None:
    with pytest.raises(FstError, match="name"):
        check_model_name(name)


def test_upload_names_become_safe_file_stems(tmp_path: Path) -> None:
    assert safe_stem("../../etc/passwd.jpg") == "passwd"
    assert safe_stem("photo (1).JPG") == "photo_1"
    assert safe_stem("....jpg") == "image"
    (tmp_path / "a.jpg").touch()
    assert unique_path(tmp_path, "a", ".jpg").name == "a-2.jpg"


def test_data_folder_refuses_paths_outside_it(data: AppData, tmp_path: Path) -> None:
    assert data.inside(data.results / "x.jpg") == (data.results / "x.jpg").resolve()
    with pytest.raises(FstError, match="outside"):
        data.inside(data.results / ".." / ".." / "elsewhere.jpg")


def test_every_corpus_photo_reads_and_every_broken_one_is_named(tmp_path: Path) -> None:
    good, bad = build_corpus(tmp_path / "corpus", huge=False)
    for name in good:
        image, note = read_photo(tmp_path / "corpus" / name, name, Limits())
        assert image.rgb.mode == "RGB" and note is None
    for name in bad:
        with pytest.raises(FstError, match=f"^{name}: ") as err:
            read_photo(tmp_path / "corpus" / name, name, Limits())
        assert str(tmp_path) not in str(err.value)  # named as the user knows it, not by its upload path


def test_a_photo_over_the_pixel_limit_is_scaled_down_with_a_note(tmp_path: Path) -> None:
    Image.new("RGB", (300, 200), (10, 120, 200)).save(tmp_path / "big.png")
    image, note = read_photo(tmp_path / "big.png", "big.png", Limits(max_pixels=15_000))
    assert image.rgb.size == target_size(300, 200, None, 15_000) == (150, 100)
    assert note is not None and "big.png: 300x200 px is over the 0.015 MP limit: stylized at 150x100" in note


def test_the_output_size_sets_the_long_side_without_a_note(tmp_path: Path) -> None:
    Image.new("RGB", (300, 200)).save(tmp_path / "p.png")
    image, note = read_photo(tmp_path / "p.png", "p.png", Limits(), size=90)
    assert image.rgb.size == (90, 60) and note is None


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path: Path) -> None:
    # 1-bit PNGs compress to almost nothing: a few KB that claim many megapixels.
    Image.new("1", (4000, 3000)).save(tmp_path / "bomb.png")
    with pytest.raises(FstError, match=r"^bomb.png: refused: 4000x3000 px \(12 MP\) is over the 10 MP"):
        read_photo(tmp_path / "bomb.png", "bomb.png", Limits(max_pixels=1_000_000, refuse_pixels=10_000_000))
    # Past Pillow's own limit (2 x Image.MAX_IMAGE_PIXELS) the header alone is refused.
    Image.new("1", (20000, 10000)).save(tmp_path / "gigapixel.png")
    assert (tmp_path / "gigapixel.png").stat().st_size < 1_000_000
    with pytest.raises(FstError, match=r"^gigapixel.png: refused, too many pixels"):
        read_photo(tmp_path / "gigapixel.png", "gigapixel.png", Limits())


def test_stylize_writes_results_in_the_data_folder_and_names_a_bad_upload(data: AppData, tmp_path: Path) -> None:
    photo = tmp_path / "in" / "coffee shop.png"
    photo.parent.mkdir()
    Image.fromarray((np.random.default_rng(0).random((60, 90, 3)) * 255).astype(np.uint8)).save(photo)
    (tmp_path / "in" / "notes.txt").write_text("not a picture")
    result = stylize_uploads([(photo, photo.name), (tmp_path / "in" / "notes.txt", "notes.txt")],
                             Options(model="starry_night", strength=0.8), data, ModelCache())
    assert [e.split(":")[0] for e in result.errors] == ["notes.txt"] and "not a readable image" in result.errors[0]
    (preview, out, caption), = result.pairs
    assert caption == "coffee shop.png → starry_night"
    for path in (preview, out):
        assert data.inside(path)
    stylized = Image.open(out)
    assert stylized.size == (90, 60)
    assert np.abs(np.asarray(stylized, float) - np.asarray(Image.open(photo).convert("RGB"), float)).mean() > 10
    assert result.archive is None  # one output: no zip


def test_several_photos_come_back_in_a_zip(data: AppData, tmp_path: Path) -> None:
    import zipfile

    paths = []
    for i in range(2):
        paths.append(tmp_path / f"p{i}.png")
        Image.new("RGB", (40 + i * 8, 32), (50 * i, 90, 160)).save(paths[-1])
    result = stylize_uploads([(p, p.name) for p in paths], Options(model="udnie"), data, ModelCache())
    assert result.archive is not None
    with zipfile.ZipFile(result.archive) as archive:
        assert sorted(archive.namelist()) == ["p0_udnie.jpg", "p1_udnie.jpg"]


def test_models_are_chosen_by_name_only(data: AppData) -> None:
    with pytest.raises(FstError, match="unknown model"):
        ModelCache().get(str(Path(__file__)))
    with pytest.raises(FstError, match="unknown model 'no_such_style'"):
        stylize_uploads([("x.jpg", "x.jpg")], Options(model="no_such_style"), data, ModelCache())


def test_one_training_at_a_time_across_restarts_and_cancel_stops_its_process_group(data: AppData, tmp_path: Path) -> None:
    from fst.app.training import SCHEDULES, TINY, TrainingManager

    painting = tmp_path / "painting.png"
    Image.fromarray((np.random.default_rng(1).random((96, 128, 3)) * 255).astype(np.uint8)).save(painting)
    manager = TrainingManager(data, {**SCHEDULES, TINY.key: TINY})
    with pytest.raises(FstError, match="already exists"):
        manager.start(painting, "painting.png", "starry_night", "tiny")
    (tmp_path / "notes.txt").write_text("not a painting")
    with pytest.raises(FstError, match="^notes.txt: not a readable image"):
        manager.start(tmp_path / "notes.txt", "notes.txt", "fine_name", "tiny")

    record = manager.start(painting, "painting.png", "first", "quick")
    with pytest.raises(FstError, match="a training is already running \\('first'"):
        manager.start(painting, "painting.png", "second", "tiny")
    deadline = time.monotonic() + 60
    while (manager.active() or {}).get("state") != "running" and time.monotonic() < deadline:
        time.sleep(0.2)  # the runner records its pid, then starts the trainer
    time.sleep(1.0)
    restarted = TrainingManager(data)  # an app started again meanwhile finds the run by its record
    assert restarted.active()["id"] == record["id"]
    with pytest.raises(FstError, match="already running"):
        restarted.start(painting, "painting.png", "second", "quick")
    assert restarted.cancel()["id"] == record["id"]
    final = manager.wait(record["id"], timeout=120)
    assert final["state"] == "cancelled"
    with pytest.raises(ProcessLookupError):
        os.killpg(final["pid"], 0)  # the runner and the trainer are gone, group and all
    assert not (Path(os.environ["FST_HOME"]) / "models" / "first.safetensors").exists()
    assert manager.active() is None


def test_fst_app_without_gradio_says_how_to_install_it(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['gradio'] = None\n"
            "from fst.cli import main\n"
            f"sys.exit(main(['app', '--data', {str(tmp_path / 'data')!r}]))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: the web app needs Gradio: pip install 'fst[app]'"


def test_fst_help_lists_the_app_without_importing_gradio() -> None:
    code = "import sys; from fst.cli import main; main(['--help']); print('gradio' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "  app " in proc.stdout and proc.stdout.strip().endswith("False")


def test_cancelled_runner_signal_reaches_the_trainer(tmp_path: Path) -> None:
    """SIGTERM to the runner alone (not its group) is forwarded to the trainer it waits for."""
    from fst.app import runner

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    cancel = runner._Cancel()
    runner._on_sigterm([child], cancel)(signal.SIGTERM, None)
    assert child.wait(timeout=10) == -signal.SIGTERM and cancel.requested_at is not None


def test_a_multi_style_model_blends_the_weights_given(data: AppData, tmp_path: Path) -> None:
    multi_style_model(Path(os.environ["FST_HOME"]) / "models" / "trio.safetensors", ["alpha", "beta", "gamma"])
    photo = tmp_path / "p.png"
    Image.fromarray((np.random.default_rng(2).random((48, 64, 3)) * 255).astype(np.uint8)).save(photo)
    models = ModelCache()
    assert models.get("trio").styles == ["alpha", "beta", "gamma"]

    def run(style: object) -> np.ndarray:
        result = stylize_uploads([(photo, "p.png")], Options(model="trio", style=style), data, models)
        assert not result.errors
        return np.asarray(Image.open(result.pairs[0][1]), float)

    alpha, beta = run({"alpha": 1.0}), run({"beta": 1.0})
    half = run({"alpha": 0.5, "beta": 0.5})
    assert np.abs(alpha - beta).mean() > 2
    assert np.abs(half - alpha).mean() > 0.5 and np.abs(half - beta).mean() > 0.5  # between the two


def test_a_clip_goes_through_the_same_request_with_progress(data: AppData, tmp_path: Path) -> None:
    av = pytest.importorskip("av")
    clip = tmp_path / "walk.mp4"
    with av.open(str(clip), mode="w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(8):
            rgb = np.full((48, 64, 3), (30 * i, 100, 160), np.uint8)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    seen: list[tuple[float, str]] = []
    result = stylize_uploads([(clip, "walk.mp4")], Options(model="starry_night"), data, ModelCache(),
                             Limits(max_clip_side=32), progress=lambda f, d: seen.append((f, d)))
    (out_clip,) = result.clips
    assert out_clip.name == "walk_starry_night.mp4" and data.inside(out_clip)
    with av.open(str(out_clip)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (32, 24)
        assert sum(1 for _ in container.decode(stream)) == 8
    assert result.notes == ["walk.mp4: 64x48 clip stylized with its long side at 32 px (the limit for clips)"]
    assert any(desc.startswith("walk.mp4: frame") for _, desc in seen) and seen[-1] == (1.0, "done")
