"""fst-infer over real-world inputs: good photos written, broken ones named, exit codes,
nothing overwritten, model lookup by name, legacy and ONNX models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from _infer_corpus import build_corpus, jpeg_bytes, photo, random_model, rotated_photo, snapshot
from fst.errors import FstError
from fst.fsutil import atomic_path, atomic_write_text, umask
from fst.images import decode_image, open_rgb, pil_to_tensor, read_photo, write_photo
from fst.infer.cli import main
from fst.resources import BUNDLED_MODELS_DIR

ROOT_DIR = Path(__file__).resolve().parents[2]  # the checkout (scripts/, cwd of subprocesses)


# Tiny nets: extra OpenMP threads only add contention on a shared CI box.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return random_model(tmp_path_factory.mktemp("models") / "tiny.safetensors", width=8, style="teststyle")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, str], dict[str, str]]:
    folder = tmp_path_factory.mktemp("corpus") / "photos"
    good, bad = build_corpus(folder)
    return folder, good, bad


def test_corpus_good_photos_written_bad_ones_named_exit_1(tmp_path: Path, model: Path, corpus, monkeypatch) -> None:
    """The issue's acceptance run, through the real console entry point (a subprocess)."""
    folder, good, bad = corpus
    before = snapshot(folder)
    monkeypatch.setenv("FST_MODELS", str(model.parent))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "fst.infer", "-m", "tiny", str(folder), "-o", str(out), "--size", "256"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == len(bad), proc.stderr
    for name in bad:
        assert any(str(folder / name) in line for line in errors), (name, proc.stderr)
    for name in good:
        assert not any(name in line for line in errors), (name, proc.stderr)
    assert f"{len(good)} written, {len(bad)} failed" in proc.stderr
    assert snapshot(folder) == before  # inputs untouched

    written = {p.name: p for p in out.iterdir()}
    assert sorted(written) == sorted(
        f"{Path(n).stem}_teststyle.{'png' if n in ('alpha.png', 'palette.png') else 'jpg'}" for n in good
    )
    sizes = {name: Image.open(path).size for name, path in written.items()}
    assert sizes["huge_teststyle.jpg"] == (256, 171)
    assert sizes["rotated_teststyle.jpg"] == (171, 256)  # portrait after EXIF rotation
    assert sizes["dot_teststyle.jpg"] == (256, 256)
    with Image.open(written["alpha_teststyle.png"]) as img:
        assert img.mode == "RGBA"
        alpha = pil_to_tensor(img.getchannel("A"))
    assert alpha[..., :120].max() < 0.02 and alpha[..., 136:].min() > 0.98  # left half stays transparent
    assert set(proc.stdout.split()) == {str(p) for p in written.values()}


def test_existing_outputs_are_never_replaced_unless_asked(tmp_path: Path, model: Path, capsys) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        photo(i).resize((48, 32)).save(src / f"p{i}.jpg")
    out = tmp_path / "out"
    args = ["-m", str(model), str(src), "-o", str(out), "--no-progress"]
    assert main(args) == 0
    first = snapshot(out)
    assert len(first) == 2

    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("already exists") == 2 and "0 written, 2 failed" in err
    assert snapshot(out) == first

    assert main([*args, "--skip-existing"]) == 0
    assert "2 skipped" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--strength", "0.5"]) == 0
    assert snapshot(out) != first


