"""Stylizing video clips, streamed: decode -> batches of frames -> Stylizer -> encode (PyAV).

    stylize_video(stylizer, "clip.mp4", "out/clip_wave.mp4", crf=18, batch_size=4)

Frames are decoded, stylized and encoded a batch at a time, so memory stays flat however
long the clip is. The output keeps the clip's frame count, frame rate, timestamps (so its
duration) and size (or the --size long side); every audio stream is copied packet for
packet, untouched. Video is H.264 (libx264, yuv420p) in MP4 by default. yuv420p needs an
even width and height: an odd side is padded by one pixel (its last row or column repeated)
and the result says so. The file appears under its final name only once complete (a
temporary dotfile beside it is renamed): a bad, truncated or video-less clip, or an
unwritable output, raises one :class:`~fst.errors.FstError` and leaves no partial file.

PyAV is imported when a clip is opened, so photo-only use never loads FFmpeg.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from fst.errors import FstError
from fst.fsutil import atomic_path


class FrameStylizer(Protocol):
    """What a clip needs of a :class:`~fst.infer.stylizer.Stylizer`: batches of frames in, out."""

    def stylize_batch(self, batch: torch.Tensor, **options: Any) -> torch.Tensor: ...


VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".wmv", ".flv")
# output extension -> FFmpeg muxer
VIDEO_OUTPUT_FORMATS = {"mp4": "mp4", "m4v": "mp4", "mov": "mov", "mkv": "matroska"}
DEFAULT_VIDEO_EXT = "mp4"
# --codec -> FFmpeg encoder; both take a CRF (0 lossless .. 51; lower is better and bigger)
CODECS = {"h264": "libx264", "h265": "libx265"}
DEFAULT_CODEC = "h264"
DEFAULT_CRF = 18  # visually lossless for libx264
DEFAULT_FRAME_BATCH = 4
PIX_FMT = "yuv420p"


@dataclass(frozen=True)
class ClipInfo:
    """What a clip's header says about its first video stream (``frames`` None when not recorded)."""

    width: int
    height: int
    fps: Fraction
    frames: int | None
    duration_s: float | None
    audio_streams: int


@dataclass
class VideoResult:
    """What :func:`stylize_video` wrote."""

    path: Path
    frames: int
    fps: Fraction
    width: int
    height: int
    audio_streams: int
    wall_s: float
    padded: tuple[int, int] = (0, 0)  # pixels added (height, width) to make the sides even

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else float("inf")


def is_video(path: str | Path) -> bool:
    """True if ``path``'s extension is one of :data:`VIDEO_EXTENSIONS`."""
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def _av() -> Any:
    try:
        import av
    except ImportError:  # pragma: no cover - a declared dependency
        raise FstError("video needs PyAV: pip install av") from None
    return av


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextmanager
def open_clip(path: str | Path) -> Iterator[tuple[Any, Any]]:
    """``(container, video_stream)`` for a clip; FstError if unreadable or without video."""
    av = _av()
    path = Path(path)
    if not path.is_file():
        raise FstError(f"{path}: no such file")
    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise FstError(f"{path}: not a readable video ({_reason(exc)})") from None
    try:
        if not container.streams.video:
            raise FstError(f"{path}: no video stream")
        stream = container.streams.video[0]
        if not stream.codec_context or not stream.codec_context.width:
            raise FstError(f"{path}: video stream has no frame size (damaged header?)")
        yield container, stream
    finally:
        container.close()


def _fps(stream: Any) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return Fraction(rate) if rate else Fraction(25)


def probe(path: str | Path) -> ClipInfo:
    """The size, frame rate, frame count and duration of a clip's first video stream."""
    with open_clip(path) as (container, stream):
        return _info(container, stream)


def _info(container: Any, stream: Any) -> ClipInfo:
    duration = None
    if stream.duration is not None and stream.time_base:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000
    return ClipInfo(stream.codec_context.width, stream.codec_context.height, _fps(stream),
                    stream.frames or None, duration, len(container.streams.audio))


def expected_frames(info: ClipInfo) -> int | None:
    """The frame count the header records, else duration x frame rate (for a progress bar)."""
    if info.frames:
        return info.frames
    return round(info.duration_s * info.fps) if info.duration_s else None


def frame_size(width: int, height: int, size: int | None) -> tuple[int, int]:
    """(width, height) after scaling the long side to ``size`` (unchanged when None)."""
    if not size:
        return width, height
    scale = size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _decode_error(source: Path, count: int, exc: BaseException) -> FstError:
    return FstError(f"{source}: damaged or truncated video after {count} frames ({_reason(exc)})")


