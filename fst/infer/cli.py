"""fst-infer (``fst stylize``): stylize photos and video clips with a trained model.

    fst-infer -m MODEL INPUT... [-o OUTDIR] [--size N] [--tile auto|N|off] ...

Inputs with a video extension (see :mod:`fst.infer.video`) are stylized frame by frame
into an MP4 (H.264, --codec/--crf), audio copied; photos are done first, then clips.
Every good input is written, every bad one is named on stderr and the rest carry on.
Exit status: 0 all written (or skipped on request), 1 some input failed, 2 usage
error (bad option, unknown or unloadable model), each problem on one ``error:`` line.
Existing files are never replaced without --overwrite, and an input is never written over.
"""

from __future__ import annotations

import argparse
import sys
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from fst.errors import ArgumentParser, EXIT_FAILED, EXIT_OK, FstError, UsageError, run_command
from fst.images import OUTPUT_FORMATS, Photo, read_photo, write_photo
from fst.infer.inputs import DEFAULT_TEMPLATE, Job, TEMPLATE_FIELDS, check_template, expand_inputs, output_path
from fst.infer.styles import model_file_styles, style_label
from fst.infer.video import (CODECS, DEFAULT_CODEC, DEFAULT_CRF, DEFAULT_FRAME_BATCH, DEFAULT_VIDEO_EXT, ClipInfo,
                             expected_frames, is_video)

if TYPE_CHECKING:
    from fst.infer.backends import CachedOnnxBackend
    from fst.infer.stylizer import Stylizer

Number = TypeVar("Number", int, float)
MIN_TILE = 64
# Encoded photos waiting for the writer thread: bounds the stylized images held in memory.
MAX_PENDING_WRITES = 2
# Photos stylized at once by ``--jobs auto`` when ONNX Runtime runs the model on the CPU, the
# threads split between them: a folder of six 1 MP photos, two at a time on one thread each,
# took 0.81x the time of one at a time on both threads of the 2-core machine (BENCHMARKS.md),
# for 1.3 GB more peak memory: each run holds its own activations, so more at once would
# mostly cost memory.
AUTO_PHOTO_JOBS = 2


def number(kind: type[Number], low: Number | None = None, high: Number | None = None) -> Callable[[str], Number]:
    """An argparse ``type=``: ``kind`` parsed from the text and checked to lie in [low, high]."""
    noun = "an integer" if kind is int else "a number"
    if low is not None and high is not None:
        wanted = f"{noun} in [{low}, {high}]"
    elif low is not None:
        wanted = f"{noun} >= {low}"
    else:
        wanted = f"{noun} <= {high}" if high is not None else noun

    def parse(text: str) -> Number:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        # Written so that NaN fails both comparisons.
        if not ((low is None or value >= low) and (high is None or value <= high)):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text}")
        return value

    return parse


