"""trainer=ddp_sim: two gloo processes on the CPU, launched the way a user launches them."""

from __future__ import annotations

import math
import subprocess
import sys
import tarfile
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import TRAIN_PHOTOS
from fst.resources import ASSETS_DIR, BUNDLED_MODELS_DIR
from fst.data.coco import ShardStream, expand_shards
from fst.data.shards import ShardSettings, build_shards
from fst.nets.model_file import load_model

ROOT_DIR = Path(__file__).resolve().parents[2]  # the checkout (scripts/, cwd of subprocesses)

STEPS = 4
BATCH = 2


def keys_in(tar_path: str) -> set[str]:
    with tarfile.open(tar_path) as tar:
        return {m.name.split(".", 1)[0] for m in tar.getmembers()}


def test_ddp_sim_two_ranks_disjoint_data_one_writer(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    # 14 shards of 2 photos: each rank reads 7 shards (14 photos) per pass, more than it trains on
    build_shards(TRAIN_PHOTOS, shards, ShardSettings("train", samples_per_shard=2, resize=64), workers=2,
                 progress=False)
    run_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "fst.train", "style=starry_night", "data=coco", "trainer=ddp_sim",
        f"data.shards={shards}/train-{{000000..000013}}.tar",  # unquoted braces, as typed in a shell
        f"trainer.max_steps={STEPS}", "trainer.val_check_interval=2", "trainer.num_sanity_val_steps=0",
        "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
        "callbacks.model_checkpoint.every_n_train_steps=1000",
        f"data.batch_size={BATCH}", "data.image_size=32", "data.num_workers=1", "data.shuffle_buffer=4",
        "data.val_count=2", "data.val_size=32", f"data.key_log_dir={run_dir / 'keys'}",
        "model.net.width=8", "model.net.num_residual=1", "style.size=64", f"hydra.run.dir={run_dir}",
    ]
    run = subprocess.run(command, cwd=ROOT_DIR, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]

    # each rank trained on its own shards of pass 0, and on the same number of batches
    urls = expand_shards(f"{shards}/train-{{000000..000013}}.tar")
    splitter = ShardStream(urls, 32, BATCH, seed=0, world_size=2)
    seen = []
    for rank in range(2):
        keys = (run_dir / "keys" / f"rank{rank}.keys").read_text().split()
        assert len(keys) >= STEPS * BATCH and len(keys) % BATCH == 0
        assert set(keys) <= set().union(*(keys_in(u) for u in splitter.shards_for(rank, 2, 0)))
        seen.append(keys)
    assert len(seen[0]) == len(seen[1])
    assert not set(seen[0]) & set(seen[1]), "ranks trained on the same photos"

    # rank 0 alone wrote: one model, one checkpoint, one config, one TensorBoard file
    net, meta = load_model(run_dir / "model.safetensors", "cpu")
    assert meta["steps"] == STEPS and meta["style_name"] == "starry_night"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt"]
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == STEPS
    assert (run_dir / "config.yaml").is_file()
    events = list(run_dir.rglob("events.out.tfevents.*"))
    assert len(events) == 1, events
    acc = EventAccumulator(str(events[0].parent), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    losses = [e.value for e in acc.Scalars("train/total")]
    assert len(losses) == STEPS and all(math.isfinite(v) for v in losses), losses
    # rank 0's preview grid shows every preview photo (2 columns of 32 px + 2 px padding), not half
    assert acc.Images("val/stylized")[-1].width == 2 * (32 + 2) + 2
    assert [e.value for e in acc.Scalars("data/corrupt_samples")] == [0.0] * STEPS
