"""export.py: each format loads in a fresh Python process without the project's code and gives the model's outputs."""
import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys

import pytest
import torch

import export
import train
from data_loader.transforms import build_transforms
from tools.preprocessing import baked
from tools.restore import eval_loader, restore

from helpers import REPO, fast_args, image_classes, only_run

# How a user of each file loads it; `run` maps an input tensor to the output tensor.
LOADERS = {
    "torchscript": "run = torch.jit.load(path)",
    "exported": "run = torch.export.load(path).module()",
    "onnx": "import onnxruntime\n"
            "session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])\n"
            "run = lambda x, session=session: torch.from_numpy(session.run(None, {'input': x.numpy()})[0])",
}

# One fresh process loads every exported file (one torch import for all of them); a format that fails to load or
# run writes its error and the others still run.
FRESH_PROCESS = """
import importlib.util, sys, traceback
import torch
assert importlib.util.find_spec("trainer") is None and importlib.util.find_spec("data_loader") is None, sys.path
for fmt, path, loader in {files!r}:
    try:
        exec(loader)
        torch.save(run(torch.load("input.pt")), f"output-{{fmt}}.pt")
    except Exception:
        open(f"error-{{fmt}}.txt", "w").write(traceback.format_exc())
"""


def onnx_packages_missing() -> list[str]:
    return [package for package in export.ONNX_PACKAGES if importlib.util.find_spec(package) is None]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("export") / "saved"
    assert train.main(fast_args(save_dir, "trainer.epochs=1", "trainer.monitor=max val_accuracy")) == 0
    return only_run(save_dir)


@pytest.fixture(scope="module")
def exported(run_folder, tmp_path_factory):
    """Every format that can be written here, exported by export.py, then loaded in a fresh Python process without
    the project's code: what export.py printed and its exit code, per format, and the folder of the outputs."""
    printed, files = {}, []
    for fmt in LOADERS:
        if fmt == "onnx" and onnx_packages_missing():
            continue
        with contextlib.redirect_stdout(io.StringIO()) as out:
            printed[fmt] = export.main(["--resume", str(run_folder), "--format", fmt]), out.getvalue()
        files.append((fmt, str(run_folder / ("model_best" + export.SUFFIXES[fmt])), LOADERS[fmt]))
    folder = tmp_path_factory.mktemp("fresh")
    trained = restore(run_folder, device="cpu")
    inputs = next(iter(eval_loader(trained, "test")))[0][:5]  # not the export's batch size
    with torch.no_grad():
        torch.save(trained.model(inputs), folder / "expected.pt")
    torch.save(inputs, folder / "input.pt")
    fresh = subprocess.run([sys.executable, "-I", "-c", FRESH_PROCESS.format(files=files)], cwd=folder,
                           capture_output=True, text=True, timeout=120)
    assert fresh.returncode == 0, fresh.stderr
    return printed, folder


@pytest.mark.parametrize("fmt", LOADERS)
def test_exported_file_runs_without_project_code_and_matches_the_model(run_folder, exported, fmt):
    if fmt == "onnx" and onnx_packages_missing():
        pytest.skip(f"{', '.join(onnx_packages_missing())} not installed")
    printed, folder = exported
    code, out = printed[fmt]
    path = run_folder / ("model_best" + export.SUFFIXES[fmt])
    assert code == 0 and f"Wrote {path} ({fmt}, DigitsCNN, raw weights). Max abs difference" in out, out
    assert "(tolerance " in out, out
    assert not (folder / f"error-{fmt}.txt").exists(), (folder / f"error-{fmt}.txt").read_text()
    torch.testing.assert_close(torch.load(folder / f"output-{fmt}.pt"), torch.load(folder / "expected.pt"),
                               rtol=1e-4, atol=1e-5)


