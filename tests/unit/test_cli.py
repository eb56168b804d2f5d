"""The entry points as a user runs them: subprocesses, exit codes, messages, nothing written on bad input."""
import json
import re

import pytest

import test as test_script
import train
from utils.errors import reason

from fake_data import write_mnist
from helpers import CLASSIC, REPO, fast_args, one_error, only_run

CONFIG = (REPO / "configs" / "config.yaml").read_text()
BROKEN = {
    "yaml syntax": ("arch:\n  type: DigitsCNN\n   args: {}\n", [], r"line 3, column \d+: invalid YAML"),
    "unknown type": (None, ["arch.type=ResNet9000"], "unknown arch type 'ResNet9000'"),
    "wrong args": (None, ["optimizer.args.momentum_typo=0.9"], "wrong args for optimizer type 'AdamW'"),
    "unknown key": (None, ["trainer.epoch=3"], "unknown key 'trainer.epoch'.*Did you mean 'trainer.epochs'"),
    "missing data": (None, ["data_loader.args.data_dir=no/such/folder"], "Data folder 'no/such/folder' not found"),
    "unlogged monitor": (None, ["trainer.monitor=max val_f1"],
                         r"command line \(trainer.monitor=max val_f1\): trainer.monitor names 'val_f1', which is not logged"),
    "not utf-8": (CONFIG.encode() + "name: café\n".encode("latin-1"), [], r"broken\.yaml' is not UTF-8 text: line \d+ holds the byte 0xe9"),
    "key twice": (CONFIG + "trainer:\n  epochs: 1\n", [], r"the key 'trainer' is written twice in one mapping, "
                  r"on lines \d+ and \d+"),
    "null trainer": (None, ["trainer=null"], r"command line \(trainer=null\): 'trainer' must be a mapping"),
    "float seed": (None, ["seed=1.5"], r"command line \(seed=1\.5\): 'seed' must be a whole number"),
    "bad split": (None, ["data_loader.args.validation_split=abc"], r"command line \(data_loader\.args\.validation_split="
                  r"abc\): 'data_loader\.args\.validation_split' must be a fraction"),
    "bad workers": (None, ["data_loader.args.num_workers=-1"], r"'data_loader\.args\.num_workers' must be a whole "
                    r"number >= 0, got -1"),
    "minutes": (None, ["trainer.save_every_minutes=abc"], r"'trainer\.save_every_minutes' must be a number"),
    "clip": (None, ["trainer.grad_clip_norm=abc"], r"'trainer\.grad_clip_norm' must be a number > 0"),
    "width 0": (None, ["arch.args.width=0"], r"command line \(arch\.args\.width=0\): 'arch\.args\.width' must be a "
                "whole number >= 1, got 0"),
    "loader arg": (None, ["data_loader.args.bogus=1"], r"command line \(data_loader\.args\.bogus=1\): wrong args for "
                   r"data_loader type 'CsvImageDataLoader': unexpected keyword argument 'bogus'\. It accepts: "
                   r"data_dir, csv_file, (?!.*seed).*skip_bad, batch_transform, repeated_augmentations, test_split\.$"),
    "name path": (None, ["name=../../x"], r"command line \(name=\.\./\.\./x\): 'name' must be a folder name"),
    "absolute name": (None, ["name=/tmp/x"], r"'name' must be a folder name"),
    "run id path": (None, ["--run-id", "../../x"], r"--run-id must be a folder name such as run1"),
    "bool as text": (None, ["trainer.tensorboard=off"], r"command line \(trainer\.tensorboard=off\): "
                     r"'trainer\.tensorboard' must be true or false; got 'off' \(YAML reads off/on/no/yes as text"),
    "arg bool as text": (None, ["data_loader.args.shuffle=no"], r"command line \(data_loader\.args\.shuffle=no\): "
                         r"'data_loader\.args\.shuffle' must be true or false; got 'no'"),
    "top k bool": (None, ["trainer.save_top_k=true"], r"'trainer\.save_top_k' must be -1 \(keep all\)"),
    "compile": (None, ["trainer.compile={mode: nonsense}"], r"trainer\.compile: torch\.compile refused "
                r"\{'mode': 'nonsense'\}"),
    # The device loader's source is built with the source's args beside it: its errors name them, and who set them.
    "device source arg": (None, [f"data_loader={{type: DeviceDataLoader, args: {{source: CsvImageDataLoader, data_dir: "
                                 f"{REPO / 'data' / 'digits'}}}}}", "data_loader.args.batch_size=0"],
                          r"^error: command line \(data_loader\.args\.batch_size=0\): 'data_loader\.args\.batch_size' "
                          r"must be a whole number >= 1, got 0\.$"),
    "device nested source arg": (None, [f"data_loader={{type: DeviceDataLoader, args: {{source: {{type: CsvImageDataLoader, "
                                        f"args: {{data_dir: {REPO / 'data' / 'digits'}, batch_size: 0}}}}}}}}"],
                                 r"'data_loader\.args\.source\.args\.batch_size' must be a whole number >= 1, got 0\.$"),
    "device source type": (None, ["data_loader={type: DeviceDataLoader, args: {source: Nope, data_dir: x}}"],
                           r"'data_loader\.args\.source\.type': unknown data_loader type 'Nope'"),
}


