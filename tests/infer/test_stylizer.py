"""Python API: Stylizer inputs and outputs, model lookup, pytorch/examples import, unsafe files,
tiling without seams, colour preservation and strength."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from _infer_corpus import photo, random_model, rotated_photo
from fst.infer.color import rgb_to_ycbcr
from fst.errors import FstError
from fst.nets.legacy import load_legacy_model
from fst import nets
from fst.images import luminance, pil_to_tensor, tensor_to_pil
from fst.infer.stylizer import Stylizer
from fst.infer.tiling import tile_grid


# Tiny nets: extra OpenMP threads only add contention on a shared CI box.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def stylizer(tmp_path_factory) -> Stylizer:
    path = random_model(tmp_path_factory.mktemp("models") / "tiny.safetensors", width=8)
    return Stylizer.load(path, device="cpu")


# --- pytorch/examples fast_neural_style import -------------------------------------------------


class _TheirConv(nn.Module):
    """fast_neural_style's ConvLayer / UpsampleConvLayer, written from its description."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, upsample: bool = False) -> None:
        super().__init__()
        self.upsample = upsample
        self.reflection_pad = nn.ReflectionPad2d(kernel // 2)
        self.conv2d = nn.Conv2d(c_in, c_out, kernel, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv2d(self.reflection_pad(x))


class _TheirResidual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _TheirConv(channels, channels, 3)
        self.in1 = nn.InstanceNorm2d(channels, affine=True)
        self.conv2 = _TheirConv(channels, channels, 3)
        self.in2 = nn.InstanceNorm2d(channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.in2(self.conv2(F.relu(self.in1(self.conv1(x)))))


class _TheirNet(nn.Module):
    """Their TransformerNet: 0-255 RGB in, 0-255 RGB out (unclamped), same key names."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.in1 = _TheirConv(3, 32, 9), nn.InstanceNorm2d(32, affine=True)
        self.conv2, self.in2 = _TheirConv(32, 64, 3, 2), nn.InstanceNorm2d(64, affine=True)
        self.conv3, self.in3 = _TheirConv(64, 128, 3, 2), nn.InstanceNorm2d(128, affine=True)
        for k in range(1, 6):
            setattr(self, f"res{k}", _TheirResidual(128))
        self.deconv1, self.in4 = _TheirConv(128, 64, 3, upsample=True), nn.InstanceNorm2d(64, affine=True)
        self.deconv2, self.in5 = _TheirConv(64, 32, 3, upsample=True), nn.InstanceNorm2d(32, affine=True)
        self.deconv3 = _TheirConv(32, 3, 9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.in1(self.conv1(x)))
        y = F.relu(self.in2(self.conv2(y)))
        y = F.relu(self.in3(self.conv3(y)))
        for k in range(1, 6):
            y = getattr(self, f"res{k}")(y)
        y = F.relu(self.in4(self.deconv1(y)))
        y = F.relu(self.in5(self.deconv2(y)))
        return self.deconv3(y)


def _their_state_dict() -> tuple[_TheirNet, dict[str, torch.Tensor]]:
    torch.manual_seed(3)
    net = _TheirNet().eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.InstanceNorm2d):  # non-trivial affine params, so a mix-up shows
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
        # Outputs around mid-grey with a wide spread, so few pixels saturate.
        net.deconv3.conv2d.weight.mul_(200.0)
        net.deconv3.conv2d.bias.fill_(128.0)
    state = dict(net.state_dict())
    # Files saved by old torch versions carry instance-norm running stats; they delete them on load.
    for name in ("in1", "in2", "in3", "in4", "in5", "res1.in1", "res3.in2"):
        state[f"{name}.running_mean"] = torch.zeros(state[f"{name}.weight"].shape)
        state[f"{name}.running_var"] = torch.ones(state[f"{name}.weight"].shape)
    return net, state


def test_fast_neural_style_state_dict_loads_and_matches_their_network(tmp_path: Path) -> None:
    their_net, state = _their_state_dict()
    path = tmp_path / "candy.pth"
    torch.save(state, path)

    net, meta = load_legacy_model(path)
    assert net.config.width == 32 and net.config.num_residual == 5 and net.config.output_head == "clamp"
    x = pil_to_tensor(photo(0).resize((96, 64)))[None]
    with torch.no_grad():
        theirs = (their_net(x * 255.0) / 255.0).clamp(0, 1)
        ours = net(x)
    unsaturated = ((theirs > 0.01) & (theirs < 0.99)).float().mean()
    assert unsaturated > 0.5  # the comparison is not decided by clamping
    assert (ours - theirs).abs().max() < 1e-4

    stylized = Stylizer.load(path, device="cpu")(photo(0).resize((96, 64)))
    assert stylized.size == (96, 64)
    assert meta["style_name"] == "candy"


def test_fast_neural_style_bad_keys_are_named(tmp_path: Path) -> None:
    _, state = _their_state_dict()
    extra = dict(state, **{"res2.conv9.conv2d.weight": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(FstError, match=r"unexpected key 'res2\.conv9\.conv2d\.weight'"):
        load_legacy_model(tmp_path / "extra.pth")

    missing = {k: v for k, v in state.items() if k != "in4.bias"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(FstError, match=r"missing weights for up1\.norm\.bias"):
        load_legacy_model(tmp_path / "missing.pth")

    wrong = dict(state, **{"conv2.conv2d.weight": torch.zeros(64, 32, 5, 5)})
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(FstError, match=r"'conv2\.conv2d\.weight' has shape \(64, 32, 5, 5\)"):
        load_legacy_model(tmp_path / "wrong.pth")


class _Payload:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_malicious_pickle_posing_as_a_model_is_refused(tmp_path: Path) -> None:
    # Control: this payload really does run code when unpickled without restrictions.
    control = tmp_path / "control_marker"
    pickle.loads(pickle.dumps(_Payload(control)))
    assert control.exists()

    marker = tmp_path / "marker"
    zipped = tmp_path / "mosaic.pth"
    torch.save({"conv1.conv2d.weight": _Payload(marker)}, zipped)
    raw = tmp_path / "udnie.model"
    raw.write_bytes(pickle.dumps(_Payload(marker)))
    disguised = tmp_path / "starry.safetensors"
    disguised.write_bytes(pickle.dumps(_Payload(marker)))
    for path in (zipped, raw, disguised):
        with pytest.raises(FstError, match=str(path.name)):
            Stylizer.load(path, device="cpu")
    assert not marker.exists()


# --- inputs and outputs ------------------------------------------------------------------------


def test_pil_in_pil_out_keeps_size_and_alpha(stylizer: Stylizer) -> None:
    rgba = photo(0).resize((50, 37)).convert("RGBA")
    alpha = Image.linear_gradient("L").resize((50, 37))
    rgba.putalpha(alpha)
    out = stylizer(rgba)
    assert out.mode == "RGBA" and out.size == (50, 37)
    assert out.getchannel("A").tobytes() == alpha.tobytes()
    assert stylizer(photo(0).resize((50, 37)), size=20).size == (20, 15)


def test_exif_orientation_is_applied(stylizer: Stylizer) -> None:
    stored, data = rotated_photo()
    with Image.open(io.BytesIO(data)) as img:
        out = stylizer(img, strength=0.0)  # strength 0 returns the (upright) photo itself
        decoded = img.convert("RGB")
    upright = decoded.transpose(Image.Transpose.ROTATE_270)  # orientation 6 = rotate 90 clockwise
    assert out.size == (stored.height, stored.width)
    assert (pil_to_tensor(out) - pil_to_tensor(upright)).abs().max() <= 1 / 255 + 1e-6


def test_tensor_batches_match_single_images(stylizer: Stylizer) -> None:
    torch.manual_seed(0)
    batch = torch.rand(3, 3, 40, 52)
    out = stylizer(batch)
    assert out.shape == batch.shape
    single = stylizer(batch[1])
    assert single.shape == (3, 40, 52)
    assert (out[1] - single).abs().max() < 1e-5
    pils = stylizer([photo(0).resize((40, 30)), photo(1).resize((40, 30)), photo(2).resize((30, 40))], batch_size=2)
    assert [p.size for p in pils] == [(40, 30), (40, 30), (30, 40)]


@pytest.mark.parametrize("size", [(1, 1), (3, 7), (5, 5), (1, 200)])
def test_tiny_images_do_not_crash(stylizer: Stylizer, size: tuple[int, int]) -> None:
    out = stylizer(Image.new("RGB", size, (120, 80, 40)))
    assert out.size == size


def test_precision_bf16_runs_close_to_fp32(tmp_path: Path) -> None:
    path = random_model(tmp_path / "m.safetensors", width=8)
    x = pil_to_tensor(photo(0).resize((64, 48)))
    fp32 = Stylizer.load(path, device="cpu", precision="fp32")(x)
    bf16 = Stylizer.load(path, device="cpu", precision="bf16")(x)
    assert fp32.dtype == bf16.dtype == torch.float32
    # bf16 keeps 8 mantissa bits: stated bound 0.02 mean absolute difference.
    assert (fp32 - bf16).abs().mean() < 0.02


# --- model lookup ------------------------------------------------------------------------------


def test_names_resolve_in_fst_models_and_unknown_names_list_the_available(tmp_path: Path, monkeypatch) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    random_model(first / "mosaic.safetensors", seed=1, style="mosaic")
    random_model(second / "mosaic.safetensors", seed=2, style="other")
    random_model(second / "candy.safetensors", seed=3, style="candy")
    monkeypatch.setenv("FST_MODELS", f"{first}{__import__('os').pathsep}{second}")
    assert Stylizer.load("mosaic", device="cpu").style == "mosaic"  # first folder wins
    assert Stylizer.load("candy", device="cpu").name == "candy"
    with pytest.raises(FstError, match=r"unknown model 'cand'.*available: .*candy.*mosaic"):
        Stylizer.load("cand", device="cpu")
    with pytest.raises(FstError, match=r"no such model file"):
        Stylizer.load(tmp_path / "nothing.safetensors", device="cpu")


# --- colour and strength -----------------------------------------------------------------------


def test_preserve_color_keeps_the_photos_chroma(stylizer: Stylizer) -> None:
    x = pil_to_tensor(photo(3).resize((96, 72)))
    plain = stylizer(x)
    kept = stylizer(x, preserve_color=True)
    chroma_in, chroma_plain, chroma_kept = (rgb_to_ycbcr(t)[1:] for t in (x, plain, kept))
    luma_plain, luma_kept = rgb_to_ycbcr(plain)[0], rgb_to_ycbcr(kept)[0]
    # Stated bounds: kept chroma within 0.01 of the photo's on average (out-of-gamut pixels are
    # clamped), while the plain stylization moved it at least 3x as far; luminance is the style's.
    kept_error = (chroma_kept - chroma_in).abs().mean()
    assert kept_error < 0.01
    assert (chroma_plain - chroma_in).abs().mean() > 3 * kept_error
    assert (luma_kept - luma_plain).abs().mean() < 0.01


def test_strength_blends_towards_the_photo(stylizer: Stylizer) -> None:
    x = pil_to_tensor(photo(1).resize((64, 48)))
    full = stylizer(x)
    assert torch.equal(stylizer(x, strength=0.0), x)
    assert (stylizer(x, strength=0.5) - (x + full) / 2).abs().max() < 1e-5
    with pytest.raises(ValueError, match="strength"):
        stylizer(x, strength=1.5)


# --- tiling ------------------------------------------------------------------------------------


def _seam_ratio(image: torch.Tensor, cols: list[int], rows: list[int]) -> tuple[float, float]:
    """Mean |gradient| across the given tile borders / mean |gradient| across all other lines."""
    gx = (image[..., :, 1:] - image[..., :, :-1]).abs().mean(dim=(0, 1, 2))  # gx[c-1]: between c-1 and c
    gy = (image[..., 1:, :] - image[..., :-1, :]).abs().mean(dim=(0, 1, 3))
    ratios = []
    for grad, lines in ((gx, cols), (gy, rows)):
        border = torch.tensor([line - 1 for line in lines])
        others = torch.ones_like(grad, dtype=torch.bool)
        others[border] = False
        ratios.append(float(grad[border].mean() / grad[others].mean()))
    return ratios[0], ratios[1]


def _borders(tiles, height: int, width: int) -> tuple[list[int], list[int]]:
    cols = {t.left for t in tiles if t.left > 0} | {t.right for t in tiles if t.right < width}
    rows = {t.top for t in tiles if t.top > 0} | {t.bottom for t in tiles if t.bottom < height}
    return sorted(cols), sorted(rows)


def test_tiled_output_matches_untiled_without_seams(stylizer: Stylizer) -> None:
    x = pil_to_tensor(photo(0).resize((480, 320)))[None]
    whole = stylizer.stylize_batch(x, tile=None)
    tiled = stylizer.stylize_batch(x, tile=160, overlap=64)
    tiles = tile_grid(320, 480, 160, 64)
    assert len(tiles) > 6
    # Naive tiling (own norm statistics per tile, no overlap) for comparison: it must show seams,
    # otherwise the seam measure below proves nothing.
    naive_tiles = tile_grid(320, 480, 160, 0)
    naive = torch.zeros_like(whole)
    for t in naive_tiles:
        naive[..., t.top : t.bottom, t.left : t.right] = stylizer.stylize_batch(
            x[..., t.top : t.bottom, t.left : t.right], tile=None
        )
    # Borders: where a tile starts or ends inside the image (a seam would be a jump there).
    cols, rows = _borders(tiles, 320, 480)
    naive_cols, naive_rows = _borders(naive_tiles, 320, 480)

    difference = (tiled - whole).abs()
    # Stated bounds (norm statistics taken from the full image, 64-pixel overlap):
    # mean |tiled - whole| < 1e-3 and max < 0.05 on the [0, 1] scale.
    assert difference.mean() < 1e-3
    assert difference.max() < 0.05
    reference = _seam_ratio(whole, cols, rows)
    naive_reference = _seam_ratio(whole, naive_cols, naive_rows)
    for axis in range(2):
        # No seam: gradient energy on tile borders (relative to elsewhere) within 5% of the
        # untiled image's at the same lines; the naive tiling exceeds it by at least 1.5x.
        assert _seam_ratio(tiled, cols, rows)[axis] < 1.05 * reference[axis]
        assert _seam_ratio(naive, naive_cols, naive_rows)[axis] > 1.5 * naive_reference[axis]


def test_tiles_share_statistics_taken_from_a_downscaled_image(stylizer: Stylizer) -> None:
    x = pil_to_tensor(photo(2).resize((480, 320)))[None]
    cols, rows = _borders(tile_grid(320, 480, 160, 64), 320, 480)
    whole = stylizer.stylize_batch(x, tile=None)
    small_stats = stylizer.stylize_batch(x, tile=160, overlap=64, stats_size=240)
    reference = _seam_ratio(whole, cols, rows)
    for axis in range(2):
        assert _seam_ratio(small_stats, cols, rows)[axis] < 1.1 * reference[axis]


def test_onnx_model_runs_like_the_pytorch_one(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from fst.train.export import export_model

    source = random_model(tmp_path / "m.safetensors", width=8)
    onnx_path, _ = export_model(source, tmp_path / "m.onnx", "onnx")
    x = pil_to_tensor(photo(0).resize((70, 45)))
    eager = Stylizer.load(source, device="cpu")
    graph = Stylizer.load(onnx_path, device="cpu")
    assert graph.style == eager.style == "teststyle"
    assert (graph(x) - eager(x)).abs().max() < 1e-4
    with pytest.raises(FstError, match="tiling needs a PyTorch model"):
        graph(x, tile=64)


# --- one loader, one shortcut ------------------------------------------------------------------


def test_nets_load_reads_both_model_kinds_and_refuses_the_rest(tmp_path: Path) -> None:
    net, meta = nets.load(random_model(tmp_path / "ours.safetensors", width=8))
    assert not net.training and meta["style_name"] == "teststyle" and meta["format"] == "fst.model/1"
    _, state = _their_state_dict()
    torch.save(state, tmp_path / "candy.model")
    net, meta = nets.load(tmp_path / "candy.model")
    assert not net.training and net.config.upsample == "resize_conv" and meta["style_name"] == "candy"
    torch.save({"state_dict": {}}, tmp_path / "run.ckpt")
    with pytest.raises(FstError, match=r"run\.ckpt: a training checkpoint"):
        nets.load(tmp_path / "run.ckpt")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(FstError, match=r"notes\.txt: unknown model format \.txt"):
        nets.load(tmp_path / "notes.txt")


def test_fst_stylize_shortcut_and_a_light_import(tmp_path: Path) -> None:
    path = random_model(tmp_path / "m.safetensors", width=8)
    photo(0).resize((40, 30)).convert("RGBA").save(tmp_path / "p.png")
    import fst

    out = fst.stylize(path, tmp_path / "p.png")
    assert out.mode == "RGB" and out.size == (40, 30)
    assert fst.stylize(path, Image.open(tmp_path / "p.png")).tobytes() == out.tobytes()
    probe = "import fst, sys; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "False"


def test_contact_sheet_cells_are_the_stylizers_output(tmp_path: Path) -> None:
    from fst.sweep.contact_sheet import stylize_photos

    path = random_model(tmp_path / "m.safetensors", width=8, output_head="none")
    photos = torch.stack([pil_to_tensor(photo(i).resize((48, 32))) for i in range(2)])
    cells = stylize_photos(path, photos, "cpu")
    net, _ = nets.load(path)
    with torch.no_grad():
        expected = net(photos).clamp(0, 1)  # a plain forward pass, as the sheet always drew
    assert [c.size for c in cells] == [(48, 32)] * 2
    assert all(c.tobytes() == tensor_to_pil(e).tobytes() for c, e in zip(cells, expected))


def test_every_tile_sees_the_whole_photos_tone() -> None:
    from fst.infer.tiling import fixed_norm_stats, record_norm_stats
    from fst.nets import TransformerNet

    net = TransformerNet(width=8, num_residual=1, tone=True).eval()
    x = pil_to_tensor(photo(2).resize((120, 96)))[None]
    lum = luminance(x)
    whole = net.tone.stats(lum)
    with fixed_norm_stats(net, record_norm_stats(net, x)):
        corner = net.tone.stats(lum[..., :32, :40])
    assert torch.allclose(corner, whole, atol=1e-5)
    assert not torch.allclose(net.tone.stats(lum[..., :32, :40]), whole, atol=1e-2)  # a tile alone differs
