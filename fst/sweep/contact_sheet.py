"""Contact sheet of a sweep: one cell per job, the same photos stylized by each job's model.

Rows are the combinations of every swept key but the last, columns the values of the last
one (a 1-D sweep is a single row). Each cell is labelled with its values, final losses,
steps and wall time, or with the error of a failed job. The top row shows the input photos.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from fst.data.transforms import PreviewTransform
from fst.errors import FstError
from fst.images import open_rgb, tensor_to_pil
from fst.infer import Stylizer
from fst.sweep.job import JobRecord


PAD = 16          # outer margin and space between header and grid
PHOTO_GAP = 4     # between the photos of one cell
CELL_GAP = 20     # between cells
LABEL_LINES = 4   # every label box has room for this many lines, so the grid stays regular
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
MUTED = (110, 110, 110)
FAILED = (190, 30, 30)
EMPTY_CELL = (225, 225, 225)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable built-in font
    except TypeError:
        return ImageFont.load_default()


def _short_names(keys: Sequence[str]) -> dict[str, str]:
    """``loss.style_weight`` -> ``style_weight`` where the last part is unambiguous."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def stylize_photos(model_path: Path, photos: torch.Tensor, device: str) -> list[Image.Image]:
    """``photos`` (B, 3, H, W) stylized by the model at ``model_path``, whole and in fp32:
    cells of one sheet differ by their models only."""
    stylizer = Stylizer.load(model_path, device=device, precision="fp32")
    return [tensor_to_pil(img) for img in stylizer(photos, tile=None).cpu()]


def _layout(jobs: Sequence[JobRecord], swept: Sequence[str]):
    """(row keys, column values, rows, cells): cells maps (row index, col index) -> job."""
    col_key = swept[-1] if swept else None
    row_keys = list(swept[:-1])
    cols: list[str] = []
    rows: list[tuple[tuple[str, ...], int]] = []  # (values of row_keys, repeat index)
    cells: dict[tuple[int, int], JobRecord] = {}
    for job in jobs:
        col_value = job.value(col_key) if col_key else ""
        if col_value not in cols:
            cols.append(col_value)
        col = cols.index(col_value)
        combo = tuple(job.value(k) for k in row_keys)
        repeat = 0
        # identical overrides (e.g. a value given twice) get a row of their own
        while (combo, repeat) in rows and (rows.index((combo, repeat)), col) in cells:
            repeat += 1
        if (combo, repeat) not in rows:
            rows.append((combo, repeat))
        cells[(rows.index((combo, repeat)), col)] = job
    return row_keys, col_key, cols, rows, cells