def iter_frames(path: str | Path, size: int | None = None, limit: int | None = None) -> Iterator[torch.Tensor]:
    """The clip's frames one at a time as (3, H, W) float32 tensors in [0, 1], streamed."""
    av = _av()
    path = Path(path)
    with open_clip(path) as (container, stream):
        stream.thread_type = "AUTO"
        width, height = frame_size(stream.codec_context.width, stream.codec_context.height, size)
        count = 0
        try:
            for frame in container.decode(stream):
                yield _to_tensor(frame, width, height)
                count += 1
                if limit is not None and count >= limit:
                    return
        except av.FFmpegError as exc:
            raise _decode_error(path, count, exc) from None


def _to_tensor(frame: Any, width: int, height: int) -> torch.Tensor:
    array = frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="BICUBIC")
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(255.0)


def _to_frame(av: Any, image: torch.Tensor) -> Any:
    array = image.clamp(0, 1).mul(255).round_().to(torch.uint8).permute(1, 2, 0).contiguous().cpu().numpy()
    return av.VideoFrame.from_ndarray(array, format="rgb24")


def stylize_video(
    stylizer: FrameStylizer,
    source: str | Path,
    dest: str | Path,
    *,
    size: int | None = None,
    codec: str = DEFAULT_CODEC,
    crf: int = DEFAULT_CRF,
    batch_size: int = DEFAULT_FRAME_BATCH,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
    on_start: Callable[[ClipInfo], None] | None = None,
    **options: Any,
) -> VideoResult:
    """Stylize every frame of ``source`` into ``dest``; ``options`` go to :meth:`Stylizer.stylize_batch`
    (tile, overlap, preserve_color, strength).

    ``progress(n)`` is called after each batch of ``n`` frames; ``on_start(info)`` once the
    clip is open. FstError for an unreadable or video-less clip, an existing ``dest``
    (unless ``overwrite``) or one that cannot be written; ``dest`` is then untouched.
    """
    av = _av()
    source, dest = Path(source), Path(dest)
    if codec not in CODECS:
        raise FstError(f"unknown codec {codec!r}: choose one of {', '.join(CODECS)}")
    ext = dest.suffix.lower().lstrip(".")
    if ext not in VIDEO_OUTPUT_FORMATS:
        raise FstError(f"{dest}: a video output needs one of the extensions {', '.join(VIDEO_OUTPUT_FORMATS)}")
    if not 0 <= crf <= 51:
        raise FstError(f"crf must be in [0, 51], got {crf}")
    started = time.perf_counter()
    with open_clip(source) as (container, vin):
        vin.thread_type = "AUTO"
        ain = list(container.streams.audio)
        info = _info(container, vin)
        if on_start is not None:
            on_start(info)
        width, height = frame_size(info.width, info.height, size)
        pad = (height % 2, width % 2)
        try:
            with atomic_path(dest, overwrite=overwrite) as tmp:
                encoder = _Encoder(av, tmp, VIDEO_OUTPUT_FORMATS[ext], CODECS[codec], crf, vin, ain,
                                   width + pad[1], height + pad[0])
                try:
                    count = _transcode(av, stylizer, source, container, vin, encoder, width, height, pad,
                                       batch_size, progress, options)
                except BaseException:
                    encoder.close(quiet=True)  # the first error is the one to report
                    raise
                encoder.close()
                if info.frames and count < info.frames:
                    raise FstError(f"{source}: truncated video: {count} of {info.frames} frames could be decoded")
                if count == 0:
                    raise FstError(f"{source}: no decodable video frames")
        except FileExistsError:
            raise FstError(f"{dest}: already exists (--overwrite replaces it)") from None
        except OSError as exc:
            raise FstError(f"cannot write {dest} ({exc.strerror or _reason(exc)})") from None
    return VideoResult(dest, count, info.fps, width + pad[1], height + pad[0], len(ain),
                       time.perf_counter() - started, pad)


