"""predict.py: a checkpoint's classes (or output values) for images and table rows, prepared as in evaluation."""
import csv
import json
import os
import re
import shutil
import stat
import threading
import zlib

import pytest
import torch
from PIL import Image
from torchvision.io import read_image, write_png

import export
import predict
import test as test_script
import train
from data_loader.inputs import find_images
from tools import predictor
from tools.restore import eval_loader, restore
from utils.errors import DataError

from fake_data import digits, write_mnist
from helpers import DIGITS, NAMES, REPO, TO_FLOAT, fast_args, image_classes, named_copy, only_run, train_example


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def held_out_copies(tmp_path):
    """A copy of the held-out test PNGs of the digits, without their labels, and each one's label."""
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    labels = {}
    for row in read_csv(DIGITS / "labels.csv"):
        if row["split"] == "test":
            shutil.copy(DIGITS / row["file"], folder)
            labels[row["file"].split("/")[-1]] = row["label"]
    return folder, labels


@pytest.fixture(scope="module")
def digits_best(tmp_path_factory):
    """model_best.pth of a short digits run, shared by the tests of this file."""
    save_dir = tmp_path_factory.mktemp("digits") / "saved"
    assert train.main(fast_args(save_dir)) == 0
    return only_run(save_dir) / "model_best.pth"


def test_predictions_agree_with_the_held_out_labels_as_often_as_test_py_says(digits_best, tmp_path, capsys):
    folder, labels = held_out_copies(tmp_path)
    assert test_script.main(["--resume", str(digits_best)]) == 0
    accuracy = float(re.search(r"accuracy\s+([0-9.]+)", capsys.readouterr().out).group(1))
    output = tmp_path / "preds.csv"
    assert predict.main(["--resume", str(digits_best), str(folder), "--output", str(output)]) == 0
    rows = read_csv(output)
    assert list(rows[0]) == ["file", "label", "index", "probability", "top1", "prob1", "top2", "prob2", "top3",
                             "prob3"]
    assert len(rows) == 360 and [r["file"] for r in rows] == sorted(str(folder / name) for name in labels)
    agree = sum(labels[r["file"].split("/")[-1]] == r["label"] for r in rows)
    assert agree == round(accuracy * 360) and abs(agree / 360 - accuracy) < 1e-6
    assert all(r["label"] == r["top1"] == r["index"] and r["probability"] == r["prob1"]
               and float(r["prob1"]) >= float(r["prob2"]) >= float(r["prob3"]) for r in rows)
    out = capsys.readouterr().out
    assert "360 predictions written to" in out
    counts = dict(re.findall(r"^  (\d)  (\d+)$", out, re.MULTILINE))  # the count per predicted class
    assert counts == {label: str(sum(r["label"] == label for r in rows)) for label in counts} and len(counts) > 1


def test_folders_are_searched_recursively_in_order_and_lists_name_files(tmp_path):
    shutil.copytree(DIGITS / "images", tmp_path / "a" / "b", ignore=lambda _, names: sorted(names)[3:])
    (tmp_path / "a" / "top.png").write_bytes((DIGITS / "images" / "0000.png").read_bytes())
    (tmp_path / "a" / "notes.txt").write_text("not an image\n")
    (tmp_path / "a" / ".hidden").mkdir()
    (tmp_path / "a" / ".hidden" / "x.png").write_bytes(b"")
    (tmp_path / "a" / ".DS_Store.png").write_bytes(b"")
    assert [p.relative_to(tmp_path).as_posix() for p in find_images([str(tmp_path / "a")])] == [
        "a/b/0000.png", "a/b/0001.png", "a/b/0002.png", "a/top.png"]
    (tmp_path / "list.txt").write_text("a/top.png\n\n  a/b/0001.png  \n/abs/x.png\n")
    (tmp_path / "list.csv").write_text("label,file\n3,a/b/0002.png\n")
    found = find_images([str(tmp_path / "list.txt"), str(tmp_path / "list.csv"), str(tmp_path / "a" / "top.png")])
    assert [str(p) for p in found] == [str(tmp_path / "a/top.png"), str(tmp_path / "a/b/0001.png"), "/abs/x.png",
                                      str(tmp_path / "a/b/0002.png"), str(tmp_path / "a/top.png")]