@pytest.mark.parametrize("case", [pytest.param(case, marks=pytest.mark.needs("data_loader/device_loader.py"))
                                  if case.startswith("device ") else case for case in BROKEN])
def test_broken_configs_give_one_message_exit_2_and_write_nothing(tmp_path, case, capsys):
    text, overrides, message = BROKEN[case]
    args = fast_args(tmp_path / "saved", *overrides)
    if text is not None:
        (tmp_path / "broken.yaml").write_bytes(text if isinstance(text, bytes) else text.encode())
        args[1] = str(tmp_path / "broken.yaml")
    assert train.main(args) == 2
    err = one_error(capsys)
    assert re.search(message, err.strip()), err
    assert [p.name for p in tmp_path.iterdir()] == (["broken.yaml"] if text is not None else [])


def test_classic_template_config_json_trains_without_edits(tmp_path, monkeypatch, capsys):
    write_mnist(tmp_path / "data")
    (tmp_path / "config.json").write_text(json.dumps(CLASSIC, indent=4))
    monkeypatch.chdir(tmp_path)  # the config's paths (data/, saved/) are relative, as a user runs it
    assert train.main(["-c", "config.json", "trainer.epochs=2"]) == 0
    assert "Read the classic key n_gpu=1 as device: auto" in capsys.readouterr().out
    run = only_run(tmp_path / "saved")
    assert (run / "model_best.pth").is_file() and list((tmp_path / "saved" / "log").glob("*/*/events.out.*"))
    assert test_script.main(["--resume", str(run / "model_best.pth"), "--no-report"]) == 0
    assert "on the test split: 64 samples" in capsys.readouterr().out


def test_missing_mnist_without_download_is_explained(tmp_path, monkeypatch, capsys):
    (tmp_path / "config.json").write_text(json.dumps(CLASSIC))
    monkeypatch.chdir(tmp_path)
    assert train.main(["-c", "config.json", "data_loader.args.download=false"]) == 2
    assert "MNIST not found (or incomplete) under 'data/MNIST/raw' and download is off" in capsys.readouterr().err
    assert not (tmp_path / "saved").exists()


def test_reason_keeps_one_readable_line_of_any_exception():
    native = RuntimeError("decode_image, /src/io/image/cpu/decode_image.cpp:43, Unsupported image file.\nDetails")
    assert reason(native) == "Unsupported image file"  # the sentence around it ends with its own full stop
    gloo = RuntimeError("[/__w/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error: Connection reset")
    assert reason(gloo) == "Read error: Connection reset"
    assert reason(OSError("Error downloading train-images-idx3-ubyte.gz:\n<urlopen error>")) == \
        "Error downloading train-images-idx3-ubyte.gz"
    assert reason(AssertionError()) == "AssertionError"