def test_photos_stylized_side_by_side_match_one_at_a_time(tmp_path: Path, model: Path, corpus, capsys,
                                                           monkeypatch) -> None:
    """--jobs 2 runs two photos at once: the same files, the same failures, reported in input order;
    a photo whose stylization fails is named while its neighbours are written."""
    folder, good, bad = corpus
    outputs = {}
    reports = {}
    for jobs in ("1", "2"):
        out = tmp_path / f"jobs{jobs}"
        code = main(["-m", str(model), str(folder), "-o", str(out), "--size", "96", "--format", "png",
                     "--no-progress", "--jobs", jobs])
        assert code == 1  # the corpus holds broken files
        outputs[jobs] = snapshot(out)
        captured = capsys.readouterr()
        reports[jobs] = (captured.out.splitlines(), sorted(captured.err.splitlines()))
        assert f"{len(good)} written, {len(bad)} failed" in captured.err
    assert outputs["2"] == outputs["1"] and len(outputs["1"]) == len(good)
    assert [Path(p).name for p in reports["2"][0]] == [Path(p).name for p in reports["1"][0]]
    assert [line.replace("jobs2", "jobs1") for line in reports["2"][1]] == reports["1"][1]

    from fst.infer.stylizer import Stylizer

    real = Stylizer.stylize_many

    def fail_on_wide(self, images, *args, **kwargs):
        if images[0].shape[-1] > images[0].shape[-2]:
            raise RuntimeError("out of memory (simulated)")
        return real(self, images, *args, **kwargs)

    monkeypatch.setattr(Stylizer, "stylize_many", fail_on_wide)
    src = tmp_path / "mixed"
    src.mkdir()
    for i, size in enumerate([(40, 64), (64, 40), (40, 64), (64, 40), (40, 64)]):
        photo(i).resize(size).save(src / f"p{i}.jpg")
    assert main(["-m", str(model), str(src), "-o", str(tmp_path / "mixed_out"), "--no-progress", "--jobs", "2"]) == 1
    captured = capsys.readouterr()
    assert sorted(p.name for p in (tmp_path / "mixed_out").iterdir()) == [f"p{i}_teststyle.jpg" for i in (0, 2, 4)]
    assert [Path(p).name for p in captured.out.split()] == [f"p{i}_teststyle.jpg" for i in (0, 2, 4)]
    failures = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(failures) == 2 and all("out of memory (simulated)" in line for line in failures)
    assert any("p1.jpg" in line for line in failures) and any("p3.jpg" in line for line in failures)


def test_auto_jobs_split_the_threads_only_for_onnx_runtime_on_the_cpu(model: Path) -> None:
    from fst.infer.cli import AUTO_PHOTO_JOBS, photo_jobs, split_threads
    from fst.infer.stylizer import Stylizer

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        runtime = Stylizer.load(model, device="cpu", backend="auto")
        assert photo_jobs("auto", runtime, photos=6) == AUTO_PHOTO_JOBS == 2
        assert runtime.backend.graphs.threads == 1  # each photo on one of the two threads
        split_threads(runtime, 1)
        assert runtime.backend.graphs.threads == 2  # clips after the photos: every thread again
        assert photo_jobs("auto", Stylizer.load(model, device="cpu", backend="auto"), photos=1) == 1
        assert photo_jobs("auto", Stylizer.load(model, device="cpu", backend="torch"), photos=6) == 1
        assert photo_jobs(3, Stylizer.load(model, device="cpu", backend="torch"), photos=2) == 2
        torch.set_num_threads(1)
        assert photo_jobs("auto", Stylizer.load(model, device="cpu", backend="auto"), photos=6) == 1
    finally:
        torch.set_num_threads(before)


def test_an_input_is_never_written_over(tmp_path: Path, model: Path, capsys) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    photo(0).resize((48, 32)).save(folder / "a.jpg")
    photo(1).resize((48, 32)).save(folder / "b.png")
    before = snapshot(folder)
    code = main(["-m", str(model), str(folder), "-o", str(folder), "--name", "{name}", "--overwrite", "--no-progress"])
    assert code == 1
    assert capsys.readouterr().err.count("would overwrite an input") == 2
    assert snapshot(folder) == before


def test_outputs_that_would_collide_are_named(tmp_path: Path, model: Path, capsys) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    photo(0).resize((48, 32)).save(folder / "same.jpg")
    photo(1).resize((48, 32)).save(folder / "same.png")
    assert main(["-m", str(model), str(folder), "-o", str(tmp_path / "out"), "--no-progress"]) == 1
    assert "already written for" in capsys.readouterr().err
    assert len(list((tmp_path / "out").iterdir())) == 1
    assert main(["-m", str(model), str(folder), "-o", str(tmp_path / "out2"), "--no-progress",
                 "--name", "{name}.{ext}"]) == 0