def _wrap(text: str, font, width: int) -> list[str]:
    """Greedy wrap by measured width (the default font is proportional)."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        current = ""
        for word in paragraph.split(" "):
            candidate = f"{current} {word}".strip()
            if font.getlength(candidate) <= width or not current:
                current = candidate
            else:
                lines.append(current)
                current = word
            while font.getlength(current) > width and len(current) > 1:  # one very long word
                cut = max(1, int(len(current) * width / font.getlength(current)))
                lines.append(current[:cut])
                current = current[cut:]
        lines.append(current)
    return lines


def _fit(text: str, font, width: int) -> str:
    """``text`` cut to ``width`` pixels, ending in an ellipsis where it was cut."""
    if font.getlength(text) <= width:
        return text
    while len(text) > 1 and font.getlength(text + "…") > width:
        text = text[:-1]
    return text.rstrip() + "…"


def _cell_label(job: JobRecord, swept: Sequence[str], short: dict[str, str]) -> list[tuple[str, tuple]]:
    values = ", ".join(f"{short[k]}={job.value(k)}" for k in swept) or f"job {job.num}"
    lines: list[tuple[str, tuple]] = [(values, TEXT)]
    if job.status != "completed":
        lines.append((f"{job.status.upper()}: {job.error or 'no error recorded'}", FAILED))
        return lines
    if job.losses:
        lines.append((" · ".join(f"{t} {job.losses[t]:.4g}" for t in ("total", "content", "style", "tv")
                                 if t in job.losses), TEXT))
    wall = f" · {job.wall_time_s:.1f} s" if job.wall_time_s is not None else ""
    lines.append((f"job {job.num} · {job.steps} steps{wall}", MUTED))
    return lines


def render_contact_sheet(
    jobs: Sequence[JobRecord],
    swept: Sequence[str],
    photo_paths: Sequence[Path],
    size: int = 192,
    device: str = "cpu",
    title: str = "sweep",
) -> tuple[Image.Image, dict[int, tuple[int, int, int, int]]]:
    """The sheet and, per job number, the box of its stylized photos (left, top, right, bottom)."""
    if not photo_paths:
        raise FstError("no photos for the contact sheet")
    preview = PreviewTransform(size)
    photos = torch.stack([preview(open_rgb(p)) for p in photo_paths])
    font, title_font = _font(max(11, size // 14)), _font(max(13, size // 11))
    line_h = int(font.getbbox("Ag|")[3]) + 4
    title_h = int(title_font.getbbox("Ag|")[3]) + 6
    strip_w = len(photo_paths) * size + (len(photo_paths) - 1) * PHOTO_GAP
    label_h = LABEL_LINES * line_h + 6

    row_keys, col_key, cols, rows, cells = _layout(jobs, swept)
    short = _short_names(swept)
    row_headers = [[f"{k} = {v}" for k, v in zip(row_keys, combo)] + ([f"(repeat {rep})"] if rep else [])
                   for combo, rep in rows]
    header_w = max([font.getlength("input photos"), *(font.getlength(t) for h in row_headers for t in h)])
    header_w = int(header_w) + PAD
    grid_left = PAD + header_w
    input_top = PAD + title_h
    cols_top = input_top + size + PAD
    grid_top = cols_top + line_h + 4
    cell_h = size + label_h
    width = grid_left + len(cols) * strip_w + (len(cols) - 1) * CELL_GAP + PAD
    height = grid_top + len(rows) * cell_h + (len(rows) - 1) * CELL_GAP + PAD

    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    axes = f"rows: {', '.join(row_keys)} · " if row_keys else ""
    axes += f"columns: {col_key}" if col_key else "one job"
    draw.text((PAD, PAD), f"{title}: {axes}", fill=TEXT, font=title_font)
    draw.text((PAD, input_top), "input photos", fill=MUTED, font=font)
    for i in range(len(photo_paths)):
        sheet.paste(tensor_to_pil(photos[i]), (grid_left + i * (size + PHOTO_GAP), input_top))
    for c, value in enumerate(cols):
        if col_key:
            text = _fit(f"{col_key} = {value}", font, strip_w)
            draw.text((grid_left + c * (strip_w + CELL_GAP), cols_top), text, fill=TEXT, font=font)

    boxes: dict[int, tuple[int, int, int, int]] = {}
    for r, header in enumerate(row_headers):
        top = grid_top + r * (cell_h + CELL_GAP)
        for i, text in enumerate(header):
            draw.text((PAD, top + i * line_h), text, fill=TEXT, font=font)
        for c in range(len(cols)):
            left = grid_left + c * (strip_w + CELL_GAP)
            job = cells.get((r, c))
            box = (left, top, left + strip_w, top + size)
            fill_box = (left, top, left + strip_w - 1, top + size - 1)  # PIL rectangles include both ends
            if job is None:
                draw.rectangle(fill_box, fill=EMPTY_CELL)
                draw.text((left + 6, top + 6), "no job", fill=MUTED, font=font)
                continue
            boxes[job.num] = box
            lines = _cell_label(job, swept, short)
            if job.status == "completed" and job.model is not None and job.model.is_file():
                try:
                    for i, image in enumerate(stylize_photos(job.model, photos, device)):
                        sheet.paste(image, (left + i * (size + PHOTO_GAP), top))
                except FstError as exc:
                    draw.rectangle(fill_box, fill=EMPTY_CELL)
                    lines.append((f"model unreadable: {exc}", FAILED))
            else:
                draw.rectangle(fill_box, fill=EMPTY_CELL)
                if job.status == "completed":
                    lines.append(("no model file", FAILED))
            wrapped = [(piece, color) for text, color in lines for piece in _wrap(text, font, strip_w)]
            if len(wrapped) > LABEL_LINES:  # the full error is in the table
                text, color = wrapped[LABEL_LINES - 1]
                wrapped = [*wrapped[: LABEL_LINES - 1], (_fit(text + " …", font, strip_w), color)]
            for i, (text, color) in enumerate(wrapped):
                draw.text((left, top + size + 4 + i * line_h), text, fill=color, font=font)
    return sheet, boxes
