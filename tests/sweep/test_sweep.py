"""Hydra sweeps: per-job outputs, the report (contact sheet + table), failed jobs, DDP refusal,
GPU slots for parallel jobs. The sweeps are real tiny trainings on the CPU."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
import threading
import time
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from conftest import TINY, VAL_PHOTOS
from fst.errors import run_command
from fst.nets.model_file import load_model
from fst.sweep import gpu_slots
from fst.sweep.contact_sheet import EMPTY_CELL
from fst.sweep.gpu_slots import GpuSlots
from fst.sweep.job import multirun_device_problem, override_key, override_value
from fst.sweep.report import CONTACT_SHEET_NAME, CSV_NAME, MARKDOWN_NAME, build_report
from fst.sweep.report import main as report_main

ROOT_DIR = Path(__file__).resolve().parents[2]  # the checkout (scripts/, cwd of subprocesses)

SHEET_SIZE = 192  # BuildSweepReport's default stylizing size (configs/hydra/default.yaml)
# lr 1e-2 so that two steps move the tiny networks far enough apart to tell cells apart
SWEEP_TINY = [*TINY, "model.optimizer.lr=0.01", f"data.val_root={VAL_PHOTOS}"]


def _sweep(sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "fst.train", "-m", *SWEEP_TINY, *overrides, f"hydra.sweep.dir={sweep_dir}"]
    return subprocess.run(command, cwd=ROOT_DIR, capture_output=True, text=True, timeout=900)


def _error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def _table(sweep_dir: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO((sweep_dir / CSV_NAME).read_text())))


def _hparams(job_dir: Path) -> tuple[dict[str, float], dict[str, float]]:
    events = list((job_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1, events
    acc = EventAccumulator(str(events[0].parent), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    start = plugin_data_pb2.HParamsPluginData.FromString(
        acc.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    params = {k: v.number_value for k, v in start.session_start_info.hparams.items() if v.HasField("number_value")}
    metrics = {tag: acc.Scalars(tag)[-1].value for tag in acc.Tags()["scalars"] if tag.startswith("hp/")}
    return params, metrics


def test_2x2_sweep_leaves_models_contact_sheet_and_table(photo_dir: Path, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    proc = _sweep(sweep_dir, f"data.root={photo_dir}", "loss.style_weight=1,100", "loss.content_weight=1,10")
    assert proc.returncode == 0, proc.stderr[-4000:]

    # one output dir and model file per combination, trained with that combination
    expected = {"0": (1.0, 1.0), "1": (1.0, 10.0), "2": (100.0, 1.0), "3": (100.0, 10.0)}
    models = sorted(sweep_dir.glob("*/model.safetensors"))
    assert [m.parent.name for m in models] == sorted(expected)
    for model in models:
        _, meta = load_model(model)
        loss = meta["loss"]
        assert (loss["style_weight"], loss["content_weight"]) == expected[model.parent.name]
        assert meta["steps"] == 2

    # the table: parameters -> status, steps, wall time, final losses, model
    rows = _table(sweep_dir)
    assert [r["job"] for r in rows] == ["0", "1", "2", "3"]
    for row in rows:
        weights = (float(row["loss.style_weight"]), float(row["loss.content_weight"]))
        assert weights == expected[row["job"]]
        assert row["status"] == "completed" and row["steps"] == "2" and not row["error"]
        assert row["model"] == f"{row['job']}/model.safetensors"
        assert float(row["wall_time_s"]) > 0
        for term in ("total", "content", "style", "tv"):
            assert math.isfinite(float(row[f"final_{term}"])) and float(row[f"final_{term}"]) > 0
    # the logged style term carries its weight: 100x the weight gives a much larger term
    by_job = {r["job"]: r for r in rows}
    for low, high in (("0", "2"), ("1", "3")):
        assert float(by_job[high]["final_style"]) > 10 * float(by_job[low]["final_style"])
    markdown = (sweep_dir / MARKDOWN_NAME).read_text()
    assert "| loss.style_weight | loss.content_weight |" in markdown and markdown.count("| completed |") == 4

    # hyperparameters and final losses in TensorBoard's hparams view
    params, metrics = _hparams(sweep_dir / "2")
    assert params["loss.style_weight"] == 100 and params["loss.content_weight"] == 1
    summary = json.loads((sweep_dir / "2" / "summary.json").read_text())
    assert metrics["hp/final_total"] == pytest.approx(summary["final_losses"]["total"], rel=1e-6)

    # rebuilding from the directory alone gives the same table and the same picture
    first = {name: (sweep_dir / name).read_bytes() for name in (CSV_NAME, MARKDOWN_NAME)}
    first_sheet = np.asarray(Image.open(sweep_dir / CONTACT_SHEET_NAME).convert("RGB")).astype(int)
    for name in (CSV_NAME, MARKDOWN_NAME, CONTACT_SHEET_NAME):
        (sweep_dir / name).unlink()
    assert report_main([str(sweep_dir)]) == 0
    assert {name: (sweep_dir / name).read_bytes() for name in first} == first
    report = build_report(sweep_dir)
    sheet = np.asarray(Image.open(report.contact_sheet).convert("RGB")).astype(int)
    assert sheet.shape == first_sheet.shape
    # same models on the same photos; at most rounding differences between CPU thread counts
    assert np.abs(sheet - first_sheet).max() <= 1

    # layout: 2 rows (style_weight) x 2 columns (content_weight), cells of 2 photos of 192 px
    boxes = report.cell_boxes
    assert sorted(boxes) == [0, 1, 2, 3]
    cell_w = 2 * SHEET_SIZE + 4
    for left, top, right, bottom in boxes.values():
        assert (right - left, bottom - top) == (cell_w, SHEET_SIZE)
    assert boxes[0][1] == boxes[1][1] < boxes[2][1] == boxes[3][1]  # rows: style_weight 1, then 100
    assert boxes[0][0] == boxes[2][0] < boxes[1][0] == boxes[3][0]  # columns: content_weight 1, then 10
    height, width = sheet.shape[:2]
    assert width >= 2 * cell_w and height >= 3 * SHEET_SIZE  # input row + two rows of cells
    assert max(b[2] for b in boxes.values()) < width and max(b[3] for b in boxes.values()) < height
    cells = {num: sheet[top:bottom, left:right] for num, (left, top, right, bottom) in boxes.items()}
    for a, b in combinations(cells, 2):
        assert np.abs(cells[a] - cells[b]).mean() > 2.0, (a, b)  # every job stylizes differently


def test_failed_job_does_not_end_the_sweep(photo_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    sweep_dir = tmp_path / "sweep"
    # job 0 fails (no photos); the basic launcher must still run job 1 and build the report
    proc = _sweep(sweep_dir, f"data.root={empty},{photo_dir}")
    assert proc.returncode == 1, proc.stderr[-4000:]
    errors = _error_lines(proc)
    assert len(errors) == 1 and "1 of 2 sweep jobs failed" in errors[0], proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    assert (sweep_dir / "1" / "model.safetensors").is_file()
    assert not (sweep_dir / "0" / "model.safetensors").exists()

    rows = _table(sweep_dir)
    assert [(r["job"], r["status"]) for r in rows] == [("0", "failed"), ("1", "completed")]
    assert "no images found" in rows[0]["error"] and str(empty) in rows[0]["error"]
    assert rows[0]["data.root"] == str(empty) and rows[1]["data.root"] == str(photo_dir)
    assert "| failed |" in (sweep_dir / MARKDOWN_NAME).read_text()

    report = build_report(sweep_dir)
    sheet = np.asarray(Image.open(report.contact_sheet).convert("RGB"))
    left, top, right, bottom = report.cell_boxes[0]
    assert (sheet[top:bottom, left:right] == EMPTY_CELL).all()  # no pictures for the failed job
    left, top, right, bottom = report.cell_boxes[1]
    assert np.asarray(sheet[top:bottom, left:right]).std() > 10

    # a job that left no summary (killed) is reported as missing, not skipped
    (sweep_dir / "1" / "summary.json").unlink()
    report = build_report(sweep_dir)
    assert [j.status for j in report.jobs] == ["failed", "missing"]
    assert "summary.json" in _table(sweep_dir)[1]["error"]


def test_multirun_with_ddp_is_refused_before_any_job(photo_dir: Path, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    proc = _sweep(sweep_dir, f"data.root={photo_dir}", "trainer.devices=2", "++trainer.strategy=ddp",
                  "loss.style_weight=1,10")
    assert proc.returncode == 2, proc.stderr[-4000:]
    errors = _error_lines(proc)
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-4000:]
    assert "trainer.strategy=ddp" in errors[0] and "trainer.devices=2" in errors[0]
    assert "hydra/launcher=joblib" in errors[0] and "re-running the command" in errors[0]
    assert not list(sweep_dir.glob("*/model.safetensors")) and not list(sweep_dir.glob("*/.hydra"))


@pytest.mark.parametrize(
    ("trainer", "refused"),
    [
        ({"devices": 1}, False),
        ({"devices": "auto", "strategy": "auto"}, False),
        ({"devices": [0]}, False),
        ({"devices": "1"}, False),
        ({"devices": 2}, True),
        ({"devices": -1}, True),
        ({"devices": "0,1"}, True),
        ({"devices": [0, 1]}, True),
        ({"devices": 1, "strategy": "ddp"}, True),
        ({"devices": 1, "strategy": "ddp_spawn"}, True),
        ({"devices": 1, "strategy": {"_target_": "pytorch_lightning.strategies.DDPStrategy"}}, True),
        ({"devices": 1, "num_nodes": 2}, True),
    ],
)
def test_multirun_device_check(trainer: dict, refused: bool) -> None:
    from omegaconf import OmegaConf

    assert (multirun_device_problem(OmegaConf.create(trainer)) is not None) == refused


@pytest.mark.parametrize(("override", "key", "value"), [
    ("loss.style_weight=100", "loss.style_weight", "100"),
    ("+trainer.strategy=ddp", "trainer.strategy", "ddp"),
    ("~callbacks.lr_monitor", "callbacks.lr_monitor", ""),
    ("style=udnie", "style", "udnie"),
    ("data.shards='/d/t-{0..1}.tar'", "data.shards", "/d/t-{0..1}.tar"),
    ("data.root=/a/b c", "data.root", "/a/b c"),
])
def test_override_keys_and_values_as_hydra_parses_them(override: str, key: str, value: str) -> None:
    assert (override_key(override), override_value(override)) == (key, value)


def test_gpu_slots_one_job_per_gpu(tmp_path: Path) -> None:
    slots = GpuSlots(tmp_path, ["3", "5"])
    first = slots.acquire(job_num=0, block=False)
    second = slots.acquire(job_num=0, block=False)  # GPU 3 is taken: the next free one
    assert (first.gpu, second.gpu) == ("3", "5")
    assert slots.acquire(job_num=1, block=False) is None  # every GPU busy
    first.release()
    third = slots.acquire(job_num=1, block=False)
    assert third.gpu == "3"
    # a process bound to GPU 5 waits for GPU 5 even though GPU 3 frees up first
    third.release()
    got: list[str] = []
    waiter = threading.Thread(target=lambda: got.append(slots.acquire(job_num=0, bound="5").gpu))
    waiter.start()
    time.sleep(0.3)
    assert not got, "must wait while GPU 5 is busy"
    second.release()
    waiter.join(timeout=10)
    assert got == ["5"]


def test_pin_job_sets_cuda_visible_devices_and_stays_bound(tmp_path: Path, monkeypatch) -> None:
    for name, value in (("_pool", None), ("_bound", None), ("_held", None)):
        monkeypatch.setattr(gpu_slots, name, value)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert gpu_slots.pin_job(tmp_path, job_num=1) == "5"  # job 1 of 2 GPUs prefers the second
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    gpu_slots.release_job()
    # CUDA keeps the GPU it started with: this process's next job stays on GPU 5
    assert gpu_slots.pin_job(tmp_path, job_num=0) == "5"
    gpu_slots.release_job()


def test_pin_job_without_gpus_changes_nothing(tmp_path: Path, monkeypatch) -> None:
    for name, value in (("_pool", None), ("_bound", None), ("_held", None)):
        monkeypatch.setattr(gpu_slots, name, value)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu_slots.pin_job(tmp_path, job_num=0) is None
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert not list(tmp_path.iterdir())


def test_report_cli_on_a_directory_without_jobs(tmp_path: Path, capsys) -> None:
    assert run_command(report_main, [str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and str(tmp_path) in err[0]


@pytest.mark.slow  # ~1 min on 2 busy cores: two fresh worker processes import torch
def test_joblib_launcher_runs_pinned_jobs_in_worker_processes(photo_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep_dir = tmp_path / "sweep"
    command = [sys.executable, "-m", "fst.train", "-m", *SWEEP_TINY, f"data.root={photo_dir}",
               "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "loss.style_weight=1,100",
               "data.num_workers=1",  # DataLoader worker processes inside joblib's worker processes
               "trainer.accelerator=auto",  # GPU pinning applies to jobs that may use a GPU
               f"hydra.sweep.dir={sweep_dir}"]
    # Two GPU ids: pinning runs for real; on a box without those GPUs the jobs fall back to the CPU.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0,1"}
    proc = subprocess.Popen(command, cwd=ROOT_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-4000:]
    summaries = [json.loads((sweep_dir / str(n) / "summary.json").read_text()) for n in (0, 1)]
    assert all(s["status"] == "completed" and s["pid"] != proc.pid for s in summaries)
    gpus = [s["cuda_visible_devices"] for s in summaries]
    if summaries[0]["pid"] != summaries[1]["pid"]:
        assert gpus == ["0", "1"]  # two workers: each job on the GPU it prefers (job number % 2)
    else:
        assert gpus[0] == gpus[1] in ("0", "1")  # one worker ran both: CUDA keeps its first GPU
    assert {p.name for p in (sweep_dir / ".gpu_slots").iterdir()} == {f"gpu{g}-0.lock" for g in gpus}
    assert len(list(sweep_dir.glob("*/model.safetensors"))) == 2
    assert [r["loss.style_weight"] for r in _table(sweep_dir)] == ["1", "100"]
    assert (sweep_dir / CONTACT_SHEET_NAME).is_file()


def test_three_swept_keys_layout_rows_are_combinations(tmp_path: Path) -> None:
    from itertools import product

    from fst.sweep.contact_sheet import render_contact_sheet
    from fst.sweep.report import JobRecord, swept_keys

    values = list(product(["1", "10"], ["a", "b"], ["x", "y"]))
    jobs = [JobRecord(num=n, dir=tmp_path, overrides={"seed": "0", "k1": v1, "k2": v2, "k3": v3}, status="failed",
                      error="not trained") for n, (v1, v2, v3) in enumerate(values)]
    jobs.append(JobRecord(num=8, dir=tmp_path, overrides={"seed": "0", "k1": "1", "k2": "a", "k3": "x"},
                          status="failed", error="same values as job 0"))
    swept = swept_keys(jobs)
    assert swept == ["k1", "k2", "k3"]  # command-line order; "seed" has one value
    sheet, boxes = render_contact_sheet(jobs, swept, sorted(VAL_PHOTOS.rglob("*.png"))[:1], size=32)
    tops = sorted({b[1] for b in boxes.values()})
    lefts = sorted({b[0] for b in boxes.values()})
    assert len(tops) == 5 and len(lefts) == 2  # 4 (k1, k2) rows + 1 row for the repeat; k3 columns
    for n, (v1, v2, v3) in enumerate(values):
        assert boxes[n][1] == tops[n // 2] and boxes[n][0] == lefts[n % 2]
    assert boxes[8][1] == tops[4] and boxes[8][0] == lefts[0]
    assert sheet.size[0] > boxes[1][2] and sheet.size[1] > boxes[8][3]