def _tile_arg(value: str) -> int | str | None:
    if value == "auto":
        return "auto"
    if value in ("off", "none", "0"):
        return None
    try:
        return number(int, low=MIN_TILE)(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected auto, off or a tile size >= {MIN_TILE} pixels, got {value!r}") from None


def _jobs_arg(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        return number(int, low=1)(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected auto or a number of photos >= 1, got {value!r}") from None


def build_parser() -> ArgumentParser:
    p = ArgumentParser(
        prog="fst-infer",
        description="Stylize photos and video clips with a trained fast-style-transfer model.",
        epilog="Exit status: 0 all done, 1 some inputs failed (each named on stderr), 2 usage error.",
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="image or video files, folders or glob patterns")
    p.add_argument("-m", "--model", help="model name (see --list-models) or a .safetensors/.onnx/.pth file")
    p.add_argument("-o", "--output-dir", default="stylized", type=Path, help="output folder (default: ./stylized)")
    p.add_argument("-r", "--recursive", action="store_true", help="descend into subfolders (layout is kept)")
    p.add_argument("--size", type=number(int, low=1), help="resize so the long side is SIZE pixels (default: keep)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="auto: fp16 on CUDA, fp32 elsewhere")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx"],
                   help="auto: ONNX Runtime on the CPU (graphs cached in $FST_HOME/onnx), PyTorch elsewhere")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (PyTorch backend)")
    p.add_argument("--batch", type=number(int, low=1),
                   help=f"photos (equal sizes only) or video frames per forward pass "
                        f"(default: 1 photo, {DEFAULT_FRAME_BATCH} frames)")
    p.add_argument("--jobs", type=_jobs_arg, default="auto",
                   help=f"photos (batches) stylized at once, ONNX Runtime's CPU threads split between them; auto: "
                        f"{AUTO_PHOTO_JOBS} when ONNX Runtime runs the model on the CPU, else 1 (default)")
    p.add_argument("--tile", type=_tile_arg, default="auto",
                   help="tile edge in pixels for big images, 'off', or 'auto' (tiles above 4 MP; default)")
    p.add_argument("--overlap", type=number(int, low=0), default=128, help="tile overlap in pixels (default: 128)")
    p.add_argument("--preserve-color", action="store_true", help="keep the photo's colours, take only luminance")
    p.add_argument("--strength", type=number(float, 0.0, 1.0), default=1.0, help="0 = photo, 1 = full style (default)")
    p.add_argument("--style", metavar="NAME[:W,NAME:W...]",
                   help="a multi-style model's style, or a blend of its styles by weight "
                        "(starry_night:0.7,the_wave:0.3); --list-models shows them")
    p.add_argument("--format", choices=sorted(OUTPUT_FORMATS), help="output format (default: jpg, png with alpha)")
    p.add_argument("--quality", type=number(int, 1, 100), default=92, help="JPEG/WebP quality 1-100 (default: 92)")
    p.add_argument("--codec", choices=sorted(CODECS), default=DEFAULT_CODEC,
                   help=f"video codec of stylized clips (default: {DEFAULT_CODEC}, in MP4)")
    p.add_argument("--crf", type=number(int, 0, 51), default=DEFAULT_CRF,
                   help=f"video quality, 0 (lossless) to 51; lower is better and bigger (default: {DEFAULT_CRF})")
    p.add_argument("--name", default=DEFAULT_TEMPLATE,
                   help=f"output file name template, fields {{{'}, {'.join(TEMPLATE_FIELDS)}}} "
                        f"(default: {DEFAULT_TEMPLATE})")
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    existing.add_argument("--skip-existing", action="store_true",
                          help="leave existing outputs alone and do not count them as failures")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print written paths")
    p.add_argument("--list-models", action="store_true", help="list model names that -m finds, then exit")
    return p


@dataclass
class Outcome:
    written: int = 0
    skipped: int = 0
    failed: int = 0


class Runner:
    """The per-photo loop: decode ahead in a thread, stylize in batches, write, report."""

    def __init__(self, args: argparse.Namespace, stylizer: Stylizer, inputs: set[Path], bar: Any) -> None:
        self.args = args
        self.stylizer = stylizer
        self.inputs = inputs
        self.bar = bar
        self.claimed: dict[Path, Path] = {}  # output -> the input that produced it in this run
        self.outcome = Outcome()
        self.warned_alpha = False
        self.writer: ThreadPoolExecutor | None = None
        self.writes: deque[tuple[Job, Path, Future]] = deque()
        self.jobs = 1  # batches stylized at once (photo_jobs)
        self.stylizers: ThreadPoolExecutor | None = None
        self.stylizing: deque[tuple[list[tuple[Job, Photo, Path]], Future]] = deque()

    def fail(self, message: str) -> None:
        self.outcome.failed += 1
        self.bar.write(f"error: {message}", file=sys.stderr)

    def destination(self, job: Job, photo: Photo) -> Path | None:
        """The output path for ``job``, or None after reporting why it must not be written."""
        a = self.args
        ext = a.format or ("png" if photo.alpha is not None else "jpg")
        return self.claim(job, ext)

    def claim(self, job: Job, ext: str) -> Path | None:
        """The output path for ``job`` with extension ``ext``, or None after reporting why not to write it."""
        a = self.args
        style = style_label(a.style) or self.stylizer.style
        dest = output_path(job, a.output_dir, a.name, style=style, model=self.stylizer.name, ext=ext)
        key = dest.resolve()
        if key in self.inputs:
            self.fail(f"{job.source}: output {dest} would overwrite an input; change -o or --name")
            return None
        if key in self.claimed:
            self.fail(f"{job.source}: output {dest} was already written for {self.claimed[key]}; use --name with {{name}}")
            return None
        if dest.exists() and not a.overwrite:
            if a.skip_existing:
                self.outcome.skipped += 1
                return None
            self.fail(f"{job.source}: output {dest} already exists (--overwrite replaces, --skip-existing skips)")
            return None
        self.claimed[key] = job.source
        return dest

    def stylize(self, items: list[tuple[Job, Photo, Path]]) -> list[torch.Tensor | Exception]:
        """Each photo's stylized image, or the exception that stopped it. Runs beside other
        batches when ``--jobs`` > 1, so it leaves reporting and writing to :meth:`finish_batch`."""
        a = self.args
        options = dict(tile=a.tile, overlap=a.overlap, preserve_color=a.preserve_color, strength=a.strength,
                       style=a.style)
        try:
            return self.stylizer.stylize_many([p.rgb for _, p, _ in items], batch_size=a.batch, **options)
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory: name the photo, go on
            if len(items) == 1:
                return [exc]
            return [out for item in items for out in self.stylize([item])]  # find out which photo it was

    def finish_batch(self, items: list[tuple[Job, Photo, Path]], outs: list[torch.Tensor | Exception]) -> None:
        for (job, photo, dest), out in zip(items, outs):
            if isinstance(out, Exception):
                self.claimed.pop(dest.resolve(), None)
                self.fail(f"{job.source}: stylization failed ({_first_line(out)})")
            else:
                self.write(job, photo, dest, out)
        self.bar.update(len(items))

    def write(self, job: Job, photo: Photo, dest: Path, out: torch.Tensor) -> None:
        """Hand the encoding and writing of ``out`` to the writer thread: the next photo is
        stylized meanwhile. Results are reported in order by :meth:`finish_writes`."""
        if photo.alpha is not None and not OUTPUT_FORMATS[dest.suffix.lower().lstrip(".")][1] and not self.warned_alpha:
            self.warned_alpha = True
            self.bar.write(f"note: {dest.suffix} cannot store transparency; alpha dropped (use --format png)", file=sys.stderr)
        assert self.writer is not None, "write() runs inside run()"
        future = self.writer.submit(write_photo, dest, out, photo.alpha, quality=self.args.quality,
                                    icc_profile=photo.icc_profile, exif=photo.exif, overwrite=self.args.overwrite)
        self.writes.append((job, dest, future))
        self.finish_writes(keep=MAX_PENDING_WRITES)

    def finish_writes(self, keep: int = 0) -> None:
        """Report the writes that have finished, oldest first, waiting until at most ``keep`` are left."""
        while self.writes and (len(self.writes) > keep or self.writes[0][2].done()):
            job, dest, future = self.writes.popleft()
            try:
                future.result()
            except FstError as exc:
                self.fail(f"{job.source}: {exc}")
                continue
            except OSError as exc:
                self.fail(f"{job.source}: cannot write {dest} ({exc.strerror or exc})")
                continue
            self.outcome.written += 1
            if not self.args.quiet:
                self.bar.write(str(dest))

    def run(self, jobs: list[Job]) -> None:
        """Decode ahead (two threads), stylize in batches (this thread, or ``self.jobs`` threads),
        encode and write behind (one thread); photos are reported and written in input order."""
        with ThreadPoolExecutor(max_workers=1) as writer, ThreadPoolExecutor(max_workers=self.jobs) as stylizers:
            self.writer = writer
            self.stylizers = stylizers
            try:
                self._run_photos(jobs)
                self.finish_stylizing()
            finally:
                for _, future in self.stylizing:
                    future.cancel()
                self.finish_writes()

    def _run_photos(self, jobs: list[Job]) -> None:
        lookahead = max(2, 2 * self.args.batch * self.jobs)
        queue = iter(jobs)
        pending: deque[tuple[Job, Future]] = deque()
        ready: list[tuple[Job, Photo, Path]] = []
        with ThreadPoolExecutor(max_workers=2) as pool:

            def top_up() -> None:
                while len(pending) < lookahead and (job := next(queue, None)) is not None:
                    pending.append((job, pool.submit(read_photo, job.source, self.args.size)))

            top_up()
            while pending:
                job, future = pending.popleft()
                top_up()
                try:
                    photo = future.result()
                except FstError as exc:
                    self.fail(str(exc))
                    self.bar.update(1)
                    continue
                except Exception as exc:  # noqa: BLE001 - a decoder bug must not stop the other photos
                    self.fail(f"{job.source}: not a readable image ({type(exc).__name__}: {_first_line(exc)})")
                    self.bar.update(1)
                    continue
                dest = self.destination(job, photo)
                if dest is None:
                    self.bar.update(1)
                    continue
                ready.append((job, photo, dest))
                if len(ready) >= self.args.batch:
                    self.flush(ready)
                    ready = []
        self.flush(ready)

    def flush(self, items: list[tuple[Job, Photo, Path]]) -> None:
        if not items:
            return
        if self.jobs == 1:
            self.finish_batch(items, self.stylize(items))
            return
        assert self.stylizers is not None, "flush() runs inside run()"
        self.stylizing.append((items, self.stylizers.submit(self.stylize, items)))
        self.finish_stylizing(keep=self.jobs - 1)

    def finish_stylizing(self, keep: int = 0) -> None:
        """Report and write the batches stylized so far, oldest first, until at most ``keep`` are running."""
        while len(self.stylizing) > keep:
            items, future = self.stylizing.popleft()
            self.finish_batch(items, future.result())

    def run_videos(self, jobs: list[Job], frame_batch: int) -> None:
        """Each clip streamed through the model into its own file, with a frames-per-second bar."""
        from tqdm import tqdm

        from fst.infer.video import stylize_video

        a = self.args
        for job in jobs:
            dest = self.claim(job, DEFAULT_VIDEO_EXT)
            if dest is None:
                continue
            bar = tqdm(unit="frame", desc=job.source.name, file=sys.stderr, dynamic_ncols=True, leave=False,
                       disable=True if a.no_progress else None)

            def started(info: ClipInfo, bar: Any = bar) -> None:
                bar.total = expected_frames(info)
                bar.refresh()

            try:
                result = stylize_video(
                    self.stylizer, job.source, dest, size=a.size, codec=a.codec, crf=a.crf, batch_size=frame_batch,
                    overwrite=a.overwrite, progress=bar.update, on_start=started,
                    tile=a.tile, overlap=a.overlap, preserve_color=a.preserve_color, strength=a.strength,
                    style=a.style,
                )
            except FstError as exc:
                self.claimed.pop(dest.resolve(), None)
                message = str(exc)
                self.fail(message if message.startswith(str(job.source)) else f"{job.source}: {message}")
                continue
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory: name the clip, go on
                self.claimed.pop(dest.resolve(), None)
                self.fail(f"{job.source}: stylization failed ({_first_line(exc)})")
                continue
            finally:
                bar.close()
            if result.padded != (0, 0):
                self.bar.write(f"note: {job.source}: padded to {result.width}x{result.height} "
                               f"(one pixel repeated: H.264 yuv420p needs even sides)", file=sys.stderr)
            self.outcome.written += 1
            if not a.quiet:
                self.bar.write(f"{dest}  ({result.frames} frames, {float(result.fps):g} fps, "
                               f"{result.width}x{result.height}, {result.wall_s:.1f} s, "
                               f"{result.frames_per_s:.1f} frames/s)")


def photo_jobs(jobs: int | str, stylizer: Stylizer, photos: int) -> int:
    """How many batches to stylize at once (``--jobs``), with the CPU threads split between them."""
    if jobs == "auto":
        jobs = AUTO_PHOTO_JOBS if _cpu_runtime(stylizer) is not None and torch.get_num_threads() > 1 else 1
    jobs = max(1, min(int(jobs), photos))
    split_threads(stylizer, jobs)
    return jobs


def split_threads(stylizer: Stylizer, jobs: int) -> None:
    """Give each of ``jobs`` runs at once its share of the CPU threads (ONNX Runtime on the CPU;
    PyTorch keeps one pool for the whole process)."""
    runtime = _cpu_runtime(stylizer)
    if runtime is not None:
        runtime.use_threads(max(1, torch.get_num_threads() // jobs))


def _cpu_runtime(stylizer: Stylizer) -> CachedOnnxBackend | None:
    """The stylizer's ONNX Runtime backend when it runs on the CPU (its threads can be split), else None."""
    from fst.infer.backends import CachedOnnxBackend

    backend = stylizer.backend
    return backend if isinstance(backend, CachedOnnxBackend) and backend.device.type == "cpu" else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """``fst stylize`` / ``fst-infer``: returns the exit status; problems go to stderr as ``error:`` lines."""
    return run_command(_stylize_command, argv)


def _stylize_command(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_models:
        from fst.infer.backends import available_models

        for name, path in sorted(available_models().items()):
            styles = model_file_styles(path)
            print(f"{name}\t{path}" + (f"\tstyles: {', '.join(styles)}" if styles else ""))
        return EXIT_OK
    if not args.model:
        parser.error("-m/--model is required (see --list-models)")
    if not args.inputs:
        parser.error("no INPUT given")
    try:
        check_template(args.name)
    except ValueError as exc:
        parser.error(str(exc))

    from tqdm import tqdm

    from fst.infer.stylizer import Stylizer

    try:
        stylizer = Stylizer.load(args.model, device=args.device, precision=args.precision, backend=args.backend,
                                 compile=args.compile)
    except UsageError:
        raise
    except FstError as exc:
        raise UsageError(str(exc)) from None  # a model that cannot be used is a bad -m
    try:
        stylizer.style_weights(args.style)  # a bad --style, or none for a multi-style model
    except FstError as exc:
        raise UsageError(str(exc)) from None
    if isinstance(args.tile, int) and not stylizer.backend.supports_tiling:
        raise UsageError(f"--tile needs a PyTorch model (.safetensors or .pth); {args.model} is ONNX")
    if stylizer.backend.note and not args.quiet:
        print(f"note: {stylizer.name}: {stylizer.backend.note}", file=sys.stderr)

    expansion = expand_inputs(args.inputs, recursive=args.recursive, exclude=args.output_dir)
    for message in expansion.failures:
        print(f"error: {message}", file=sys.stderr)
    inputs = {job.source.resolve() for job in expansion.jobs}
    photos = [job for job in expansion.jobs if not is_video(job.source)]
    clips = [job for job in expansion.jobs if is_video(job.source)]
    frame_batch = args.batch or DEFAULT_FRAME_BATCH
    args.batch = args.batch or 1
    bar = tqdm(total=len(photos), unit="photo", file=sys.stderr,
               disable=True if args.no_progress or (clips and not photos) else None, dynamic_ncols=True)
    runner = Runner(args, stylizer, inputs, bar)
    runner.jobs = photo_jobs(args.jobs, stylizer, len(photos))
    try:
        runner.run(photos)
        if clips and runner.jobs > 1:
            split_threads(stylizer, 1)  # a clip's frame batches go one at a time, on every thread
        runner.run_videos(clips, frame_batch)
    finally:
        bar.close()  # before run_command reports an interruption
    out = runner.outcome
    failed = out.failed + len(expansion.failures)
    summary = f"{out.written} written, {failed} failed"
    if out.skipped:
        summary += f", {out.skipped} skipped (existing)"
    if expansion.skipped_non_images:
        summary += f", {expansion.skipped_non_images} non-image files ignored"
    print(f"{summary} -> {args.output_dir}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
