"""Video through fst-infer and the Stylizer API (frames, rate, size, duration and audio kept;
bad clips and outputs named, nothing partial left), and the flicker measures of `fst quality --video`.

Every clip is made here with PyAV: a few small frames, with an AAC audio track.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from _infer_corpus import random_model, snapshot
from fst.errors import FstError
from fst.infer.cli import main
from fst.infer.stylizer import Stylizer
from fst.infer.video import frame_size, iter_frames, probe, stylize_video
from fst.research.quality import main as quality_main
from fst.research.video_quality import FlickerStats, measure_clip, noise_error, shift_error

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FPS = 10
FRAMES = 12
SIZE = (64, 48)  # width, height


def make_clip(path: Path, frames: int = FRAMES, size: tuple[int, int] = SIZE, fps: int = FPS, audio: bool = True,
              video: bool = True, faststart: bool = False) -> Path:
    """A clip of a moving colour gradient (mpeg4 in MP4: quick to encode) with a 440 Hz AAC tone."""
    width, height = size
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", format="mp4", options=options) as out:
        vs = None
        if video:
            vs = out.add_stream("mpeg4", rate=fps)
            vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        aus = out.add_stream("aac", rate=16000, layout="mono") if audio else None
        if vs is not None:
            y, x = np.mgrid[0:height, 0:width]
            for i in range(frames):
                rgb = np.stack([(x * 4 + i * 8) % 256, (y * 5) % 256, np.full_like(x, 40 + 10 * i)], -1)
                frame = av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")
                frame.pts = i
                out.mux(vs.encode(frame))
            out.mux(vs.encode(None))
        if aus is not None:
            seconds = frames / fps
            t = np.arange(int(16000 * seconds)) / 16000
            tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for start in range(0, len(tone), 1024):
                chunk = av.AudioFrame.from_ndarray(tone[None, start:start + 1024], format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = 16000, start
                out.mux(aus.encode(chunk))
            out.mux(aus.encode(None))
    return path


def audio_packets(path: Path) -> list[tuple[bytes, int | None]]:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return [(bytes(p), p.duration) for p in container.demux(stream) if p.size]


def video_facts(path: Path) -> tuple[int, Fraction, int, int, float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        decoded = sum(1 for _ in container.decode(stream))
        return (decoded, stream.average_rate, stream.codec_context.width, stream.codec_context.height,
                float(stream.duration * stream.time_base))


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return random_model(tmp_path_factory.mktemp("models") / "tiny.safetensors", width=8, style="teststyle")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clips") / "clip.mp4")


def test_clip_keeps_frames_rate_size_duration_and_audio_bit_identical(model, clip, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert main([str(clip), "-m", str(model), "-o", str(out), "--no-progress"]) == 0
    result = out / "clip_teststyle.mp4"
    assert sorted(p.name for p in out.iterdir()) == ["clip_teststyle.mp4"]  # no temporary file left
    frames, fps, width, height, duration = video_facts(result)
    src = video_facts(clip)
    assert (frames, fps, width, height) == (FRAMES, FPS, *SIZE) == src[:4]
    assert duration == pytest.approx(src[4], abs=1 / FPS)
    assert audio_packets(result) == audio_packets(clip)  # copied, not re-encoded
    with av.open(str(result)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
    printed = capsys.readouterr()
    assert f"{FRAMES} frames, {FPS} fps, 64x48" in printed.out
    assert "1 written, 0 failed" in printed.err


def test_size_codec_crf_and_odd_sides_padded(model, tmp_path, capsys) -> None:
    clip = make_clip(tmp_path / "odd.mp4", frames=4, size=(62, 46), audio=False)
    assert frame_size(62, 46, 31) == (31, 23)
    out = tmp_path / "out"
    assert main([str(clip), "-m", str(model), "-o", str(out), "--size", "31", "--codec", "h265", "--crf", "30",
                 "--batch", "3", "--no-progress"]) == 0
    frames, _, width, height, _ = video_facts(out / "odd_teststyle.mp4")
    assert (frames, width, height) == (4, 32, 24)
    with av.open(str(out / "odd_teststyle.mp4")) as container:
        assert container.streams.video[0].codec_context.name == "hevc"
    assert "padded to 32x24" in capsys.readouterr().err


def test_stylizer_api_matches_options_of_photos(model, clip, tmp_path) -> None:
    stylizer = Stylizer.load(model, device="cpu")
    progress: list[int] = []
    result = stylizer.stylize_video(clip, tmp_path / "api.mp4", batch_size=5, strength=0.0, crf=0,
                                    progress=progress.append)
    assert (result.frames, result.fps, result.width, result.height, result.audio_streams) == (FRAMES, FPS, 64, 48, 1)
    assert progress == [5, 5, 2]
    # strength 0 is the photo: the frames come back as they went in (up to yuv420p rounding)
    for original, written in zip(iter_frames(clip), iter_frames(tmp_path / "api.mp4")):
        assert (original - written).abs().mean() < 0.02
    # batching does not change a frame: batch 1 and batch 5 give the same stylized clip
    one = stylizer.stylize_video(clip, tmp_path / "b1.mp4", batch_size=1, crf=0, preserve_color=True)
    five = stylizer.stylize_video(clip, tmp_path / "b5.mp4", batch_size=5, crf=0, preserve_color=True)
    assert one.frames == five.frames == FRAMES
    for a, b in zip(iter_frames(tmp_path / "b1.mp4"), iter_frames(tmp_path / "b5.mp4")):
        assert (a - b).abs().max() < 2 / 255


def test_folder_of_clips_and_photos(model, tmp_path) -> None:
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    make_clip(folder / "a.mp4", frames=3, audio=False)
    make_clip(folder / "b.mov", frames=2)
    Image.new("RGB", (32, 24), (200, 10, 10)).save(folder / "c.jpg")
    out = tmp_path / "out"
    assert main([str(folder), "-m", str(model), "-o", str(out), "--no-progress", "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_teststyle.mp4", "b_teststyle.mp4", "c_teststyle.jpg"]
    assert video_facts(out / "a_teststyle.mp4")[0] == 3
    assert video_facts(out / "b_teststyle.mp4")[0] == 2


def test_bad_clips_named_others_written_nothing_partial(model, clip, tmp_path, capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.mp4").write_bytes(clip.read_bytes())
    (folder / "notavideo.mp4").write_bytes(b"this is not a video" * 100)
    make_clip(folder / "soundonly.mp4", video=False)
    whole = clip.read_bytes()
    (folder / "truncated.mp4").write_bytes(whole[: len(whole) // 2])  # index at the end: cut off
    faststart = make_clip(tmp_path / "fs.mp4", frames=30, audio=False, faststart=True).read_bytes()
    (folder / "cutshort.mp4").write_bytes(faststart[: len(faststart) * 2 // 3])  # index first, frames cut
    out = tmp_path / "out"
    out.mkdir()
    earlier = b"an earlier result"
    for name in ("notavideo", "soundonly", "truncated", "cutshort"):
        (out / f"{name}_teststyle.mp4").write_bytes(earlier)
    inputs = snapshot(folder)

    status = main([str(folder), "-m", str(model), "-o", str(out), "--no-progress", "--overwrite"])
    err = capsys.readouterr().err
    assert status == 1
    assert "1 written, 4 failed" in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 4
    assert any("notavideo.mp4: not a readable video" in line for line in lines)
    assert any("soundonly.mp4: no video stream" in line for line in lines)
    assert any("truncated.mp4: not a readable video" in line for line in lines)
    assert any("cutshort.mp4" in line and ("truncated" in line or "damaged" in line) for line in lines)
    # earlier outputs untouched, no temporary files, inputs untouched
    for name in ("notavideo", "soundonly", "truncated", "cutshort"):
        assert (out / f"{name}_teststyle.mp4").read_bytes() == earlier
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["good_teststyle.mp4", "notavideo_teststyle.mp4", "soundonly_teststyle.mp4", "truncated_teststyle.mp4",
         "cutshort_teststyle.mp4"])
    assert snapshot(folder) == inputs


def test_existing_output_kept_and_unwritable_output_named(model, clip, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "clip_teststyle.mp4").write_bytes(b"mine")
    assert main([str(clip), "-m", str(model), "-o", str(out), "--no-progress"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert (out / "clip_teststyle.mp4").read_bytes() == b"mine"

    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    assert main([str(clip), "-m", str(model), "-o", str(blocker / "sub"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        f"error: {clip}: cannot write {blocker / 'sub' / 'clip_teststyle.mp4'} (Not a directory)"]

    stylizer = Stylizer.load(model, device="cpu")
    with pytest.raises(FstError, match="extensions"):
        stylize_video(stylizer, clip, tmp_path / "x.jpg")


def test_probe_and_iter_frames(clip) -> None:
    info = probe(clip)
    assert (info.width, info.height, info.fps, info.frames, info.audio_streams) == (64, 48, FPS, FRAMES, 1)
    frames = list(iter_frames(clip, size=32, limit=5))
    assert len(frames) == 5 and frames[0].shape == (3, 24, 32)
    assert 0.0 <= float(frames[0].min()) and float(frames[0].max()) <= 1.0


def test_flicker_measures_on_known_networks(clip) -> None:
    identity = lambda batch: batch.clone()  # noqa: E731
    constant = lambda batch: torch.full_like(batch, 0.5)  # noqa: E731
    same = measure_clip(identity, clip, size=None, every=4)
    assert same["frames"] == FRAMES and same["sampled_frames"] == 3
    assert same["temporal_ratio"] == pytest.approx(1.0)
    assert same["shift_error"] == pytest.approx(0.0, abs=1e-6)
    assert same["noise_gain"] == pytest.approx(1.0)
    still = measure_clip(constant, clip, size=None, every=4)
    assert still["temporal_ratio"] == 0.0 and still["shift_error"] == 0.0 and still["noise_error"] == 0.0
    doubled = measure_clip(lambda b: (b * 2).clamp(0, 2), clip, size=None, every=0)
    assert doubled["temporal_ratio"] == pytest.approx(2.0, rel=1e-4)

    frame = torch.rand(3, 16, 20)
    # a network that follows the pixel grid (blur with a fixed kernel) is shift-stable
    blur = lambda b: torch.nn.functional.avg_pool2d(b, 3, 1, 1)  # noqa: E731
    assert shift_error(blur, frame, generator=torch.Generator().manual_seed(0)) < 1e-6
    # one that does not (a fixed checker pattern added) is not
    checker = ((torch.arange(16)[:, None] + torch.arange(20)) % 2).float() * 0.25
    pattern = lambda b: b + checker  # noqa: E731
    for seed in range(4):  # whichever direction the pixel moves
        assert shift_error(pattern, frame, generator=torch.Generator().manual_seed(seed)) == pytest.approx(0.25)
    moved, added = noise_error(identity, frame, generator=torch.Generator().manual_seed(0))
    assert moved == pytest.approx(added)
    stats = FlickerStats()
    assert np.isnan(stats.summary()["temporal_ratio"])


def test_quality_video_command(model, clip, tmp_path, capsys) -> None:
    out = tmp_path / "report"
    assert quality_main(["--video", str(clip), "-m", str(model), "--size", "32", "--every", "6",
                         "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("model=tiny clip=clip.mp4 frames=12 temporal_ratio=")
    assert {p.name for p in out.iterdir()} == {"video_quality.md", "video_quality.json"}
    assert "| tiny | clip.mp4 | 12 |" in (out / "video_quality.md").read_text()


def test_audio_the_output_cannot_hold_is_named(model, tmp_path, capsys) -> None:
    clip = tmp_path / "mulaw.avi"
    with av.open(str(clip), mode="w") as out:
        vs = out.add_stream("mpeg4", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = 32, 32, "yuv420p"
        aus = out.add_stream("pcm_mulaw", rate=8000, layout="mono")
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            frame.pts = i
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
        chunk = av.AudioFrame.from_ndarray(np.zeros((1, 2400), np.int16), format="s16", layout="mono")
        chunk.sample_rate, chunk.pts = 8000, 0
        out.mux(aus.encode(chunk))
        out.mux(aus.encode(None))
    out = tmp_path / "out"
    assert main([str(clip), "-m", str(model), "-o", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"error: {clip}: its pcm_mulaw audio cannot be copied into a mp4 file; name the output .mkv or .mov" in err
    assert list(out.iterdir()) == []
    # in a container that can hold it, it is copied as it is (PCM: the demuxers cut packets differently)
    assert main([str(clip), "-m", str(model), "-o", str(out), "--no-progress", "--name", "{stem}.mov"]) == 0
    joined = [b"".join(data for data, _ in audio_packets(path)) for path in (out / "mulaw.mov", clip)]
    assert joined[0] == joined[1] and len(joined[0]) == 2400


def test_expected_frames_for_the_progress_bar(clip) -> None:
    from fst.infer.video import ClipInfo, expected_frames

    assert expected_frames(probe(clip)) == FRAMES
    assert expected_frames(ClipInfo(720, 405, Fraction(25), None, 7.6, 0)) == 190  # MPEG-1: no count recorded
    assert expected_frames(ClipInfo(720, 405, Fraction(25), None, None, 0)) is None


def test_quality_video_labels_models_whose_files_share_a_name_by_path(model, clip, tmp_path, capsys) -> None:
    copies = []
    for run in ("run_a", "run_b"):
        (tmp_path / run).mkdir()
        copies.append(tmp_path / run / "model.safetensors")
        copies[-1].write_bytes(model.read_bytes())
    argv = ["--video", str(clip), "--size", "32", "--every", "6", "--max-frames", "4"]
    assert quality_main([*argv, "-m", str(model), "-m", str(copies[0]), "-m", str(copies[1])]) == 0
    labels = [line.split()[0] for line in capsys.readouterr().out.strip().splitlines()[-3:]]
    assert labels == ["model=tiny", f"model={copies[0]}", f"model={copies[1]}"]
