"""Fault injection: kill -9, signals, truncated checkpoints, NaN, a full disk, bad input (docs/reliability.md).

Subprocesses where the process must die or exit (kill -9, SIGTERM, the error line);
the rest in-process with ``train()``. All on the CPU with ``debug=faults`` (debug=tiny plus
fst.train.faults.FaultInjection) and a checkpoint every step.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import VAL_PHOTOS
from fst.errors import FstError
from fst.nets.model_file import load_model
from fst.resources import ASSETS_DIR
from fst.train.resume import find_resume_checkpoint, load_checkpoint_if_sound
from fst.train.run import train

ROOT_DIR = Path(__file__).resolve().parents[2]
STEPS = 8


def common(photo_dir: Path, steps: int = STEPS) -> list[str]:
    return [
        "debug=faults", f"data.root={photo_dir}", f"data.val_root={VAL_PHOTOS}", f"trainer.max_steps={steps}",
        "callbacks.model_checkpoint.every_n_train_steps=1", "trainer.val_check_interval=4",
    ]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "fst.train", *args], cwd=ROOT_DIR, capture_output=True, text=True,
                          timeout=300, env=env)


def _net_state(path: Path) -> dict[str, torch.Tensor]:
    net, _ = load_model(path)
    return net.state_dict()


def _step_of(path: Path) -> int:
    ckpt, why = load_checkpoint_if_sound(path)
    assert ckpt is not None, f"{path}: {why}"
    return int(ckpt["global_step"])


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Bitwise comparisons between in-process and subprocess runs need the same thread count."""