def test_outputs_that_differ_fail_the_export_and_remove_the_file(run_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(export, "load_exported", lambda fmt, path, device: lambda x: torch.zeros(len(x), 10))
    output = tmp_path / "model.ts.pt"
    assert export.main(["--resume", str(run_folder), "--format", "torchscript", "--output", str(output)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: The exported torchscript file's outputs differ") and "was removed" in err, err
    assert not output.exists()


def test_corrupt_checkpoint_is_one_message_and_exit_2(run_folder, tmp_path, capsys):
    broken = tmp_path / "broken.pth"
    broken.write_bytes((run_folder / "model_best.pth").read_bytes()[:1000])
    assert export.main(["--resume", str(broken), "--format", "exported"]) == 2
    err = capsys.readouterr().err
    assert "broken.pth' is truncated or corrupt" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "broken.pt2").exists()


def test_an_output_that_cannot_be_written_is_one_message_and_exit_2(run_folder, tmp_path, capsys):
    for output, message in [(tmp_path, "it is a folder"), (tmp_path / "no" / "m.pt2", "its folder does not exist"),
                            ("/proc/m.ts.pt", "Cannot write --output '/proc/m.ts.pt': No such file or directory")]:
        assert export.main(["--resume", str(run_folder), "--format", "torchscript", "--output", str(output)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "no").exists()


def test_an_output_that_is_the_checkpoint_or_a_planted_link_is_refused(run_folder, tmp_path, capsys):
    checkpoint = tmp_path / "best.pth"
    checkpoint.write_bytes((run_folder / "model_best.pth").read_bytes())
    before = checkpoint.read_bytes()
    assert export.main(["--resume", str(checkpoint), "--format", "exported", "--output", str(checkpoint)]) == 2
    assert f"--output '{checkpoint}' is the input '{checkpoint}'" in capsys.readouterr().err
    assert checkpoint.read_bytes() == before
    # The default file beside the checkpoint is never written through a link (the run folder may come from elsewhere).
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / "best.pt2").symlink_to(victim)
    assert export.main(["--resume", str(checkpoint), "--format", "exported"]) == 2
    assert f"'{tmp_path / 'best.pt2'}' is a symbolic link (to '{victim}')" in capsys.readouterr().err
    assert victim.read_text() == "precious\n"
    (tmp_path / "best.pt2").unlink()
    os.mkfifo(tmp_path / "best.pt2")  # opening it to write would wait for a reader forever
    assert export.main(["--resume", str(checkpoint), "--format", "exported"]) == 2
    assert f"'{tmp_path / 'best.pt2'}' is not a regular file" in capsys.readouterr().err


def test_a_model_with_several_outputs_is_served_through_its_predict_or_refused_in_one_message(run_folder, tmp_path,
                                                                                              monkeypatch, capsys):
    from model.builtin.models import DigitsCNN

    real = DigitsCNN.forward
    monkeypatch.setattr(DigitsCNN, "forward", lambda self, x: (real(self, x), x.mean()))  # e.g. scores and a code
    output = tmp_path / "model.pt2"
    args = ["--resume", str(run_folder), "--format", "exported", "--output", str(output)]
    assert export.main(args) == 2
    err = capsys.readouterr().err
    assert "export.py takes one tensor from the model per batch, and DigitsCNN returns a tuple of 2" in err
    assert "predict(x)" in err and "Traceback" not in err and not output.exists()
    monkeypatch.setattr(DigitsCNN, "predict", lambda self, x: self(x)[0], raising=False)
    assert export.main(args) == 0 and output.is_file()
    program = torch.export.load(output).module()
    batch = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(program(batch), real(restore(run_folder, device="cpu").model, batch))


def test_a_submodule_is_exported_with_the_models_example_input(run_folder, tmp_path, monkeypatch, capsys):
    from model.builtin.models import DigitsCNN

    output = tmp_path / "features.pt2"
    args = ["--resume", str(run_folder), "--format", "exported", "--output", str(output), "--module", "features"]
    assert export.main(args) == 2
    assert "--module features: export.py needs an example input for that submodule" in capsys.readouterr().err
    assert export.main([*args[:-1], "featurs"]) == 2
    assert "DigitsCNN has no submodule of that name. Did you mean 'features'?" in capsys.readouterr().err
    monkeypatch.setattr(DigitsCNN, "example_input", lambda self, module: torch.rand(4, 1, 8, 8), raising=False)
    assert export.main(args) == 0
    assert "(exported, DigitsCNN.features, raw weights)" in capsys.readouterr().out
    model = restore(run_folder, device="cpu").model
    batch = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(torch.export.load(output).module()(batch), model.features(batch))


def test_a_file_fixed_to_the_export_batch_size_is_removed_with_the_cause(run_folder, tmp_path, monkeypatch, capsys):
    if onnx_packages_missing():
        pytest.skip(f"{', '.join(onnx_packages_missing())} not installed")
    from model.builtin.models import DigitsCNN

    monkeypatch.setattr(DigitsCNN, "forward", lambda self, x: self.classifier(self.features(x).view(len(x), -1)))
    # As for a model of one image size: the exporter keeps the batch size it traced (with a dynamic image size as
    # well, it keeps the batch dynamic too).
    monkeypatch.setattr(export, "other_size", lambda model, inputs, swap=False: None)
    output = tmp_path / "model.onnx"
    assert export.main(["--resume", str(run_folder), "--format", "onnx", "--output", str(output)]) == 1
    err = capsys.readouterr().err
    assert "does not run on the check's batch" in err and "x.view(len(x), ...)" in err and "Traceback" not in err
    assert not output.exists()


def test_a_model_that_asserts_its_image_size_exports_for_that_size(run_folder, tmp_path, monkeypatch):
    from model.builtin.models import DigitsCNN

    forward = DigitsCNN.forward

    def one_size(self, x):
        torch._assert(x.shape[-1] == 8, "8x8 images only")
        return forward(self, x)

    monkeypatch.setattr(DigitsCNN, "forward", one_size)
    assert export.main(["--resume", str(run_folder), "--format", "exported", "--output", str(tmp_path / "m.pt2")]) == 0
    assert json.loads((tmp_path / "m.pt2.json").read_text())["input"]["shape"] == [None, 1, 8, 8]


STEPS = [{"type": "Resize", "args": {"size": 12}}, {"type": "CenterCrop", "args": {"size": [10, 9]}},
         {"type": "ToDtype", "args": {"dtype": "float32", "scale": True}},
         {"type": "Normalize", "args": {"mean": [0.5], "std": [0.25]}}]


CROP_ONLY = [{"type": "CenterCrop", "args": {"size": 6}}, *STEPS[2:]]
SAME_SIDE = [{"type": "Resize", "args": {"size": 12}}, {"type": "CenterCrop", "args": {"size": 12}}, *STEPS[2:]]


@pytest.mark.parametrize("steps", [STEPS, [{"type": "Resize", "args": {"size": [7, 11], "antialias": False}},
                                           *STEPS[2:]], CROP_ONLY, SAME_SIDE])
def test_baked_steps_give_torchvisions_results_for_any_image_shape(steps):
    ours, theirs = baked(steps), build_transforms(steps, "eval_transform")
    generator = torch.Generator().manual_seed(0)
    example = torch.randint(0, 256, (2, 1, 21, 30), dtype=torch.uint8, generator=generator)
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}
    program = torch.export.export(ours, (example,), dynamic_shapes=(dims,)).module()
    for shape in [(2, 1, 8, 8), (1, 1, 33, 14), (1, 1, 14, 33), (3, 1, 101, 100), (1, 1, 12, 12), (1, 1, 6, 9)]:
        images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
        assert torch.allclose(ours(images), theirs(images), atol=1e-6), shape
        assert torch.allclose(program(images), theirs(images), atol=1e-6), shape
    with pytest.raises(ValueError, match="eval_transform's RandomCrop cannot be baked in"):
        baked([{"type": "RandomCrop", "args": {"size": 4}}])
    with pytest.raises(ValueError, match="bilinear interpolation and no max_size only"):
        baked([{"type": "Resize", "args": {"size": 4, "interpolation": "bicubic"}}])
    with pytest.raises(ValueError, match=r"CenterCrop is larger than its Resize \(8\), and torchvision pads"):
        baked([{"type": "Resize", "args": {"size": 8}}, {"type": "CenterCrop", "args": {"size": 10}}])


def test_a_file_with_the_preprocessing_baked_in_takes_images_as_read_of_any_size(tmp_path, capsys):
    photos = image_classes(tmp_path / "photos", ("cat", "dog"), per_class=8, splits=("",))
    args = (f"{{data_dir: {photos}, batch_size: 8, test_split: 4, validation_split: 2, transform: {STEPS}, "
            f"eval_transform: {STEPS}}}")
    assert train.main(["-c", str(REPO / "configs" / "config.yaml"), f"trainer.save_dir={tmp_path / 'saved'}",
                       "arch.args.width=8", "arch.args.num_classes=2", "trainer.epochs=1", "trainer.tensorboard=false",
                       "data_loader.type=ImageFolderDataLoader", f"data_loader.args={args}"]) == 0
    best = only_run(tmp_path / "saved") / "model_best.pth"
    assert export.main(["--resume", str(best), "--format", "exported", "-p", "-o", str(tmp_path / "m.pt2")]) == 0
    assert "it takes other image sizes (checked on one 16 pixels larger each way, height and width swapped)" in \
        capsys.readouterr().out
    described = json.loads((tmp_path / "m.pt2.json").read_text())
    assert described["input"] == {"name": "input", "shape": [None, 1, None, None], "dtype": "uint8"}
    assert described["preprocessing"] == {"baked": True, "image_mode": "unchanged"}
    exported, model = torch.export.load(tmp_path / "m.pt2").module(), restore(best).model
    portrait = torch.randint(0, 256, (1, 1, 40, 17), dtype=torch.uint8)
    assert torch.allclose(exported(portrait), model(build_transforms(STEPS, "t")(portrait)), atol=1e-5)
    assert export.main(["--resume", str(best), "--format", "torchscript", "-p", "-o", str(tmp_path / "m.ts")]) == 2
    assert "--with-preprocessing needs --format exported" in capsys.readouterr().err
    older = torch.load(best, weights_only=True)
    del older["data_loader"]["inputs"]  # as a checkpoint of an older version
    torch.save(older, tmp_path / "older.pth")
    assert export.main(["--resume", str(tmp_path / "older.pth"), "--format", "exported", "-p"]) == 2
    assert "older.pth' records none" in capsys.readouterr().err
