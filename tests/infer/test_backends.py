"""The ONNX Runtime engine that `--backend auto` picks on the CPU: the same outputs as eager PyTorch
(whole images, odd sizes, batches, tiles, colour preservation, strength), its graph cache (created,
reused, rebuilt when corrupt or stale, keyed by the model file), and the engine choice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _infer_corpus import photo, random_model
from fst.errors import FstError
from fst.images import pil_to_tensor
from fst.infer.backends import CachedOnnxBackend, TorchBackend, load_backend
from fst.infer.cli import main as infer_main
from fst.infer.onnx_cache import GRAPH_KEY, cache_dir
from fst.infer.stylizer import Stylizer
from fst.nets import TransformerNet, TransformerNetConfig, save_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOLERANCE = 1e-4  # the bound on |auto - eager|, [0, 1] scale


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FST_HOME for this module, so the graphs cache in a temporary folder."""
    folder = tmp_path_factory.mktemp("fst_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FST_HOME", str(folder))
        yield folder


@pytest.fixture(scope="module")
def model(home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_model(tmp_path_factory.mktemp("models") / "tiny.safetensors", width=8, num_residual=1)


@pytest.fixture(scope="module")
def pair(model: Path) -> tuple[Stylizer, Stylizer]:
    """(auto, eager) Stylizers of the same model."""
    return Stylizer.load(model, device="cpu"), Stylizer.load(model, device="cpu", backend="torch")


def graph_files(home: Path) -> list[Path]:
    return sorted((home / "onnx").rglob("*.onnx"))


def test_auto_on_cpu_is_onnx_runtime_and_torch_is_eager(pair: tuple[Stylizer, Stylizer]) -> None:
    auto, eager = pair
    assert isinstance(auto.backend, CachedOnnxBackend) and auto.backend.note is None
    assert isinstance(eager.backend, TorchBackend)


@pytest.mark.parametrize("shape", [(1, 3, 64, 96), (2, 3, 75, 131), (3, 3, 33, 48)])
def test_auto_equals_eager(pair: tuple[Stylizer, Stylizer], shape: tuple[int, ...]) -> None:
    auto, eager = pair
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    assert (auto(x, tile=None) - eager(x, tile=None)).abs().max() <= TOLERANCE


def test_auto_equals_eager_with_colour_strength_and_tiny_inputs(pair: tuple[Stylizer, Stylizer]) -> None:
    auto, eager = pair
    x = torch.rand(1, 3, 70, 90, generator=torch.Generator().manual_seed(3))
    for options in ({"preserve_color": True}, {"strength": 0.4}, {"preserve_color": True, "strength": 0.7}):
        assert (auto(x, **options) - eager(x, **options)).abs().max() <= TOLERANCE
    tiny = torch.rand(1, 3, 5, 9, generator=torch.Generator().manual_seed(4))  # padded up to the minimum side
    assert (auto(tiny) - eager(tiny)).abs().max() <= TOLERANCE


def test_auto_equals_eager_in_tiles_with_shared_statistics(pair: tuple[Stylizer, Stylizer]) -> None:
    auto, eager = pair
    x = pil_to_tensor(photo(1).resize((203, 150)))[None]
    options = dict(tile=64, overlap=16, stats_size=96)  # stats from a downscaled copy, tiles of odd and x4 sizes
    assert (auto.stylize_batch(x, **options) - eager.stylize_batch(x, **options)).abs().max() <= TOLERANCE


def test_auto_batches_photos_like_eager(pair: tuple[Stylizer, Stylizer]) -> None:
    auto, eager = pair
    photos = [photo(i).resize((72, 48)) for i in range(3)] + [photo(3).resize((50, 61))]
    for a, e in zip(auto(photos, batch_size=3), eager(photos, batch_size=3)):
        diff = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(e, dtype=np.int16))
        assert diff.max() <= 1  # 8-bit outputs: rounding of values within 1e-4 may differ by one level


def test_graphs_are_cached_by_model_and_reused(model: Path, home: Path, tmp_path: Path) -> None:
    first = Stylizer.load(model, device="cpu")
    first(torch.rand(1, 3, 40, 44))
    files = graph_files(home)
    sha_folder = home / "onnx" / first.backend.graphs.sha256
    assert files and all(f.parent == sha_folder for f in files)
    stamps = {f: f.stat().st_mtime_ns for f in files}

    again = Stylizer.load(model, device="cpu")
    again(torch.rand(1, 3, 40, 44))
    assert again.backend.graphs.rebuilt == []
    assert {f: f.stat().st_mtime_ns for f in files} == stamps  # read, not written again

    other = random_model(tmp_path / "other.safetensors", width=8, num_residual=1, seed=5)
    Stylizer.load(other, device="cpu")(torch.rand(1, 3, 40, 44))
    assert len({f.parent for f in graph_files(home)}) == 2  # another file, another folder