def test_kill9_five_times_then_rerun_matches_uninterrupted_run(compose_cfg, photo_dir: Path, tmp_path: Path) -> None:
    seed = random.randrange(1 << 16)
    rng = random.Random(seed)
    # Five kills at random steps: four at the end of a step (before its checkpoint), one
    # halfway through writing a step's last.ckpt (its periodic checkpoint is whole).
    kills = sorted(rng.sample(range(1, STEPS), 5))
    during_save = rng.choice(kills)
    at_steps = [k for k in kills if k != during_save]
    run_dir = tmp_path / "killed"
    command = [*common(photo_dir), f"callbacks.fault_injection.kill_at_steps=[{','.join(map(str, at_steps))}]",
               f"callbacks.fault_injection.kill_during_save_at_step={during_save}", f"hydra.run.dir={run_dir}"]
    note = f"random seed {seed}: kills at {at_steps}, during the save of step {during_save}"
    print(note)
    resumed_from = []
    for kill in kills:
        proc = _cli(*command)
        assert proc.returncode == -9, (note, proc.returncode, proc.stderr[-2000:])
        newest = find_resume_checkpoint(run_dir / "checkpoints")
        # At most one checkpoint interval (one step here) of work is lost.
        expected = kill if kill == during_save else kill - 1
        assert (newest[1] if newest else 0) == expected, (note, kill, newest)
        found = re.search(r"resuming from \S+ \(step (\d+)\)", proc.stderr)
        resumed_from.append(int(found.group(1)) if found else 0)
    assert resumed_from == [0, *[k if k == during_save else k - 1 for k in kills[:-1]]], (note, resumed_from)
    final = _cli(*command)
    assert final.returncode == 0, (note, final.stderr[-3000:])
    assert f"model: {run_dir / 'model.safetensors'}" in final.stdout
    assert not list((run_dir / "checkpoints").glob(".*.tmp")), "a temporary checkpoint file was left behind"

    # The uninterrupted run with the same seed (in-process, same thread count).
    clean = train(compose_cfg(common(photo_dir), output_dir=tmp_path / "clean"))
    assert clean["global_step"] == STEPS
    killed_net, clean_net = _net_state(run_dir / "model.safetensors"), _net_state(Path(clean["model_path"]))
    for key, value in clean_net.items():
        assert torch.equal(killed_net[key], value), (note, key, (killed_net[key] - value).abs().max())
    assert _step_of(run_dir / "checkpoints" / "last.ckpt") == STEPS

    # A finished run says so, exits 0 and trains nothing.
    before = (run_dir / "model.safetensors").stat().st_mtime_ns
    again = _cli(*command)
    assert again.returncode == 0 and "already finished at step 8" in again.stderr, again.stderr[-2000:]
    assert (run_dir / "model.safetensors").stat().st_mtime_ns == before

    # kill -9 from outside, at a random moment after a random step's checkpoint appeared
    # (possibly while the next one is being written), then the unchanged command again.
    outside = tmp_path / "outside"
    plain = [*common(photo_dir), f"hydra.run.dir={outside}"]
    after_step, delay = rng.randint(2, STEPS - 2), rng.uniform(0.0, 0.5)
    proc = subprocess.Popen([sys.executable, "-m", "fst.train", *plain], cwd=ROOT_DIR, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        marker = outside / "checkpoints" / f"step_{after_step:06d}.ckpt"
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(delay)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -9, f"{note}: the run ended before the kill ({proc.returncode})"
    rerun = _cli(*plain)
    assert rerun.returncode == 0, (note, rerun.stderr[-3000:])
    found = re.search(r"resuming from \S+ \(step (\d+)\)", rerun.stderr)
    assert found and after_step <= int(found.group(1)) < STEPS, (note, after_step, delay, rerun.stderr[-2000:])
    for key, value in clean_net.items():
        assert torch.equal(_net_state(outside / "model.safetensors")[key], value), (note, key)


def test_sigterm_saves_at_the_step_boundary_and_exits_0(photo_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    command = [*common(photo_dir), f"hydra.run.dir={run_dir}"]
    proc = _cli(*command, "callbacks.fault_injection.signal_at_step=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SIGTERM: checkpoint saved at step 3" in proc.stderr, proc.stderr[-2000:]
    assert _step_of(run_dir / "checkpoints" / "last.ckpt") == 3
    assert not (run_dir / "model.safetensors").exists() and not (run_dir / "finished.json").exists()


def test_sigusr1_under_slurm_saves_and_requeues(compose_cfg, photo_dir: Path, tmp_path: Path, monkeypatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "scontrol.args"
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" > {record}\n")
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    cfg = compose_cfg([*common(photo_dir), "callbacks.fault_injection.signal_at_step=2",
                       "callbacks.fault_injection.signal_name=SIGUSR1"], output_dir=tmp_path / "run")
    result = train(cfg)
    assert result["preempted"] and result["global_step"] == 2 and result["model_path"] is None
    assert record.read_text().split() == ["requeue", "4242"]
    assert _step_of(tmp_path / "run" / "checkpoints" / "last.ckpt") == 2
    # The requeued job (the same command) continues to the end.
    monkeypatch.delenv("SLURM_JOB_ID")
    cfg = compose_cfg([*common(photo_dir), "callbacks.fault_injection.signal_at_step=2",
                       "callbacks.fault_injection.signal_name=SIGUSR1"], output_dir=tmp_path / "run")
    result = train(cfg)
    assert not result["preempted"] and result["global_step"] == STEPS and result["model_path"]


def test_truncated_checkpoints_are_skipped_and_keep_last_n_bounds_disk(compose_cfg, photo_dir: Path, tmp_path: Path,
                                                                      capfd) -> None:
    out = tmp_path / "run"
    overrides = [*common(photo_dir, steps=4), "keep_last_n=2"]
    first = train(compose_cfg(overrides, output_dir=out))
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("*.ckpt")) == ["last.ckpt", "step_000003.ckpt", "step_000004.ckpt"]
    reference = _net_state(Path(first["model_path"]))
    # A kill between the last checkpoint and the end: no model, not finished; both newest checkpoints truncated.
    (out / "finished.json").unlink()
    (out / "model.safetensors").unlink()
    for name in ("last.ckpt", "step_000004.ckpt"):
        data = (ckpts / name).read_bytes()
        (ckpts / name).write_bytes(data[: len(data) // 2])
    capfd.readouterr()
    again = train(compose_cfg(overrides, output_dir=out))
    err = capfd.readouterr().err
    assert re.search(r"warning: skipping \S*last\.ckpt: unreadable", err), err
    assert re.search(r"warning: skipping \S*step_000004\.ckpt: unreadable", err), err
    assert "resuming from" in err and "step_000003.ckpt (step 3)" in err, err
    assert again["global_step"] == 4
    for key, value in reference.items():
        assert torch.equal(_net_state(Path(again["model_path"]))[key], value), key
    assert _step_of(ckpts / "last.ckpt") == 4
    # Killed after the final checkpoint, before the export: the rerun exports without training.
    (out / "finished.json").unlink()
    (out / "model.safetensors").unlink()
    exported = train(compose_cfg(overrides, output_dir=out))
    assert exported["global_step"] == 4 and (out / "finished.json").is_file()
    for key, value in reference.items():
        assert torch.equal(_net_state(Path(exported["model_path"]))[key], value), key


def test_changed_config_is_refused_unless_allowed_and_resume_auto(compose_cfg, photo_dir: Path, tmp_path: Path,
                                                                  capfd) -> None:
    runs = tmp_path / "runs"
    first = runs / "2026-01-01_00-00-00"
    train(compose_cfg(common(photo_dir, steps=2), output_dir=first))
    capfd.readouterr()
    done = train(compose_cfg(common(photo_dir, steps=2), output_dir=first))
    assert done["finished"] and "already finished at step 2" in capfd.readouterr().err
    changed = [*common(photo_dir, steps=3), "model.optimizer.lr=1e-3"]
    with pytest.raises(FstError, match=r"other settings .*model\.optimizer\.lr: 0\.0003 -> 0\.001.*"
                                       r"trainer\.max_steps: 2 -> 3.*resume\.allow_changes=true"):
        train(compose_cfg(changed, output_dir=first))
    more = train(compose_cfg([*changed, "resume.allow_changes=true"], output_dir=first))
    assert more["global_step"] == 3 and "changed settings" in capfd.readouterr().err
    # resume=auto from a new (timestamped) folder beside it: continues the newest matching run.
    auto = train(compose_cfg([*changed, "resume=auto"], output_dir=runs / "2026-01-02_00-00-00"))
    assert auto["finished"] and auto["output_dir"] == str(first)
    fresh = train(compose_cfg([*common(photo_dir, steps=2), "resume=auto", "model.optimizer.lr=5e-4"],
                              output_dir=runs / "2026-01-03_00-00-00"))
    assert fresh["output_dir"] == str(runs / "2026-01-03_00-00-00") and fresh["global_step"] == 2


def test_nan_loss_stops_naming_step_and_term_with_last_good_weights_on_disk(compose_cfg, photo_dir: Path,
                                                                           tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(FstError, match=r"non-finite training at step 3: loss term 'style' is NaN"):
        train(compose_cfg([*common(photo_dir), "callbacks.fault_injection.nan_at_step=3"], output_dir=out))
    ckpts = sorted((out / "checkpoints").glob("*.ckpt"))
    assert [p.name for p in ckpts] == ["last.ckpt", "step_000001.ckpt", "step_000002.ckpt"]
    for path in ckpts:  # loads and every tensor finite
        assert _step_of(path) <= 2
    assert not (out / "model.safetensors").exists() and not (out / "finished.json").exists()


def test_nan_policy_skip_skips_the_step_up_to_a_limit(compose_cfg, photo_dir: Path, tmp_path: Path, capfd) -> None:
    result = train(compose_cfg([*common(photo_dir, steps=4), "nan_policy=skip", "callbacks.fault_injection.nan_at_step=2"],
                               output_dir=tmp_path / "skip"))
    assert result["global_step"] == 4 and result["model_path"]
    assert "warning: step 2: loss term 'style' is NaN; update skipped (1 of at most 10)" in capfd.readouterr().err
    with pytest.raises(FstError, match=r"step 2: .*after 0 skipped steps \(nan_max_skips=0\)"):
        train(compose_cfg([*common(photo_dir, steps=4), "nan_policy=skip", "nan_max_skips=0",
                           "callbacks.fault_injection.nan_at_step=2"], output_dir=tmp_path / "limit"))


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(compose_cfg, photo_dir: Path,
                                                                     tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(FstError, match=r"disk full while writing checkpoint \S+step_000003\.ckpt at step 3; "
                                       r"the previous checkpoints are kept"):
        train(compose_cfg([*common(photo_dir), "callbacks.fault_injection.enospc_at_step=3"], output_dir=out))
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["last.ckpt", "step_000001.ckpt", "step_000002.ckpt"]
    assert _step_of(ckpts / "last.ckpt") == 2 and _step_of(ckpts / "step_000002.ckpt") == 2


def _bad_input(compose_cfg, tmp_path: Path, overrides: list[str]) -> str:
    out = tmp_path / "never"
    with pytest.raises(FstError) as info:
        train(compose_cfg(overrides, output_dir=out))
    assert not out.exists(), "a run with bad input wrote something"
    return str(info.value)


def test_bad_style_images_and_photo_folders(compose_cfg, photo_dir: Path, tmp_path: Path, caplog) -> None:
    from PIL import Image

    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (40, 30), "red").save(tiny)
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image at all" * 10)
    data = [f"data.root={photo_dir}", f"data.val_root={VAL_PHOTOS}"]
    assert "40x30 px is too small" in _bad_input(compose_cfg, tmp_path, [*data, f"style.image={tiny}"])
    assert "garbage.jpg" in _bad_input(compose_cfg, tmp_path, [*data, f"style.image={garbage}"])
    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(3):
        (broken / f"b{i}.jpg").write_bytes(b"\xff\xd8 broken jpeg")
    line = _bad_input(compose_cfg, tmp_path, [f"data.root={broken}", f"data.val_root={VAL_PHOTOS}"])
    assert "none of the 3 image files could be read" in line and str(broken) in line
    # Some broken files: skipped and counted, the rest trains.
    (photo_dir / "zz_broken.jpg").write_bytes(b"\xff\xd8 broken jpeg")
    from hydra.utils import instantiate

    datamodule = instantiate(compose_cfg(data).data)
    with caplog.at_level("WARNING"):
        datamodule.setup("fit")
    assert datamodule.unreadable_files == 1 and len(datamodule.train_files) == 4
    assert "skipping 1 unreadable image file(s) of 5 (e.g. zz_broken.jpg)" in caplog.text


def test_cli_bad_input_is_one_line_exit_1_and_writes_nothing(photo_dir: Path, tmp_path: Path) -> None:
    tiny = tmp_path / "tiny.jpg"
    from PIL import Image

    Image.open(ASSETS_DIR / "styles" / "the_wave.jpg").convert("RGB").resize((48, 32)).save(tiny)
    run_dir = tmp_path / "run"
    proc = _cli(f"style.image={tiny}", f"data.root={photo_dir}", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr and "too small" in errors[0], proc.stderr
    assert not (run_dir / "config.yaml").exists() and not (run_dir / "checkpoints").exists()


def test_non_finite_weights_are_never_written(compose_cfg, tmp_path: Path) -> None:
    from hydra.utils import instantiate

    from fst.train.callbacks import ExportModel
    from fst.train.reliability import AtomicCheckpointIO

    target = tmp_path / "checkpoints" / "step_000005.ckpt"
    with pytest.raises(FstError, match=r"refusing to write checkpoint \S+ at step 5: state_dict\.net\.w is not finite"):
        AtomicCheckpointIO().save_checkpoint({"global_step": 5, "state_dict": {"net.w": torch.tensor([1.0, float("inf")])}},
                                             target)
    assert not target.exists() and not list(tmp_path.rglob("*.tmp"))

    cfg = compose_cfg()
    module = instantiate(cfg.model, loss=instantiate(cfg.loss))
    with torch.no_grad():
        next(module.net.parameters())[0].fill_(float("nan"))

    class Trainer:
        is_global_zero, global_step = True, 7

    export = ExportModel(str(tmp_path / "model.safetensors"))
    with pytest.raises(FstError, match=r"not exporting \S+model\.safetensors: weight \S+ is not finite at step 7"):
        export.export(Trainer(), module)
    assert not (tmp_path / "model.safetensors").exists()
