"""model=multistyle: the styles list, balanced per-sample styles, the per-sample loss, a training
run with per-style logs and previews, exact resume, DDP, and `fst add-style` leaving every
other style and the shared weights bit-identical."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import TRAIN_PHOTOS, VAL_PHOTOS
from fst.errors import FstError, UsageError
from fst.loss.multistyle import MultiStyleLoss
from fst.nets import load
from fst.nets.conditional_norm import style_tables
from fst.nets.model_file import read_metadata
from fst.resources import BUNDLED_MODELS_DIR, STYLES_DIR
from fst.train.add_style import add_style
from fst.train.multistyle import MultiStyleModule, balanced_styles, resolve_styles
from fst.train.run import train

ROOT_DIR = Path(__file__).resolve().parents[2]
TWO = "styles=[starry_night,the_wave]"


def test_styles_are_names_paths_or_bundled(tmp_path: Path) -> None:
    mine = tmp_path / "mine.jpg"
    shutil.copy(STYLES_DIR / "udnie.jpg", mine)
    assert resolve_styles(["starry_night", str(mine)]) == [("starry_night", STYLES_DIR / "starry_night.jpg"),
                                                           ("mine", mine)]
    assert [name for name, _ in resolve_styles("bundled")] == [
        "composition_vii", "starry_night", "the_scream", "the_wave", "udnie", "woman_with_hat"]
    with pytest.raises(FstError, match=r"'mona_lisa' is neither a style \(composition_vii, .*bundled\) nor an image"):
        resolve_styles(["starry_night", "mona_lisa"])
    with pytest.raises(FstError, match="starry_night given more than once"):
        resolve_styles(["starry_night", str(STYLES_DIR / "starry_night.jpg")])
    with pytest.raises(FstError, match="styles is empty"):
        resolve_styles([])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(FstError, match="broken.jpg"):
        resolve_styles([str(broken)])


def test_styles_are_balanced_random_and_a_function_of_the_sample_number() -> None:
    drawn = balanced_styles(6, seed=0, first_sample=0, count=600)
    for block in drawn.reshape(-1, 6):
        assert sorted(block.tolist()) == list(range(6))  # every style once in every 6 samples
    orders = {tuple(block.tolist()) for block in drawn.reshape(-1, 6)}
    assert len(orders) > 50  # not one fixed order
    # any window (a step, a rank's share of it, a resumed run) draws what the whole run draws there
    assert torch.equal(balanced_styles(6, 0, 13, 7), drawn[13:20])
    assert not torch.equal(balanced_styles(6, 1, 0, 600), drawn)


def test_one_style_batches_give_the_single_style_loss(compose_cfg) -> None:
    cfg = compose_cfg(["style=the_wave", "style.size=64"])
    single = instantiate(cfg.loss)
    multi = MultiStyleLoss(single, [("udnie", STYLES_DIR / "udnie.jpg"), ("the_wave", STYLES_DIR / "the_wave.jpg")])
    torch.manual_seed(0)
    output, photos = torch.rand(3, 3, 40, 48), torch.rand(3, 3, 40, 48)
    expected = single(output, photos)
    got = multi(output, photos, style_index=torch.tensor([1, 1, 1]))
    for key, value in expected.items():
        assert torch.allclose(got[key], value, rtol=1e-5), key
    # a mixed batch: each sample against its own painting, the total the mean over samples
    mixed = multi(output, photos, style_index=torch.tensor([0, 1, 1]))
    udnie = multi(output[:1], photos[:1], style_index=torch.tensor([0]))
    # (the style part is per sample; the content term's normaliser is the batch's, as in PerceptualLoss)
    assert torch.allclose(mixed["styles/udnie/style"], udnie["styles/udnie/style"], rtol=1e-5)
    assert torch.allclose(mixed["total"], (mixed["styles/udnie/total"] + 2 * mixed["styles/the_wave/total"]) / 3,
                          rtol=1e-5)
    with pytest.raises(ValueError, match="style index"):
        multi(output, photos)


def test_training_logs_and_previews_every_style(compose_cfg, photo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = compose_cfg(["model=multistyle", TWO, f"data.root={photo_dir}", f"data.val_root={VAL_PHOTOS}"],
                      output_dir=out)
    result = train(cfg)
    net, meta = load(out / "model.safetensors")
    assert net.config.num_styles == 2 and meta["styles"] == ["starry_night", "the_wave"]
    assert meta["steps"] == 2 and set(meta["style_sha256s"]) == {"starry_night", "the_wave"}
    assert meta["loss"]["style_images"]["the_wave"].endswith("the_wave.jpg")
    assert math.isfinite(result["metrics"]["train/total"])
    acc = EventAccumulator(str(next((out / "tensorboard").rglob("events.out.tfevents.*")).parent),
                           size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    for name in ("starry_night", "the_wave"):
        assert {f"val/styles/{name}/total", f"val/styles/{name}/style"} <= scalars
    assert any(tag.startswith("train/styles/") for tag in scalars)
    # preview: the 2 photos, then a row per style (48 px cells, 2 px padding)
    assert acc.Images("val/stylized")[-1].height == 3 * (48 + 2) + 2


class RecordLosses(pl.Callback):
    def __init__(self) -> None:
        self.by_step: dict[int, float] = {}
        self.styles: dict[int, list[int]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.by_step[trainer.global_step] = float(outputs["loss"])


def test_resume_continues_the_same_styles_and_losses(compose_cfg, photo_dir: Path, tmp_path: Path) -> None:
    common = ["model=multistyle", "styles=[starry_night,the_wave,udnie]", f"data.root={photo_dir}",
              f"data.val_root={VAL_PHOTOS}", "trainer.max_steps=4", "callbacks.model_checkpoint.every_n_train_steps=2"]
    full, resumed = RecordLosses(), RecordLosses()
    train(compose_cfg(common, output_dir=tmp_path / "full"), extra_callbacks=[full])
    ckpt = tmp_path / "full" / "checkpoints" / "step_000002.ckpt"
    train(compose_cfg([*common, f"ckpt_path={ckpt}"], output_dir=tmp_path / "resumed"), extra_callbacks=[resumed])
    assert sorted(resumed.by_step) == [3, 4]
    for step in (3, 4):
        assert abs(resumed.by_step[step] - full.by_step[step]) <= 1e-6 * abs(full.by_step[step])
    assert read_metadata(tmp_path / "resumed" / "model.safetensors")["styles"] == ["starry_night", "the_wave", "udnie"]


def test_ddp_two_ranks_train_one_multistyle_model(photo_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "fst.train", "model=multistyle", TWO, "trainer=ddp_sim", f"data.root={photo_dir}",
         "data.val_count=1", "data.image_size=32", "data.batch_size=2", "data.num_workers=0", "data.val_size=32",
         "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.num_sanity_val_steps=0",
         "trainer.enable_progress_bar=false", "model.net.width=8", "model.net.num_residual=1", "style.size=64",
         f"hydra.run.dir={run_dir}"],
        cwd=ROOT_DIR, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    net, meta = load(run_dir / "model.safetensors")
    assert net.config.num_styles == 2 and meta["styles"] == ["starry_night", "the_wave"] and meta["steps"] == 2


def test_ranks_draw_disjoint_consecutive_samples(compose_cfg) -> None:
    module = instantiate(compose_cfg(["model=multistyle", TWO, "style.size=64"]).model,
                         loss=instantiate(compose_cfg(["style.size=64"]).loss))
    assert isinstance(module, MultiStyleModule) and module.num_styles == 2

    class FakeTrainer:
        world_size, global_rank, global_step = 2, 0, 0

    module._trainer = FakeTrainer()  # draw_styles reads the world size and rank only
    rank0 = module.draw_styles(3)
    FakeTrainer.global_rank = 1
    rank1 = module.draw_styles(3)
    assert torch.equal(torch.cat([rank0, rank1]), balanced_styles(2, module.style_seed, 0, 6))


@pytest.fixture
def tiny_gallery(compose_cfg, photo_dir: Path, tmp_path: Path) -> Path:
    """A 2-style model, trained for 2 tiny steps."""
    out = tmp_path / "gallery"
    train(compose_cfg(["model=multistyle", TWO, f"data.root={photo_dir}", f"data.val_root={VAL_PHOTOS}"],
                      output_dir=out))
    return out / "model.safetensors"


def test_add_style_trains_only_the_new_row(tiny_gallery: Path, photo_dir: Path, tmp_path: Path) -> None:
    before, meta = load(tiny_gallery)
    out = add_style(tiny_gallery, STYLES_DIR / "udnie.jpg", "mine", tmp_path / "plus.safetensors", steps=3,
                    batch_size=2, crop=32, style_size=64, photos=photo_dir, progress=False)
    after, new_meta = load(out)
    assert after.config.num_styles == 3 and new_meta["styles"] == ["starry_night", "the_wave", "mine"]
    tables = style_tables(before)
    new_state = after.state_dict()
    for key, value in before.state_dict().items():
        if key in tables:
            assert torch.equal(new_state[key][:2], value), key  # the other styles: bit-identical
            mean = value.mean(dim=0)
            assert not torch.equal(new_state[key][2], mean), key  # the new row trained away from its start
        else:
            assert torch.equal(new_state[key], value), key  # the shared weights: bit-identical
    assert new_meta["added_styles"][0]["name"] == "mine" and new_meta["added_styles"][0]["steps"] == 3
    assert new_meta["loss"]["style_images"]["mine"].endswith("udnie.jpg")
    assert set(new_meta["style_sha256s"]) == {"starry_night", "the_wave", "mine"}
    # the old styles stylize exactly as before
    image = torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(after(image, torch.tensor([0.0, 1.0, 0.0])), before(image, torch.tensor([0.0, 1.0])))

    # refusals: nothing written, nothing replaced
    with pytest.raises(UsageError, match="already has a style called the_wave"):
        add_style(tiny_gallery, STYLES_DIR / "udnie.jpg", "the_wave", tmp_path / "x.safetensors", steps=1)
    with pytest.raises(FstError, match="plus.safetensors: already exists"):
        add_style(tiny_gallery, STYLES_DIR / "udnie.jpg", "other", out, steps=1)
    with pytest.raises(FstError, match="missing.jpg: no such file"):
        add_style(tiny_gallery, tmp_path / "missing.jpg", "other", tmp_path / "y.safetensors", steps=1)
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "y.safetensors").exists()


def test_a_seventh_style_leaves_the_shipped_gallerys_six_unchanged(photo_dir: Path, tmp_path: Path) -> None:
    gallery = BUNDLED_MODELS_DIR / "gallery.safetensors"
    out = add_style(gallery, STYLES_DIR / "udnie.jpg", "udnie_again", tmp_path / "seven.safetensors", steps=1,
                    batch_size=1, crop=32, style_size=64, photos=photo_dir, progress=False)
    before, meta = load(gallery)
    after, new_meta = load(out)
    assert after.config.num_styles == 7 and new_meta["styles"] == [*meta["styles"], "udnie_again"]
    tables = style_tables(before)
    new_state = after.state_dict()
    for key, value in before.state_dict().items():
        assert torch.equal(new_state[key][:6] if key in tables else new_state[key], value), key


def test_add_style_refuses_a_single_style_model(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "fst.cli", "add-style", "starry_night", str(STYLES_DIR / "udnie.jpg"),
                           "--name", "mine", "-o", str(tmp_path / "x.safetensors")],
                          cwd=ROOT_DIR, capture_output=True, text=True, timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(errors) == 1, proc.stderr
    assert errors[0].startswith("error: ") and "not a multi-style model" in errors[0]