@pytest.mark.parametrize("damage", ["truncated", "garbage", "another model's graph"])
def test_a_corrupt_or_stale_graph_is_rebuilt(model: Path, home: Path, tmp_path: Path, damage: str) -> None:
    stylizer = Stylizer.load(model, device="cpu")
    x = torch.rand(1, 3, 48, 52, generator=torch.Generator().manual_seed(7))
    expected = Stylizer.load(model, device="cpu", backend="torch")(x)
    stylizer(x)
    path = stylizer.backend.graphs.path("plain", "x4")
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not an onnx graph" * 10)
    else:
        other = random_model(tmp_path / "other.safetensors", width=8, num_residual=1, seed=9)
        foreign = Stylizer.load(other, device="cpu")
        foreign(x)
        path.write_bytes(foreign.backend.graphs.path("plain", "x4").read_bytes())

    fresh = Stylizer.load(model, device="cpu")
    assert (fresh(x) - expected).abs().max() <= TOLERANCE
    assert fresh.backend.graphs.rebuilt == [path]
    assert Stylizer.load(model, device="cpu").backend.graphs.session("plain", "x4")  # loads again
    import onnx

    key = json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}[GRAPH_KEY])
    assert key["model_sha256"] == fresh.backend.graphs.sha256 and key["kind"] == "plain"


def test_an_unwritable_cache_still_runs(model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocked = tmp_path / "home"
    blocked.mkdir()
    (blocked / "onnx").write_text("a file where the cache folder should be")
    monkeypatch.setenv("FST_HOME", str(blocked))
    assert cache_dir() == blocked / "onnx"
    x = torch.rand(1, 3, 40, 40)
    with pytest.warns(UserWarning, match="cannot cache the ONNX graph"):
        got = Stylizer.load(model, device="cpu")(x)
    assert (got - Stylizer.load(model, device="cpu", backend="torch")(x)).abs().max() <= TOLERANCE


def test_engine_choice(model: Path, tmp_path: Path) -> None:
    backend, _ = load_backend(model, device="cpu", precision="bf16")
    assert isinstance(backend, TorchBackend) and "fp32" in backend.note
    with pytest.raises(FstError, match="--backend onnx cannot run it"):
        load_backend(model, device="cpu", precision="bf16", backend="onnx")
    with pytest.raises(FstError, match="--backend must be one of"):
        load_backend(model, device="cpu", backend="tensorrt")

    torch.manual_seed(0)
    multi = TransformerNet(TransformerNetConfig(width=8, num_residual=1, num_styles=2))
    path = save_model(multi, tmp_path / "multi.safetensors", {"style_name": "multi", "styles": ["a", "b"]})
    backend, _ = load_backend(path, device="cpu")
    assert isinstance(backend, TorchBackend) and "multi-style" in backend.note
    with pytest.raises(FstError, match="multi-style"):
        load_backend(path, device="cpu", backend="onnx")


def test_compile_falls_back_to_eager_when_the_compiler_fails(model: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    def broken(fn):
        def run(*args):
            raise RuntimeError("no compiler here")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    stylizer = Stylizer.load(model, device="cpu", compile=True)
    assert isinstance(stylizer.backend, TorchBackend)
    x = torch.rand(1, 3, 32, 32)
    assert (stylizer(x) - Stylizer.load(model, device="cpu", backend="torch")(x)).abs().max() == 0
    assert "torch.compile failed (no compiler here); running eagerly" in capsys.readouterr().err


def test_cli_backend_flag(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in"
    source.mkdir()
    photo(2).resize((90, 67)).save(source / "p.png")
    outputs = {}
    for backend in ("auto", "torch", "onnx"):
        out = tmp_path / backend
        assert infer_main(["-m", str(model), str(source), "-o", str(out), "--backend", backend, "--format", "png",
                           "--no-progress", "-q"]) == 0
        outputs[backend] = np.asarray(Image.open(next(out.iterdir())), dtype=np.int16)
    assert np.abs(outputs["auto"] - outputs["torch"]).max() <= 1
    assert np.abs(outputs["onnx"] - outputs["auto"]).max() == 0
    capsys.readouterr()
    assert infer_main(["-m", str(model), str(source), "--backend", "tensorrt"]) == 2
    assert "invalid choice: 'tensorrt'" in capsys.readouterr().err


def test_cli_refuses_torch_for_an_onnx_file(model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fst.nets import load
    from fst.nets.export_formats import export_onnx

    net, meta = load(model)
    graph, _ = export_onnx(net, tmp_path / "tiny.onnx", meta, verify=False)
    photo(0).resize((40, 30)).save(tmp_path / "p.png")
    assert infer_main(["-m", str(graph), str(tmp_path / "p.png"), "-o", str(tmp_path / "o"), "--backend", "torch"]) == 2
    assert "--backend torch needs a .safetensors or .pth model" in capsys.readouterr().err


def test_tone_conditioned_model_runs_in_onnx_runtime_like_eager(tmp_path: Path) -> None:
    """The tone statistics (the photo's luminance mean and spread) are exported like instance
    norm statistics: whole images and tiles equal eager, and every tile sees the whole photo's."""
    torch.manual_seed(5)
    net = TransformerNet(TransformerNetConfig(width=8, num_residual=1, tone=True))
    with torch.no_grad():
        net.tone.scale.copy_(torch.randn(2, 3))
        net.tone.shift.copy_(torch.randn(2, 3))
    path = save_model(net, tmp_path / "toned.safetensors", {"style_name": "t", "style_sha256": None, "loss": {}, "steps": 0})
    auto, eager = Stylizer.load(path, device="cpu"), Stylizer.load(path, device="cpu", backend="torch")
    assert isinstance(auto.backend, CachedOnnxBackend) and auto.backend.note is None
    x = pil_to_tensor(photo(1).resize((203, 150)))[None]
    assert (auto(x, tile=None) - eager(x, tile=None)).abs().max() <= TOLERANCE
    options = dict(tile=64, overlap=16, stats_size=96)
    assert (auto.stylize_batch(x, **options) - eager.stylize_batch(x, **options)).abs().max() <= TOLERANCE