def test_usage_errors_exit_2(tmp_path: Path, model: Path, capsys) -> None:
    photo(0).resize((48, 32)).save(tmp_path / "a.jpg")
    image = str(tmp_path / "a.jpg")
    for argv in (
        [image],  # no -m
        ["-m", str(model)],  # no input
        ["-m", str(model), image, "--strength", "1.5"],
        ["-m", str(model), image, "--name", "{stem}_{painter}.jpg"],
        ["-m", str(model), image, "--name", "{stem}.gif"],
        ["-m", str(model), image, "--tile", "lots"],
        ["-m", str(model), image, "--device", "tpu"],
        ["-m", str(model), image, "--jobs", "0"],
        ["-m", str(model), image, "--jobs", "many"],
    ):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), (argv, err)  # one line, no usage dump
    assert main(["-m", "no_such_style", image, "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown model 'no_such_style'") and "available:" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_missing_files_and_empty_globs_are_failures(tmp_path: Path, model: Path, capsys) -> None:
    photo(0).resize((48, 32)).save(tmp_path / "a.jpg")
    code = main(["-m", str(model), str(tmp_path / "a.jpg"), str(tmp_path / "gone.jpg"), str(tmp_path / "*.tif"),
                 "-o", str(tmp_path / "out"), "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert "gone.jpg: no such file or folder" in err and "*.tif: no files match" in err
    assert (tmp_path / "out" / "a_teststyle.jpg").is_file()


def test_recursive_folders_keep_their_layout_and_globs_work(tmp_path: Path, model: Path) -> None:
    root = tmp_path / "trip"
    (root / "day1").mkdir(parents=True)
    (root / "day2").mkdir()
    photo(0).resize((40, 30)).save(root / "day1" / "x.jpg")
    photo(1).resize((40, 30)).save(root / "day2" / "x.jpg")
    (root / "readme.txt").write_text("not a photo")
    out = tmp_path / "out"
    assert main(["-m", str(model), str(root), "-r", "-o", str(out), "--no-progress", "--format", "webp"]) == 0
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "day1/x_teststyle.webp", "day2/x_teststyle.webp"]
    # Results kept inside the tree being scanned are not stylized again on the next run.
    nested = ["-m", str(model), str(root), "-r", "-o", str(root / "stylized"), "--no-progress"]
    assert main(nested) == 0
    assert main([*nested, "--skip-existing"]) == 0
    assert len(list((root / "stylized").rglob("*.jpg"))) == 2
    assert main(["-m", str(model), str(root / "day*" / "*.jpg"), "-o", str(tmp_path / "g"), "--no-progress",
                 "--name", "{stem}-{model}.png", "--batch", "2"]) == 1  # both are x.jpg: second collides
    assert [p.name for p in (tmp_path / "g").iterdir()] == ["x-tiny.png"]


def test_exif_rotation_and_strength_zero_reproduce_the_upright_photo(tmp_path: Path, model: Path) -> None:
    stored, data = rotated_photo()
    (tmp_path / "r.jpg").write_bytes(data)
    out = tmp_path / "out"
    assert main(["-m", str(model), str(tmp_path / "r.jpg"), "-o", str(out), "--strength", "0", "--format", "png",
                 "--no-progress"]) == 0
    with Image.open(tmp_path / "r.jpg") as img:
        upright = img.convert("RGB").transpose(Image.Transpose.ROTATE_270)
    with Image.open(out / "r_teststyle.png") as result:
        assert result.size == upright.size == (64, 96)
        assert (pil_to_tensor(result) - pil_to_tensor(upright)).abs().max() <= 1 / 255 + 1e-6


def test_pytorch_examples_and_onnx_models_run_from_the_cli(tmp_path: Path, model: Path) -> None:
    from fst.train.export import export_model
    from fst.nets.model_file import load_model

    photo(0).resize((64, 48)).save(tmp_path / "a.png")
    # A fast_neural_style-format file: our net's weights under their names and 0-255 scaling.
    net, _ = load_model(random_model(tmp_path / "w32.safetensors", width=32, output_head="clamp"))
    theirs = {}
    renames = {"enc1.conv": "conv1.conv2d", "enc1.norm": "in1", "enc2.conv": "conv2.conv2d", "enc2.norm": "in2",
               "enc3.conv": "conv3.conv2d", "enc3.norm": "in3", "up1.conv": "deconv1.conv2d", "up1.norm": "in4",
               "up2.conv": "deconv2.conv2d", "up2.norm": "in5", "conv_out": "deconv3.conv2d"}
    for key, value in net.state_dict().items():
        module, param = key.rsplit(".", 1)
        if module.startswith("residuals."):
            _, k, block, layer = module.split(".")
            name = {"block1.conv": "conv1.conv2d", "block1.norm": "in1", "block2.conv": "conv2.conv2d",
                    "block2.norm": "in2"}[f"{block}.{layer}"]
            theirs[f"res{int(k) + 1}.{name}.{param}"] = value
        else:
            theirs[f"{renames[module]}.{param}"] = value
    theirs["conv1.conv2d.weight"] = theirs["conv1.conv2d.weight"] / 255
    theirs["deconv3.conv2d.weight"] = theirs["deconv3.conv2d.weight"] * 255
    theirs["deconv3.conv2d.bias"] = theirs["deconv3.conv2d.bias"] * 255
    theirs["in1.running_mean"] = torch.zeros(32)
    torch.save(theirs, tmp_path / "candy.pth")

    assert main(["-m", str(tmp_path / "candy.pth"), str(tmp_path / "a.png"), "-o", str(tmp_path / "o1"),
                 "--format", "png", "--no-progress"]) == 0
    assert main(["-m", str(tmp_path / "w32.safetensors"), str(tmp_path / "a.png"), "-o", str(tmp_path / "o2"),
                 "--format", "png", "--no-progress"]) == 0
    legacy = pil_to_tensor(Image.open(tmp_path / "o1" / "a_candy.png"))
    ours = pil_to_tensor(Image.open(tmp_path / "o2" / "a_teststyle.png"))
    assert (legacy - ours).abs().max() <= 1 / 255 + 1e-6  # same net up to 8-bit rounding

    pytest.importorskip("onnxruntime")
    onnx_path, _ = export_model(tmp_path / "w32.safetensors", tmp_path / "w32.onnx", "onnx")
    assert main(["-m", str(onnx_path), str(tmp_path / "a.png"), "-o", str(tmp_path / "o3"), "--format", "png",
                 "--no-progress"]) == 0
    graph = pil_to_tensor(Image.open(tmp_path / "o3" / "a_teststyle.png"))
    assert (graph - ours).abs().max() <= 1 / 255 + 1e-6
    # ONNX graphs cannot swap their norm statistics, so explicit tiling is a usage error.
    assert main(["-m", str(onnx_path), str(tmp_path / "a.png"), "-o", str(tmp_path / "o4"), "--tile", "256"]) == 2


def test_names_resolve_in_the_repo_checkpoints_folder() -> None:
    """Whatever small model ships in checkpoints/ must be reachable by its bare name."""
    shipped = sorted(BUNDLED_MODELS_DIR.glob("*.safetensors"))
    if not shipped:
        pytest.skip("no model in checkpoints/ yet")
    from fst.infer.backends import resolve_model

    env = os.environ.pop("FST_MODELS", None)
    try:
        assert resolve_model(shipped[0].stem) == shipped[0]
    finally:
        if env is not None:
            os.environ["FST_MODELS"] = env


def test_the_stylize_command_imports_no_training_stack() -> None:
    probe = ("import fst.infer.cli, sys; "
             "print([m for m in sys.modules if m.split('.')[0] in ('hydra', 'omegaconf', 'pytorch_lightning', 'lightning')])")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr


# --- image IO ----------------------------------------------------------------------------------


def test_one_decoder_for_paths_and_bytes(tmp_path: Path, monkeypatch) -> None:
    stored, data = rotated_photo()
    (tmp_path / "r.jpg").write_bytes(data)
    from_bytes, from_path = decode_image(data, name="shard-0: r"), decode_image(tmp_path / "r.jpg")
    assert from_bytes.rgb.size == from_path.rgb.size == (stored.height, stored.width)  # upright
    assert from_bytes.rgb.tobytes() == from_path.rgb.tobytes() == open_rgb(tmp_path / "r.jpg").tobytes()
    big = jpeg_bytes(photo(0).resize((1280, 800)))
    assert decode_image(big, min_side=400).rgb.size == (640, 400)  # JPEG draft: DCT scaling by 1/2
    assert decode_image(big, min_side=300).rgb.size == (640, 400)  # 1/4 would give 200 < 300
    with pytest.raises(FstError, match=r"^shard-0: r: not a readable image"):
        decode_image(data[: len(data) // 2], name="shard-0: r")
    with pytest.raises(FstError, match=r"^image data: not a readable image"):
        decode_image(b"not an image")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(FstError, match=r"r\.jpg: refused, too many pixels"):
        read_photo(tmp_path / "r.jpg")


def test_writes_are_atomic_and_never_clobber_unless_asked(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.png"
    rgb = torch.rand(3, 8, 10)
    write_photo(target, rgb)
    first = target.read_bytes()
    with pytest.raises(FstError, match="out.png: already exists"):
        write_photo(target, torch.zeros(3, 8, 10))
    assert target.read_bytes() == first
    write_photo(target, torch.zeros(3, 8, 10), overwrite=True)
    assert target.read_bytes() != first
    with pytest.raises(FileExistsError):
        atomic_write_text(target, "x", overwrite=False)
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "half.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert not (tmp_path / "half.txt").exists()
    note = atomic_write_text(tmp_path / "note.txt", "hello\n")
    assert note.read_text() == "hello\n" and note.stat().st_mode & 0o777 == 0o666 & ~umask()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["note.txt", "out.png", "sub"]  # no temporary left
