"""The report of a Hydra sweep: a contact sheet and a table, from the jobs' ``summary.json``.

``fst sweep-report SWEEP_DIR [--photos DIR] [--count N] [--size PX] [--device D]``

Writes into SWEEP_DIR: ``contact_sheet.png`` (rows and columns are the swept values; each
cell shows the same validation photos stylized by that job's model file), ``sweep_report.md``
and ``sweep_report.csv`` (swept values -> status, steps, wall time, final losses, model).
Everything is read from the directory, so the report can be rebuilt at any time.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from fst.errors import ArgumentParser, FstError, UsageError, run_command
from fst.fsutil import atomic_path, atomic_write_text
from fst.images import list_images
from fst.resources import VAL_PHOTOS_DIR
from fst.sweep.job import FINAL_LOSS_WINDOW, JobRecord, LOSS_TERMS, SUMMARY_NAME, override_key, override_value

CONTACT_SHEET_NAME = "contact_sheet.png"
MARKDOWN_NAME = "sweep_report.md"
CSV_NAME = "sweep_report.csv"
BUNDLED_VAL_PHOTOS = VAL_PHOTOS_DIR


@dataclass
class SweepReport:
    jobs: list[JobRecord]
    swept: list[str]
    contact_sheet: Path
    markdown: Path
    csv: Path
    cell_boxes: dict[int, tuple[int, int, int, int]]  # job num -> (left, top, right, bottom)


def _job_num(job_dir: Path) -> int | None:
    try:
        return int(OmegaConf.select(OmegaConf.load(job_dir / ".hydra" / "hydra.yaml"), "hydra.job.num"))
    except Exception:  # noqa: BLE001 - an unreadable hydra.yaml just means "number unknown"
        return None


def _read_job(job_dir: Path) -> JobRecord:
    overrides = [str(o) for o in OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")]
    summary_path = job_dir / SUMMARY_NAME
    summary: dict[str, Any] = {}
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            summary = {"status": "failed", "error": f"{summary_path}: unreadable ({exc})"}
    num = summary.get("job")
    if num is None:
        num = _job_num(job_dir)
    record = JobRecord(
        num=int(num) if num is not None else -1,
        dir=job_dir,
        overrides={override_key(o): override_value(o) for o in overrides},
        status=summary.get("status", "missing"),
        error=summary.get("error"),
        steps=summary.get("steps"),
        wall_time_s=summary.get("wall_time_s"),
        losses={k: float(v) for k, v in (summary.get("final_losses") or {}).items()},
        val_photos=[Path(p) for p in summary.get("val_photos") or []],
        style_name=summary.get("style_name"),
    )
    if not summary:
        record.error = f"no {SUMMARY_NAME}: the job crashed or is still running (see its log in {job_dir})"
    if summary.get("model"):
        record.model = job_dir / summary["model"]  # a relative path is relative to the job dir
    config_path = job_dir / ".hydra" / "config.yaml"
    if config_path.is_file():
        record.val_root = OmegaConf.select(OmegaConf.load(config_path), "data.val_root", default=None)
    return record


def collect_jobs(sweep_dir: Path) -> list[JobRecord]:
    """Every job under ``sweep_dir`` (a directory holding ``.hydra/overrides.yaml``), by job number."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FstError(f"{sweep_dir}: no such sweep directory")
    job_dirs = sorted({p.parent.parent for p in sweep_dir.glob("**/.hydra/overrides.yaml")})
    if not job_dirs:
        raise FstError(f"{sweep_dir}: no sweep jobs found (no */.hydra/overrides.yaml); is it a multirun dir?")
    jobs = [_read_job(d) for d in job_dirs]
    return sorted(jobs, key=lambda j: (j.num, str(j.dir)))


def swept_keys(jobs: list[JobRecord]) -> list[str]:
    """Override keys whose value differs between jobs, in command-line order."""
    keys: list[str] = []
    for job in jobs:
        for key in job.overrides:
            if key not in keys and len({j.value(key) for j in jobs}) > 1:
                keys.append(key)
    return keys


def _fmt(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}g}"


