"""Multi-style models at inference: choosing and blending styles through Stylizer, fst-infer and
ONNX Runtime, the errors for bad choices, and the shipped gallery's blends."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from _infer_corpus import ROOT_DIR, photo, random_model
from fst.errors import FstError
from fst.images import pil_to_tensor
from fst.infer.cli import main as infer_main
from fst.infer.styles import model_file_styles, parse_style_text, style_label, style_weights
from fst.infer.stylizer import Stylizer
from fst.nets import TransformerNet, TransformerNetConfig, save_model
from fst.nets.conditional_norm import style_tables
from fst.resources import BUNDLED_MODELS_DIR, STYLES_DIR

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STYLES = ["alpha", "beta", "gamma"]


def multi_model(path: Path, styles: list[str] = STYLES) -> Path:
    """A random multi-style net whose styles differ visibly (rows scattered around the init)."""
    torch.manual_seed(0)
    net = TransformerNet(TransformerNetConfig(width=8, num_residual=1, num_styles=len(styles)))
    with torch.no_grad():
        for table in style_tables(net).values():
            table.add_(0.6 * torch.randn_like(table))
    return save_model(net, path, {"style_name": "multistyle", "styles": styles, "style_sha256": None, "loss": {},
                                  "steps": 0})


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return multi_model(tmp_path_factory.mktemp("models") / "multi.safetensors")


@pytest.fixture(scope="module")
def stylizer(model: Path) -> Stylizer:
    return Stylizer.load(model, device="cpu")


def test_styles_are_listed_and_one_weight_is_the_pure_style_exactly(stylizer: Stylizer, tmp_path: Path) -> None:
    assert stylizer.styles == STYLES
    single = Stylizer.load(random_model(tmp_path / "single.safetensors"), device="cpu")
    assert single.styles == []
    image = torch.rand(2, 3, 40, 56)
    pure = stylizer(image, style="beta")
    assert torch.equal(pure, stylizer(image, style={"beta": 1.0}))
    assert torch.equal(pure, stylizer(image, style={"beta": 2.5}))  # weights are normalised
    assert torch.equal(pure, stylizer(image, style="beta:1"))
    assert not torch.allclose(pure, stylizer(image, style="alpha"), atol=1e-2)
    # PIL in, PIL out, with a style
    assert stylizer(photo(0).resize((64, 48)), style="gamma").size == (64, 48)


def test_a_blend_lies_between_its_pure_styles(stylizer: Stylizer) -> None:
    image = pil_to_tensor(photo(0).resize((96, 64))).unsqueeze(0)
    a, b = stylizer(image, style="alpha"), stylizer(image, style="gamma")
    mid = stylizer(image, style="alpha:0.5,gamma:0.5")
    assert (mid - a).abs().mean() < (b - a).abs().mean()
    assert (mid - b).abs().mean() < (b - a).abs().mean()
    # moving the weight from alpha to gamma moves the output from alpha's towards gamma's
    distances = [float((stylizer(image, style={"alpha": 1 - t, "gamma": t}) - b).abs().mean())
                 for t in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert distances == sorted(distances, reverse=True) and distances[-1] == 0.0


def test_bad_choices_are_one_clear_error_naming_the_styles(stylizer: Stylizer, tmp_path: Path) -> None:
    image = torch.rand(1, 3, 32, 32)
    for choice, message in [
        (None, r"holds 3 styles: choose one or a blend .* among alpha, beta, gamma"),
        ("delta", r"unknown style 'delta': choose among alpha, beta, gamma"),
        ({"alpha": 0.0, "beta": 0.0}, "sum to 0; they must sum to a positive number"),
        ({"alpha": -1.0, "beta": 2.0}, "weight of alpha must be a finite number >= 0"),
        ({"alpha": float("nan")}, "weight of alpha must be a finite number >= 0"),
        ("alpha:x", "weight 'x' of alpha is not a number"),
        ("alpha,alpha", "alpha given twice"),
        ({}, "a style choice is a name or a mapping"),
    ]:
        with pytest.raises(FstError, match=message):
            stylizer(image, style=choice)
    single = Stylizer.load(random_model(tmp_path / "single.safetensors"), device="cpu")
    with pytest.raises(FstError, match="holds one style"):
        single(image, style="alpha")


def test_style_text_and_labels() -> None:
    assert parse_style_text("a") == {"a": 1.0}
    assert parse_style_text("a:0.7, b:0.3") == {"a": 0.7, "b": 0.3}
    assert style_label("a:0.7,b:0.3") == "a0.7+b0.3" and style_label({"a": 2}) == "a"
    weights = style_weights(["a", "b", "c"], {"c": 3, "a": 1})
    assert torch.equal(weights, torch.tensor([0.25, 0.0, 0.75]))


def test_onnx_blends_like_eager(model: Path, stylizer: Stylizer, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from fst.train.export import export_model

    onnx_path, error = export_model(model, tmp_path / "multi.onnx", "onnx")
    assert error is not None and error <= 1e-4  # checked at export: pure styles and a blend
    graph = Stylizer.load(onnx_path, device="cpu")
    assert graph.styles == STYLES
    image = torch.rand(2, 3, 75, 101)
    for choice in ("beta", "alpha:0.3,gamma:0.7", {"alpha": 1, "beta": 1, "gamma": 1}):
        assert (graph(image, style=choice) - stylizer(image, style=choice)).abs().max() <= 1e-4
    with pytest.raises(FstError, match="unknown style"):
        graph(image, style="delta")

    ts_path, ts_error = export_model(model, tmp_path / "multi.torchscript.pt", "torchscript")
    assert ts_error is not None and ts_error <= 1e-4
    traced = torch.jit.load(str(ts_path))
    weights = stylizer.style_weights("alpha:0.5,beta:0.5")
    assert (traced(image, weights) - stylizer.backend.net(image, weights)).abs().max() <= 1e-4


def test_fst_infer_style_option(model: Path, tmp_path: Path, capsys) -> None:
    source = tmp_path / "p.png"
    photo(0).resize((80, 60)).save(source)
    out = tmp_path / "out"
    common = ["-m", str(model), str(source), "-o", str(out), "--format", "png", "--no-progress"]
    assert infer_main([*common, "--style", "alpha:0.5,gamma:0.5"]) == 0
    assert infer_main([*common, "--style", "alpha"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["p_alpha.png", "p_alpha0.5+gamma0.5.png"]
    blend = pil_to_tensor(Image.open(out / "p_alpha0.5+gamma0.5.png"))
    expected = Stylizer.load(model, device="cpu")(photo(0).resize((80, 60)), style="alpha:0.5,gamma:0.5")
    assert (blend - pil_to_tensor(expected)).abs().max() <= 1 / 255 + 1e-6
    capsys.readouterr()
    for bad, message in [([], "holds 3 styles"), (["--style", "delta"], "unknown style 'delta'"),
                         (["--style", "alpha:0"], "must sum to a positive number")]:
        assert infer_main([*common, "--overwrite", *bad]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(errors) == 1 and errors[0].startswith("error: ") and message in errors[0], errors
        assert "alpha, beta, gamma" in errors[0] or "sum" in errors[0]


def test_list_models_shows_the_styles_inside(model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    multi_model(folder / "mine.safetensors", ["x", "y"])
    random_model(folder / "plain.safetensors")
    env = {**__import__("os").environ, "FST_MODELS": str(folder)}
    proc = subprocess.run([sys.executable, "-m", "fst.infer", "--list-models"], cwd=ROOT_DIR, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split("\t")[0]: line for line in proc.stdout.splitlines()}
    assert lines["mine"].endswith("\tstyles: x, y")
    assert "styles:" not in lines["plain"]


GALLERY = BUNDLED_MODELS_DIR / "gallery.safetensors"


def test_the_gallery_blend_lies_between_the_two_pure_styles(tmp_path: Path) -> None:
    """fst-infer -m gallery --style starry_night:0.5,the_wave:0.5: its colour distance to each
    painting lies between those of the two pure styles."""
    assert model_file_styles(GALLERY) == ["starry_night", "the_wave", "udnie", "composition_vii", "woman_with_hat",
                                          "the_scream"]
    from fst.images import open_rgb
    from fst.research.measures import at_measure_size, measure

    source = tmp_path / "photo.png"
    picture = photo(0).resize((192, 192))
    picture.save(source)
    outputs = {}
    for choice in ("starry_night", "the_wave", "starry_night:0.5,the_wave:0.5"):
        folder = tmp_path / style_label(choice)
        assert infer_main(["-m", "gallery", str(source), "-o", str(folder), "--style", choice, "--format", "png",
                           "--no-progress", "-q"]) == 0
        outputs[choice] = Image.open(next(folder.iterdir())).convert("RGB")
    for painting in ("starry_night", "the_wave"):
        target = at_measure_size(open_rgb(STYLES_DIR / f"{painting}.jpg"))
        colour = {c: measure(img, picture, target)["colour"] for c, img in outputs.items()}
        low, high = sorted((colour["starry_night"], colour["the_wave"]))
        assert low < colour["starry_night:0.5,the_wave:0.5"] < high, (painting, colour)