class _Encoder:
    """The output container: the stylized video stream plus the audio streams copied as they are."""

    def __init__(self, av: Any, path: Path, fmt: str, codec: str, crf: int, vin: Any, ain: list[Any],
                 width: int, height: int) -> None:
        self.av, self.path = av, path
        try:
            self.container = av.open(str(path), mode="w", format=fmt)
        except av.FFmpegError as exc:
            raise OSError(_reason(exc)) from None
        self.closed = False
        try:
            fps = _fps(vin)
            self.video = self.container.add_stream(codec, rate=fps)
            self.video.width, self.video.height, self.video.pix_fmt = width, height, PIX_FMT
            self.video.options = {"crf": str(crf)}
            # The input's own clock: timestamps (hence variable frame rates and the duration) carry over.
            self.time_base = vin.time_base or Fraction(1, 90000)
            self.video.codec_context.time_base = self.time_base
            self.audio = {}
            for stream in ain:
                try:
                    self.audio[stream.index] = self.container.add_stream_from_template(stream)
                except ValueError:  # the muxer cannot hold this codec
                    others = sorted({f".{e}" for e, f in VIDEO_OUTPUT_FORMATS.items() if f != fmt})
                    raise FstError(f"its {stream.codec_context.name} audio cannot be copied into a {fmt} file; "
                                   f"name the output {' or '.join(others)} (--name)") from None
            # Streams are lined up on the container's start: each one's offset in its own time base.
            start = container_start(vin.container)
            self.offsets = {stream.index: round(start / stream.time_base) if stream.time_base else 0
                            for stream in [vin, *ain]}
            self.video_offset = self.offsets[vin.index]
        except av.FFmpegError as exc:
            self.close(quiet=True)
            raise FstError(f"cannot set up the output stream ({_reason(exc)})") from None
        except BaseException:
            self.close(quiet=True)
            raise

    def _mux(self, packets: Any) -> None:
        try:
            self.container.mux(packets)
        except self.av.FFmpegError as exc:
            raise OSError(_reason(exc)) from None

    def audio_packet(self, packet: Any) -> None:
        if packet.size == 0:  # the demuxer's end-of-stream marker
            return
        offset = self.offsets[packet.stream.index]
        if packet.dts is None:
            packet.dts = packet.pts
        if packet.pts is not None:
            packet.pts -= offset
        if packet.dts is not None:
            packet.dts -= offset
        packet.stream = self.audio[packet.stream.index]
        self._mux(packet)

    def frame(self, image: torch.Tensor, pts: int) -> None:
        frame = _to_frame(self.av, image)
        frame.pts, frame.time_base = pts, self.time_base
        try:
            packets = self.video.encode(frame)
        except self.av.FFmpegError as exc:
            raise FstError(f"encoding failed ({_reason(exc)})") from None
        self._mux(packets)

    def finish(self) -> None:
        try:
            packets = self.video.encode(None)
        except self.av.FFmpegError as exc:
            raise FstError(f"encoding failed ({_reason(exc)})") from None
        self._mux(packets)

    def close(self, quiet: bool = False) -> None:
        """Write the trailer and close; ``quiet`` (after a failure) swallows errors doing so."""
        if not self.closed:
            self.closed = True
            try:
                self.container.close()
            except (self.av.FFmpegError, OSError) as exc:
                if not quiet:
                    raise OSError(_reason(exc)) from None


def container_start(container: Any) -> Fraction:
    """The container's start time in seconds (0 when unknown)."""
    start = container.start_time
    return Fraction(start, 1_000_000) if start is not None and start > 0 else Fraction(0)


def _transcode(av: Any, stylizer: FrameStylizer, source: Path, container: Any, vin: Any, encoder: _Encoder,
               width: int, height: int, pad: tuple[int, int], batch_size: int,
               progress: Callable[[int], None] | None, options: dict[str, Any]) -> int:
    frames: list[torch.Tensor] = []
    stamps: list[int] = []
    count = 0
    last_pts: int | None = None
    step = max(1, round(1 / (_fps(vin) * encoder.time_base)))  # one frame's duration in time-base ticks

    def flush() -> None:
        nonlocal frames, stamps
        if not frames:
            return
        out = stylizer.stylize_batch(torch.stack(frames), **options)
        if pad != (0, 0):
            out = F.pad(out, (0, pad[1], 0, pad[0]), mode="replicate")
        for image, pts in zip(out, stamps):
            encoder.frame(image, pts)
        if progress is not None:
            progress(len(frames))
        frames, stamps = [], []

    streams = [vin, *encoder_inputs(container, encoder)]
    try:
        for packet in container.demux(*streams):
            if packet.stream.type == "audio":
                encoder.audio_packet(packet)
                continue
            try:
                decoded = packet.decode()
            except av.FFmpegError as exc:
                raise _decode_error(source, count, exc) from None
            for frame in decoded:
                pts = frame.pts if frame.pts is not None else None
                pts = None if pts is None else pts - encoder.video_offset
                # x264 needs strictly increasing timestamps: a missing or repeated one follows the last.
                if pts is None or (last_pts is not None and pts <= last_pts):
                    pts = 0 if last_pts is None else last_pts + step
                last_pts = pts
                frames.append(_to_tensor(frame, width, height))
                stamps.append(pts)
                count += 1
                if len(frames) >= batch_size:
                    flush()
    except av.FFmpegError as exc:
        raise _decode_error(source, count, exc) from None
    flush()
    encoder.finish()
    return count


def encoder_inputs(container: Any, encoder: _Encoder) -> list[Any]:
    """The input audio streams the encoder copies."""
    return [stream for stream in container.streams.audio if stream.index in encoder.audio]