def table(jobs: list[JobRecord], swept: list[str], sweep_dir: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the report table (strings, so CSV and markdown show the same)."""
    header = ["job", *swept, "status", "steps", "wall_time_s", *(f"final_{t}" for t in LOSS_TERMS), "model", "error"]
    rows = []
    for job in jobs:
        model = ""
        if job.model is not None:
            try:
                model = str(job.model.relative_to(sweep_dir))
            except ValueError:
                model = str(job.model)
        rows.append([
            str(job.num), *(job.value(k) for k in swept), job.status,
            "" if job.steps is None else str(job.steps), _fmt(job.wall_time_s, 5),
            *(_fmt(job.losses.get(t)) for t in LOSS_TERMS), model, job.error or "",
        ])
    return header, rows


def csv_text(header: list[str], rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def markdown_text(header: list[str], rows: list[list[str]], sweep_dir: Path, swept: list[str]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    done = sum(1 for r in rows if r[header.index("status")] == "completed")
    lines = [
        f"# Sweep report: {sweep_dir.name}",
        "",
        f"{len(rows)} jobs ({done} completed), swept: {', '.join(f'`{k}`' for k in swept) or 'nothing'}.",
        "Final losses are the weighted terms as logged (`train/*`), averaged over the last "
        f"(up to {FINAL_LOSS_WINDOW}) training steps.",
        "",
        f"![contact sheet]({CONTACT_SHEET_NAME})",
        "",
        "| " + " | ".join(cell(h) for h in header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def report_photos(jobs: list[JobRecord], photos_dir: Path | None, count: int) -> list[Path]:
    """The photos every cell shows: ``photos_dir``, else the first job's validation photos,
    else its ``data.val_root``, else the bundled validation photos."""
    if photos_dir is not None:
        files = list_images(photos_dir) if Path(photos_dir).is_dir() else []
        if not files:
            raise FstError(f"--photos {photos_dir}: no images found")
        return files[:count]
    for job in jobs:
        existing = [p for p in job.val_photos if p.is_file()]
        if existing:
            return existing[:count]
    for job in jobs:
        if job.val_root and Path(job.val_root).is_dir() and list_images(job.val_root):
            return list_images(job.val_root)[:count]
    return list_images(BUNDLED_VAL_PHOTOS)[:count]


def build_report(
    sweep_dir: str | Path,
    photos_dir: str | Path | None = None,
    count: int = 3,
    size: int = 192,
    device: str = "cpu",
) -> SweepReport:
    """Build (or rebuild) the contact sheet and the tables of ``sweep_dir``."""
    from fst.sweep.contact_sheet import render_contact_sheet  # torch: only when drawing

    sweep_dir = Path(sweep_dir).resolve()
    jobs = collect_jobs(sweep_dir)
    swept = swept_keys(jobs)
    header, rows = table(jobs, swept, sweep_dir)
    photos = report_photos(jobs, Path(photos_dir) if photos_dir else None, count)
    styles = sorted({j.style_name for j in jobs if j.style_name})
    title = f"{sweep_dir.name} · {', '.join(styles)}" if styles else sweep_dir.name
    image, boxes = render_contact_sheet(jobs, swept, photos, size=size, device=device, title=title)
    sheet_path = sweep_dir / CONTACT_SHEET_NAME
    with atomic_path(sheet_path) as tmp:
        image.save(tmp, format="PNG")
    csv_path = sweep_dir / CSV_NAME
    atomic_write_text(csv_path, csv_text(header, rows))
    md_path = sweep_dir / MARKDOWN_NAME
    atomic_write_text(md_path, markdown_text(header, rows, sweep_dir, swept))
    return SweepReport(jobs, swept, sheet_path, md_path, csv_path, boxes)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="fst sweep-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="the hydra.sweep.dir of a finished (or running) sweep")
    parser.add_argument("--photos", type=Path, default=None, help="folder of photos for the contact sheet")
    parser.add_argument("--count", type=int, default=3, help="photos per cell (default 3)")
    parser.add_argument("--size", type=int, default=192, help="stylize photos as SIZE x SIZE squares (default 192)")
    parser.add_argument("--device", default="cpu", help="torch device for stylizing (default cpu)")
    args = parser.parse_args(argv)
    if args.count < 1 or args.size < 16:
        raise UsageError("--count must be >= 1 and --size >= 16")
    report = build_report(args.sweep_dir, args.photos, args.count, args.size, args.device)
    failed = sum(1 for j in report.jobs if j.status != "completed")
    print(f"{len(report.jobs)} jobs ({failed} not completed), swept: {', '.join(report.swept) or 'nothing'}")
    for path in (report.contact_sheet, report.markdown, report.csv):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