def test_unreadable_image_is_skipped_and_counted_or_refused_with_strict(digits_best, tmp_path, capsys):
    folder = tmp_path / "images"
    shutil.copytree(DIGITS / "images", folder, ignore=lambda _, names: sorted(names)[5:])
    (folder / "0002.png").write_bytes(b"not a png")
    output = tmp_path / "preds.csv"
    args = ["--resume", str(digits_best), str(folder), "--output", str(output), "--top-k", "0", "-b", "2"]
    assert predict.main(args + ["--strict"]) == 2
    captured = capsys.readouterr()
    assert re.search(r"error: Cannot read image '.*0002\.png': .*--strict stops at an input that cannot be used",
                     captured.err)
    assert not output.exists()
    assert predict.main(args) == 0
    captured = capsys.readouterr()
    assert re.search(r"Skipped: Cannot read image '.*0002\.png'", captured.out)
    assert "4 predictions written to" in captured.out and "1 input(s) skipped, named above" in captured.out
    rows = read_csv(output)
    assert [r["file"][-8:] for r in rows] == ["0000.png", "0001.png", "0003.png", "0004.png"]
    assert list(rows[0]) == ["file", "label", "index", "probability"]


def test_an_image_the_model_cannot_take_is_named_and_skipped(digits_best, tmp_path, capsys):
    folder = tmp_path / "images"
    shutil.copytree(DIGITS / "images", folder, ignore=lambda _, names: sorted(names)[4:])
    write_png(torch.zeros(3, 8, 8, dtype=torch.uint8), str(folder / "0001.png"))  # RGB, among grey digits
    write_png(torch.zeros(1, 16, 16, dtype=torch.uint8), str(folder / "0002.png"))  # larger: DigitsCNN pools any size
    write_png(torch.zeros(1, 1, 1, dtype=torch.uint8), str(folder / "0003.png"))  # too small for its pooling
    output = tmp_path / "p.csv"
    assert predict.main(["--resume", str(digits_best), str(folder), "--output", str(output), "--top-k", "0"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"Skipped: '.*0001\.png' has 3 channels after eval_transform, but the model was trained on "
                     r"images of 1", out), out
    assert re.search(r"Skipped: '.*0003\.png': the model cannot take it \(", out), out
    assert "2 predictions written to" in out and "2 input(s) skipped, named above" in out
    assert [row["file"][-8:] for row in read_csv(output)] == ["0000.png", "0002.png"]
    assert predict.main(["--resume", str(digits_best), str(folder / "0003.png"), "--strict"]) == 2
    assert re.search(r"error: '.*0003\.png': the model cannot take it .*--strict stops", capsys.readouterr().err)


def test_the_output_goes_through_a_link_and_into_a_pipe(digits_best, tmp_path, capfd):
    image = str(DIGITS / "images" / "0000.png")
    (tmp_path / "target.csv").write_text("old\n")
    (tmp_path / "link.csv").symlink_to(tmp_path / "target.csv")
    assert predict.main(["--resume", str(digits_best), image, "--output", str(tmp_path / "link.csv")]) == 0
    assert (tmp_path / "link.csv").is_symlink() and read_csv(tmp_path / "target.csv")[0]["file"] == image
    os.mkfifo(tmp_path / "pipe")
    received = []
    reader = threading.Thread(target=lambda: received.append((tmp_path / "pipe").read_text()))
    reader.start()
    assert predict.main(["--resume", str(digits_best), image, "--output", str(tmp_path / "pipe")]) == 0
    reader.join(timeout=60)
    assert received and received[0].startswith("file,label,index,probability") and image in received[0]
    assert stat.S_ISFIFO((tmp_path / "pipe").stat().st_mode)
    # /dev/stdout, which the shell may have sent to a file: written into after what is there, never replacing it.
    capfd.readouterr()
    os.write(1, b"earlier lines\n")
    assert predict.main(["--resume", str(digits_best), image, "--output", "/dev/stdout"]) == 0
    out = capfd.readouterr().out
    assert out.startswith("earlier lines\n") and "\nfile,label,index,probability" in out, out
    # /dev/stderr, which the shell sends to a file too (2>>err.log): appended to, never replacing the file.
    os.write(2, b"earlier errors\n")
    assert predict.main(["--resume", str(digits_best), image, "--output", "/dev/stderr"]) == 0
    err = capfd.readouterr().err
    assert err.startswith("earlier errors\n") and "file,label,index,probability" in err, err


def test_an_output_that_is_one_of_the_inputs_is_refused(digits_best, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("0000.png", "0001.png"):
        shutil.copy(DIGITS / "images" / name, folder)
    (tmp_path / "list.txt").write_text("images/0000.png\n")
    checkpoint = tmp_path / "best.pth"
    shutil.copy(digits_best, checkpoint)
    before = {path: path.read_bytes() for path in [*folder.iterdir(), tmp_path / "list.txt", checkpoint]}
    for inputs, output in [([str(folder)], folder / "0001.png"), ([str(tmp_path / "list.txt")], tmp_path / "list.txt"),
                           ([str(folder)], checkpoint)]:
        assert predict.main(["--resume", str(checkpoint), *inputs, "-o", str(output)]) == 2
        assert f"--output '{output}' is the input '" in capsys.readouterr().err
    assert {path: path.read_bytes() for path in before} == before


def test_a_file_name_of_another_encoding_is_read_and_a_huge_image_is_skipped_unread(digits_best, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    odd = os.fsdecode(bytes(folder) + b"/caf\xe9.png")  # a Latin-1 name, as a camera or an old system writes it
    shutil.copy(DIGITS / "images" / "0000.png", odd)
    # An 875-byte PNG of 30000 x 30000 grey pixels: decoding it would take 900 MB.
    (folder / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"".join(
        len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big") for kind, data in
        [(b"IHDR", (30000).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])),
         (b"IDAT", zlib.compress(bytes(30001) * 30)), (b"IEND", b"")]))
    output = tmp_path / "preds.csv"
    assert predict.main(["--resume", str(digits_best), str(folder), "-o", str(output)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"Skipped: Cannot read image '.*huge\.png': it has over [\d,]+ pixels, more than the limit", out)
    assert [row["file"] for row in read_csv(output)] == [str(folder / "caf\\udce9.png")]


def test_bad_arguments_stop_before_anything_is_written(digits_best, tmp_path, capsys):
    output = str(tmp_path / "preds.csv")
    cases = [([str(tmp_path / "nowhere"), "-o", output], r"'.*nowhere' not found\. Give image files, folders"),
             ([str(tmp_path), "-o", output], r"holds no images \(\.png"),
             ([str(DIGITS), "--top-k", "-1", "-o", output], r"--top-k must be 0 or more"),
             ([str(DIGITS), "-o", str(tmp_path / "no" / "p.csv")], r"its folder does not exist")]
    for args, message in cases:
        assert predict.main(["--resume", str(digits_best), *args]) == 2, message
        assert re.search(message, capsys.readouterr().err), message
    assert list(tmp_path.iterdir()) == []


def test_class_folders_and_label_names_are_the_predicted_labels(tmp_path, capsys):
    tree = image_classes(tmp_path / "tree")
    named = named_copy(tmp_path, rows=40)
    base = ["-c", str(REPO / "configs" / "config.yaml"), "arch.args.width=8", "trainer.epochs=1",
            "trainer.tensorboard=false"]
    folder_args = f"{{data_dir: {tree}, batch_size: 4, validation_split: 4, num_classes: 2, transform: {TO_FLOAT}}}"
    assert train.main([*base, f"trainer.save_dir={tmp_path / 'folders'}", "arch.args.num_classes=2",
                       "data_loader.type=ImageFolderDataLoader", f"data_loader.args={folder_args}"]) == 0
    assert train.main([*base, f"trainer.save_dir={tmp_path / 'named'}", f"data_loader.args.data_dir={named}",
                       "data_loader.args.validation_split=8"]) == 0
    output = tmp_path / "preds.csv"
    best = only_run(tmp_path / "folders") / "model_best.pth"
    assert predict.main(["--resume", str(best), str(tree / "test"), "--output", str(output), "-k", "5"]) == 0
    rows = read_csv(output)
    assert len(rows) == 12 and {r["label"] for r in rows} <= {"cat", "dog"}
    assert all({r["top1"], r["top2"]} == {"cat", "dog"} and "top3" not in r for r in rows)  # k is at most 2
    assert re.search(r"^  (cat|dog)  \d+$", capsys.readouterr().out, re.MULTILINE)
    # A labels.csv is a list of files too (its `file` column, relative to its folder).
    best = only_run(tmp_path / "named") / "model_best.pth"
    assert predict.main(["--resume", str(best), str(named / "labels.csv"), "--output", str(output)]) == 0
    rows = read_csv(output)
    assert len(rows) == 40 and rows[0]["file"] == str(named / "images" / "0000.png")
    assert all(sorted(NAMES)[int(r["index"])] == r["label"] for r in rows)


def test_torchvision_dataset_names_and_its_decoding(tmp_path):
    write_mnist(tmp_path / "data")
    assert train_example("mnist.yaml", tmp_path, "arch.args.width=8") == 0
    images, _ = digits(2, 28)
    write_png(images[0].expand(3, -1, -1).contiguous(), str(tmp_path / "rgb.png"))  # read as grey, as MNIST is
    write_png(images[1][None], str(tmp_path / "grey.png"))
    output = tmp_path / "preds.csv"
    best = only_run(tmp_path / "saved") / "model_best.pth"
    assert predict.main(["--resume", str(best), str(tmp_path / "rgb.png"), str(tmp_path / "grey.png"),
                         "-o", str(output), "-k", "1"]) == 0
    assert all(re.fullmatch(r"\d - [a-z]+", r["label"]) for r in read_csv(output))  # MNIST's names: "3 - three"


def test_table_and_regression_models_write_output_values(digits_best, tmp_path, capsys):
    save_dir = tmp_path / "saved"
    assert train.main(["-c", str(REPO / "configs" / "diabetes_mlp.yaml"), f"trainer.save_dir={save_dir}",
                       "trainer.epochs=2"]) == 0
    best = only_run(save_dir) / "model_best.pth"
    table = REPO / "data" / "diabetes" / "diabetes.csv"
    output = tmp_path / "preds.csv"
    assert predict.main(["--resume", str(best), str(table), "--output", str(output)]) == 0
    rows = read_csv(output)
    assert list(rows[0]) == ["file", "line", "output"] and len(rows) == 442
    # The test rows get what test.py's model sees: the features standardised with the saved statistics.
    test_lines = [str(line) for line, row in enumerate(read_csv(table), start=2) if row["split"] == "test"]
    predicted = torch.tensor([float(r["output"]) for r in rows if r["line"] in test_lines])
    trained = restore(best)
    with torch.no_grad():
        expected = torch.cat([trained.model(x) for x, _ in eval_loader(trained, "test")]).flatten()
    assert torch.allclose(predicted, expected, rtol=1e-6)
    assert re.search(r"output: mean [0-9.]+, min", capsys.readouterr().out)
    assert predict.main(["--resume", str(best), str(DIGITS / "images" / "0000.png"), "--output", str(output)]) == 2
    assert "0000.png' is an image, but this model was trained on a table (TableDataLoader)" in capsys.readouterr().err
    # Feature rows alone (no target, no split column); a bad cell skips its row, naming it.
    lines = table.read_text().splitlines()
    columns = lines[0].split(",")[:10]
    (tmp_path / "new.csv").write_text("\n".join([",".join(columns), ",".join(lines[1].split(",")[:10]),
                                                 "x," + ",".join(lines[2].split(",")[1:10])]) + "\n")
    assert predict.main(["--resume", str(best), str(tmp_path / "new.csv"), "--output", str(output)]) == 0
    assert [r["line"] for r in read_csv(output)] == ["2"]
    assert float(read_csv(output)[0]["output"]) == pytest.approx(float(rows[0]["output"]), rel=1e-6)
    assert re.search(r"Skipped: '.*new.csv', line 3, column 'age': 'x' is not a finite number", capsys.readouterr().out)
    # Python reads 1_000 as a number, a table does not; a column named twice would silently keep its last value.
    (tmp_path / "new.csv").write_text("\n".join([",".join(columns), "1_000," + ",".join(lines[1].split(",")[1:10])]))
    assert predict.main(["--resume", str(best), str(tmp_path / "new.csv"), "--output", str(output)]) == 2
    assert "line 2, column 'age': '1_000' is not a finite number" in capsys.readouterr().out
    (tmp_path / "new.csv").write_text("\n".join([",".join([*columns, "age"]), ",".join(lines[1].split(",")[:11])]))
    assert predict.main(["--resume", str(best), str(tmp_path / "new.csv"), "--output", str(output)]) == 2
    assert "new.csv': the column 'age' appears twice in the header" in capsys.readouterr().err
    # A model whose loss is not a classification one writes its output values, one column each.
    checkpoint = torch.load(digits_best, weights_only=True)
    checkpoint["config"] = {**checkpoint["config"], "loss": "mse_loss", "metrics": []}
    torch.save(checkpoint, tmp_path / "values.pth")
    assert predict.main(["--resume", str(tmp_path / "values.pth"), str(DIGITS / "images" / "0000.png"),
                         "--output", str(output)]) == 0
    assert list(read_csv(output)[0]) == ["file"] + [f"output{i}" for i in range(10)]


def test_a_model_with_several_outputs_predicts_through_its_predict_or_is_refused_in_one_message(digits_best, tmp_path,
                                                                                                monkeypatch, capsys):
    from model.builtin.models import DigitsCNN

    real = DigitsCNN.forward
    monkeypatch.setattr(DigitsCNN, "forward", lambda self, x: (real(self, x), x.mean()))
    image, output = DIGITS / "images" / "0000.png", tmp_path / "preds.csv"
    assert predict.main(["--resume", str(digits_best), str(image), "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert "predict.py takes one tensor from the model per batch, and DigitsCNN returns a tuple of 2" in err
    assert "Traceback" not in err and not output.exists()
    monkeypatch.setattr(DigitsCNN, "predict", lambda self, x: self(x)[0], raising=False)
    assert predict.main(["--resume", str(digits_best), str(image), "--output", str(output)]) == 0
    assert list(read_csv(output)[0])[:3] == ["file", "label", "index"]


def test_the_checkpoint_alone_predicts_exports_and_serves_a_notebook_once_the_data_is_gone(tmp_path, capsys):
    photos = image_classes(tmp_path / "photos", ("cat", "dog", "fox"), per_class=8, splits=("",))
    args = f"{{data_dir: {photos}, batch_size: 8, test_split: 6, validation_split: 3, transform: {TO_FLOAT}}}"
    assert train.main(["-c", str(REPO / "configs" / "config.yaml"), f"trainer.save_dir={tmp_path / 'saved'}",
                       "arch.args.width=8", "arch.args.num_classes=3", "trainer.epochs=1", "trainer.tensorboard=false",
                       "data_loader.type=ImageFolderDataLoader", f"data_loader.args={args}"]) == 0
    best = only_run(tmp_path / "saved") / "model_best.pth"
    new = tmp_path / "new"
    shutil.copytree(photos / "dog", new)
    shutil.rmtree(photos)  # "another machine": the training data is not there
    output = tmp_path / "preds.csv"
    assert predict.main(["--resume", str(best), str(new), "--output", str(output)]) == 0
    rows = read_csv(output)
    assert len(rows) == 8 and {r["label"] for r in rows} <= {"cat", "dog", "fox"}
    assert export.main(["--resume", str(best), "--format", "exported", "-o", str(tmp_path / "m.pt2")]) == 0
    assert "on a batch of 2 and on one sample" in capsys.readouterr().out
    # The file takes any batch and image size (DigitsCNN pools to one value), and says how to prepare its input.
    described = json.loads((tmp_path / "m.pt2.json").read_text())
    assert described["classes"] == ["cat", "dog", "fox"] and described["input"]["shape"] == [None, 1, None, None]
    assert described["preprocessing"] == {"image_mode": "unchanged", "eval_transform": TO_FLOAT}
    exported, restored = torch.export.load(tmp_path / "m.pt2").module(), restore(best).model
    larger = torch.rand(3, 1, 20, 12)
    assert torch.allclose(exported(larger), restored(larger), atol=1e-5)
    # The notebook API gives what predict.py wrote, for a path, a PIL image and a tensor alike.
    model = predictor.load(best)
    files = sorted(new.iterdir())
    by_path = model.predict([str(f) for f in files])
    assert [p.label for p in by_path] == [r["label"] for r in rows]
    assert [round(p.probability, 6) for p in by_path] == [float(r["probability"]) for r in rows]
    image = Image.open(files[0])
    assert model.predict(image) == model.predict(read_image(str(files[0]))) == by_path[0]
    assert set(by_path[0].probabilities) == {"cat", "dog", "fox"} and sum(by_path[0].probabilities.values()) == \
        pytest.approx(1)


@pytest.mark.needs("configs/diabetes_mlp.yaml")
def test_a_table_model_predicts_rows_from_its_checkpoint_alone(tmp_path):
    table = tmp_path / "diabetes.csv"
    shutil.copy(REPO / "data" / "diabetes" / "diabetes.csv", table)
    assert train.main(["-c", str(REPO / "configs" / "diabetes_mlp.yaml"), f"trainer.save_dir={tmp_path / 'saved'}",
                       f"data_loader.args.csv_file={table}", "trainer.epochs=2"]) == 0
    best = only_run(tmp_path / "saved") / "model_best.pth"
    rows = read_csv(table)[:3]
    table.unlink()
    model = predictor.load(best)
    columns = model.features
    as_mappings = model.predict([{c: float(row[c]) for c in columns} for row in rows])
    as_lists = model.predict([[float(row[c]) for c in columns] for row in rows])
    assert [p.output for p in as_mappings] == [p.output for p in as_lists] and as_mappings[0].label is None
    one = model.predict([float(rows[0][c]) for c in columns])  # one row: one prediction
    assert one.output == as_lists[0].output
    with pytest.raises(DataError, match="a row has 2 values; the model takes 10"):
        model.predict([[1.0, 2.0]])


def test_a_loader_of_ones_own_without_an_image_mode_reads_images_unchanged(digits_best, tmp_path, monkeypatch):
    import data_loader.data_loaders
    from data_loader.base import BaseDataLoader
    from data_loader.datasets import CsvImageDataset

    class MyDigits(BaseDataLoader):
        def make_dataset(self, train, transform):
            return CsvImageDataset(DIGITS, split="train" if train else "test", transform=transform)

    MyDigits.__module__ = "data_loader.data_loaders"
    monkeypatch.setattr(data_loader.data_loaders, "MyDigits", MyDigits, raising=False)
    (tmp_path / "mine.yaml").write_text("data_loader:\n  type: MyDigits\n  args: {eval_transform: "
                                        "[{type: ToDtype, args: {dtype: float32, scale: true}}]}\n")
    output = tmp_path / "preds.csv"
    assert predict.main(["--resume", str(digits_best), "-c", str(tmp_path / "mine.yaml"),
                         str(DIGITS / "images" / "0000.png"), "--output", str(output)]) == 0
    assert len(read_csv(output)) == 1
