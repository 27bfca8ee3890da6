"""What fst-infer reads and writes: expanding INPUT arguments, naming outputs.

INPUT arguments may be files (any name: a file the user names explicitly is always
tried), folders (their image and video files; ``recursive`` descends, keeping the subfolder
layout under the output folder) and glob patterns. Missing files and patterns that
match nothing are reported as failures, like unreadable images.
"""

from __future__ import annotations

import glob
import string
from dataclasses import dataclass, field
from pathlib import Path

from fst.images import IMAGE_EXTENSIONS, OUTPUT_FORMATS
from fst.infer.video import VIDEO_EXTENSIONS, VIDEO_OUTPUT_FORMATS

DEFAULT_TEMPLATE = "{stem}_{style}.{ext}"
TEMPLATE_FIELDS = ("stem", "name", "style", "model", "ext")


@dataclass(frozen=True)
class Job:
    """One input photo or clip and the subfolder (relative to the output folder) its result goes to."""

    source: Path
    subdir: Path = Path()


@dataclass
class Expansion:
    jobs: list[Job] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # one line each, naming the argument
    skipped_non_images: int = 0


def _is_inside(path: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def _nested_output(base: Path, exclude: Path | None) -> Path | None:
    """``exclude`` if it lies strictly inside ``base`` (then its files are earlier results);
    None when the user pointed INPUT at the output folder itself or somewhere inside it."""
    if exclude is None or not _is_inside(exclude, base) or exclude.resolve() == base.resolve():
        return None
    return exclude


def _glob_base(pattern: str) -> Path:
    parts = Path(pattern).parts
    fixed: list[str] = []
    for part in parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _folder_images(folder: Path, recursive: bool, exclude: Path | None, result: Expansion) -> list[Path]:
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    images = []
    for path in candidates:
        if not path.is_file() or path.name.startswith(".") or _is_inside(path, exclude):
            continue
        if path.suffix.lower() in IMAGE_EXTENSIONS or path.suffix.lower() in VIDEO_EXTENSIONS:
            images.append(path)
        else:
            result.skipped_non_images += 1
    return sorted(images)


def expand_inputs(specs: list[str], recursive: bool = False, exclude: Path | None = None) -> Expansion:
    """Jobs for every photo named by ``specs``, in argument order, each file once.

    Files under ``exclude`` (the output folder), when it sits inside a folder being
    scanned, are not picked up, so re-running over a tree that holds earlier results
    does not stylize them again.
    """
    result = Expansion()
    seen: set[Path] = set()

    def add(path: Path, subdir: Path = Path()) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            result.jobs.append(Job(path, subdir))

    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            images = _folder_images(path, recursive, _nested_output(path, exclude), result)
            if not images:
                result.failures.append(f"{spec}: no image or video files in this folder" + ("" if recursive else " (try --recursive)"))
            for image in images:
                add(image, image.parent.relative_to(path))
        elif path.is_file():
            add(path)
        elif glob.has_magic(spec):
            matches = [Path(m) for m in sorted(glob.glob(str(path), recursive=recursive))]
            nested = _nested_output(_glob_base(str(path)), exclude)
            files = [m for m in matches if m.is_file() and not _is_inside(m, nested)]
            if not files:
                result.failures.append(f"{spec}: no files match this pattern")
            for match in files:
                add(match)
        elif path.exists():
            result.failures.append(f"{spec}: not a regular file")
        else:
            result.failures.append(f"{spec}: no such file or folder")
    return result


def check_template(template: str) -> None:
    """ValueError with a readable reason if ``template`` cannot name outputs."""
    for _, name, _, _ in string.Formatter().parse(template):
        if name is not None and name not in TEMPLATE_FIELDS:
            raise ValueError(f"unknown field {{{name}}} in --name (fields: {', '.join(TEMPLATE_FIELDS)})")
    sample = render_name(template, Path("photo.jpg"), style="style", model="model", ext="jpg")
    if Path(sample).is_absolute() or ".." in Path(sample).parts:
        raise ValueError(f"--name must give a path inside the output folder, got {sample!r}")
    suffix = Path(sample).suffix.lower().lstrip(".")
    if suffix not in OUTPUT_FORMATS and suffix not in VIDEO_OUTPUT_FORMATS:
        known = sorted(OUTPUT_FORMATS) + sorted(VIDEO_OUTPUT_FORMATS)
        raise ValueError(f"--name gives extension .{suffix}; use one of {', '.join(known)} or {{ext}}")


def render_name(template: str, source: Path, *, style: str, model: str, ext: str) -> str:
    return template.format(stem=source.stem, name=source.name, style=style, model=model, ext=ext)


def output_path(job: Job, outdir: Path, template: str, *, style: str, model: str, ext: str) -> Path:
    """Where ``job``'s result goes: OUTDIR / subfolder / rendered template."""
    return outdir / job.subdir / render_name(template, job.source, style=style, model=model, ext=ext)
