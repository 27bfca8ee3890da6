"""Export: Lightning checkpoint -> model file equals the trained module; ONNX and TorchScript
match eager PyTorch at several sizes; unsafe checkpoints are refused."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from _infer_corpus import photo, random_model
from conftest import VAL_PHOTOS
from fst.errors import run_command
from fst.errors import FstError
from fst.train.export import export_model, main
from fst.nets.export_formats import EXPORT_TOLERANCE, ONNX_METADATA_KEY, TORCHSCRIPT_METADATA_FILE
from fst.nets.model_file import load_model, read_metadata
from fst.images import pil_to_tensor
from fst.infer.stylizer import Stylizer
from fst.train.run import train

# Sizes checked here (on top of the exporter's own check): square, odd, and batched.
SIZES = [(1, 3, 64, 64), (2, 3, 101, 157)]


# Tiny nets: extra OpenMP threads only add contention on a shared CI box.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


class KeepModule(pl.Callback):
    """Hands the trained LightningModule back to the test."""

    module: pl.LightningModule | None = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.module = pl_module


def test_checkpoint_export_equals_the_lightning_module(compose_cfg, photo_dir: Path, tmp_path: Path) -> None:
    cfg = compose_cfg([
        f"data.root={photo_dir}",
        f"data.val_root={VAL_PHOTOS}",
        "callbacks.model_checkpoint.every_n_train_steps=2",
    ])
    keep = KeepModule()
    result = train(cfg, extra_callbacks=[keep])
    checkpoints = sorted((Path(result["output_dir"]) / "checkpoints").glob("*.ckpt"))
    assert checkpoints, "training wrote no checkpoint"

    out, _ = export_model(checkpoints[-1], tmp_path / "exported.safetensors")
    net, meta = load_model(out)
    module = keep.module.eval()
    x = pil_to_tensor(photo(0).resize((72, 52)))[None]
    with torch.no_grad():
        expected = module(x).float()
        got = net(x)
    assert torch.allclose(got, expected, atol=1e-6), (got - expected).abs().max()

    assert meta["style_name"] == cfg.style.name
    assert meta["steps"] == 2
    assert meta["architecture"]["width"] == cfg.model.net.width
    assert meta["loss"]["style_weight"] == cfg.loss.style_weight
    assert meta["loss"]["style_layers"] == dict(cfg.loss.style_layers)
    assert len(meta["style_sha256"]) == 64
    # The end-of-run export goes through the same code and holds the same weights.
    end_of_run, _ = load_model(result["model_path"])
    for key, value in end_of_run.state_dict().items():
        assert torch.equal(value, net.state_dict()[key]), key

    # The CLI: default output next to the checkpoint.
    assert main([str(checkpoints[-1])]) == 0
    assert read_metadata(checkpoints[-1].with_suffix(".safetensors"))["steps"] == 2


def _run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"image": x.numpy()})[0])


def _run_torchscript(path: Path, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.jit.load(str(path), map_location="cpu")(x)


@pytest.mark.parametrize(
    ("fmt", "width", "upsample"),
    [("onnx", 32, "resize_conv"), ("onnx", 8, "transposed"), ("torchscript", 8, "resize_conv"),
     ("torchscript", 8, "transposed")],
)
def test_onnx_and_torchscript_match_eager_at_two_sizes(tmp_path: Path, fmt: str, width: int, upsample: str) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    source = random_model(tmp_path / "m.safetensors", width=width, upsample=upsample)
    out, verified_error = export_model(source, None, fmt)
    assert out.name == ("m.onnx" if fmt == "onnx" else "m.torchscript.pt")
    assert verified_error is not None and verified_error <= EXPORT_TOLERANCE

    net, meta = load_model(source)
    run = _run_onnx if fmt == "onnx" else _run_torchscript
    generator = torch.Generator().manual_seed(1)
    for shape in SIZES:
        x = torch.rand(*shape, generator=generator)
        with torch.no_grad():
            expected = net(x)
        got = run(out, x)
        assert got.shape == expected.shape
        # Stated tolerance: 1e-4 absolute on the [0, 1] output scale (1/40 of an 8-bit level).
        assert (got - expected).abs().max() < EXPORT_TOLERANCE

    if fmt == "onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
        stored = json.loads(props[ONNX_METADATA_KEY])
    else:
        files = {TORCHSCRIPT_METADATA_FILE: ""}
        torch.jit.load(str(out), map_location="cpu", _extra_files=files)
        stored = json.loads(files[TORCHSCRIPT_METADATA_FILE])
        with pytest.raises(FstError, match="a TorchScript export"):  # fst never runs TorchScript code itself
            Stylizer.load(out, device="cpu")
    assert stored["architecture"] == meta["architecture"] and stored["style_name"] == "teststyle"


def test_export_cli_reports_the_verified_error(tmp_path: Path, capsys) -> None:
    pytest.importorskip("onnxruntime")
    source = random_model(tmp_path / "m.safetensors", width=8)
    assert main([str(source), "--format", "onnx", "-o", str(tmp_path / "out" / "x.onnx")]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(tmp_path / "out" / "x.onnx")
    assert "verified: max |onnx - eager|" in captured.err
    assert run_command(main, [str(source)]) == 1  # default output would be the source itself
    assert "refusing to overwrite the source" in capsys.readouterr().err


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_malicious_checkpoint_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "fst_net_config": {}, "hook": _Payload(marker)}, ckpt)
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Payload(control)))  # the payload is live...
    assert control.exists()
    with pytest.raises(FstError, match="evil.ckpt: not a loadable Lightning checkpoint"):
        export_model(ckpt, tmp_path / "out.safetensors")
    assert not marker.exists()  # ...but loading the checkpoint never ran it
    assert not (tmp_path / "out.safetensors").exists()
