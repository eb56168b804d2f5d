"""test.py's evaluation report (tools/report.py, trainer/confusion.py): the figures against a hand count, exact under 2-process DDP,
the files test.py writes on the digits, regression left out, the TensorBoard additions of training."""
import json
import re
from fractions import Fraction

import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import test as test_script
import train
from tools.report import file_name, format_report
from trainer.confusion import ConfusionCollector
from trainer.trainer import Step

from helpers import MATRIX, REPO, fast_args, feed, tiny_digits, train_args


@pytest.mark.parametrize("one_hot", [False, True])
def test_figures_match_a_hand_count(one_hot):
    collector = ConfusionCollector(torch.device("cpu"), mistakes=16)
    feed(collector, range(0, 4), one_hot)  # two batches: the counts and the mistakes carry over
    feed(collector, range(4, 6), one_hot)
    report = collector.result(["zero", "one", "two"])
    assert report.matrix == MATRIX and report.ignored == 0
    figures = report.figures()
    expected = {"zero": (1, Fraction(2, 3), Fraction(4, 5), 3), "one": (Fraction(1, 2), Fraction(1, 2),
                Fraction(1, 2), 2), "two": (Fraction(1, 2), 1, Fraction(2, 3), 1)}
    for name, (precision, recall, f1, support) in expected.items():
        row = figures["per_class"][name]
        assert row["precision"] == pytest.approx(float(precision)) and row["recall"] == pytest.approx(float(recall))
        assert row["f1"] == pytest.approx(float(f1)) and row["support"] == support
    assert figures["accuracy"] == pytest.approx(4 / 6) and figures["samples"] == 6
    assert [figures["macro_avg"][k] for k in ("precision", "recall", "f1")] == pytest.approx([2 / 3, 13 / 18, 59 / 90])
    assert [figures["weighted_avg"][k] for k in ("precision", "recall", "f1")] == pytest.approx([3 / 4, 4 / 6, 61 / 90])
    # The most confident mistakes first, with their position in the split and their input scaled to 0..1.
    assert [(m.index, m.true, m.predicted) for m in report.mistakes] == [(4, 1, 2), (2, 0, 1)]
    assert [m.confidence for m in report.mistakes] == pytest.approx([0.95, 0.7])
    image = report.mistakes[0].image
    assert image.shape == (1, 2, 2) and image.min() == 0 and image.max() == 1
    text = format_report(report)
    assert re.search(r"^zero\s+1\.0000\s+0\.6667\s+0\.8000\s+3$", text, re.M)
    assert re.search(r"^accuracy\s+0\.6667\s+6$", text, re.M)
    assert re.search(r"^zero\s+2\s+1\s+0$", text, re.M)  # the matrix as a table


def test_not_a_classifier_is_left_out():
    regression = ConfusionCollector(torch.device("cpu"))
    regression(None, Step(torch.tensor(0.0), torch.randn(4, 1), torch.randn(4, 1)))
    assert regression.result() is None and "one value per sample (a regression, or a binary" in regression.skipped
    sequence = ConfusionCollector(torch.device("cpu"))  # (N, T, C) scores: not a per-sample classifier's
    sequence(None, Step(torch.tensor(0.0), torch.randn(4, 5, 3), torch.randint(0, 3, (4, 5))))
    assert sequence.result() is None and "a batch of shape (4, 5, 3)" in sequence.skipped
    several = ConfusionCollector(torch.device("cpu"))  # a VAE's (reconstruction, mean, log-variance)
    several(None, Step(torch.tensor(0.0), (torch.rand(4, 64), torch.randn(4, 8), torch.randn(4, 8)), torch.rand(4, 64)))
    assert several.result() is None and "the model's outputs (a tuple of 3) are not class scores" in several.skipped
    two_targets = ConfusionCollector(torch.device("cpu"))  # (N, 2) float targets that are not probabilities
    two_targets(None, Step(torch.tensor(0.0), torch.randn(4, 2), torch.tensor([[3.0, 1.5]] * 4)))
    assert two_targets.result() is None and "not class probabilities" in two_targets.skipped


def test_targets_outside_the_classes_are_counted_apart():
    collector = ConfusionCollector(torch.device("cpu"))
    target = torch.tensor([0, -100, 1])  # cross_entropy's ignore_index
    collector(None, Step(torch.tensor(0.0), torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 2.0]]), target))
    report = collector.result()
    assert report.matrix == [[1, 0], [0, 1]] and report.ignored == 1 and report.names == ["0", "1"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A 2-epoch digits run with TensorBoard on (shared by the tests below)."""
    save_dir = tmp_path_factory.mktemp("report") / "saved"
    assert train.main(fast_args(save_dir, "trainer.tensorboard=true", "--run-id", "r")) == 0
    return save_dir


def test_a_caption_takes_the_file_name_out_of_a_description_whatever_its_quotes():
    assert file_name("image 'data/pets/dog's bed.jpg' (line 4 of labels.csv)") == "dog's bed.jpg"
    assert file_name("sample 3 of TensorDataset") is None and file_name(None) is None


def test_test_py_writes_the_report_of_the_digits(digits_run, capsys):
    run = digits_run / "models" / "digits_cnn" / "r"
    assert test_script.main(["--resume", str(run / "model_best.pth")]) == 0
    out = capsys.readouterr().out
    accuracy = float(re.search(r"^  accuracy\s+([\d.]+)$", out, re.M).group(1))
    folder = run / "report-model_best-test"
    report = json.loads((folder / "report.json").read_text())
    matrix = report["classification"]["confusion_matrix"]
    total, correct = sum(map(sum, matrix)), sum(matrix[i][i] for i in range(10))
    assert total == report["samples"] == report["classification"]["samples"] == 360
    assert f"{correct / total:.6f}" == f"{accuracy:.6f}" and report["metrics"]["accuracy"] == pytest.approx(accuracy)
    assert report["classification"]["accuracy"] == correct / total
    assert report["classification"]["classes"] == [str(i) for i in range(10)]
    mistakes = report["classification"]["most_confident_mistakes"]
    assert len(mistakes) == min(16, total - correct)
    assert [m["confidence"] for m in mistakes] == sorted((m["confidence"] for m in mistakes), reverse=True)
    assert Image.open(folder / "confusion_matrix.png").size[0] > 300
    assert Image.open(folder / "mistakes.png").size[1] > 96
    assert "Confusion matrix (rows: true class, columns: predicted class)" in out
    # Each mistake names its file (and its line of labels.csv), whose label is the true class.
    rows = (REPO / "data" / "digits" / "labels.csv").read_text().splitlines()
    for mistake in mistakes:
        file, line = re.fullmatch(r"image '(?:.*/)?data/digits/(images/\d+\.png)' \(line (\d+) of labels.csv\)",
                                  mistake["sample"]).groups()
        assert rows[int(line) - 1].split(",")[:2] == [file, mistake["true"]], mistake


@pytest.mark.needs("data_loader/device_loader.py")
def test_the_device_resident_loader_names_the_same_mistakes(digits_run, tmp_path):
    """Its tensors came from the files of its source loader: the report names them as the ordinary loader does."""
    best = digits_run / "models" / "digits_cnn" / "r" / "model_best.pth"
    device = ("data_loader={type: DeviceDataLoader, args: {source: CsvImageDataLoader, data_dir: data/digits, "
              "eval_transform: [{type: ToDtype, args: {dtype: float32, scale: true}}]}}")
    assert test_script.main(["--resume", str(best), "-o", str(tmp_path / "ordinary")]) == 0
    assert test_script.main(["--resume", str(best), "-o", str(tmp_path / "device"), device]) == 0
    reports = [json.loads((tmp_path / kind / "report.json").read_text())["classification"]["most_confident_mistakes"]
               for kind in ("ordinary", "device")]
    assert reports[0] == reports[1] and all(m["sample"].startswith("image '") for m in reports[1])


def test_tensorboard_has_the_final_models_validation_report(digits_run, tmp_path, capsys):
    """The end-of-training figures are those of test.py --split val on the final checkpoint."""
    run = digits_run / "models" / "digits_cnn" / "r"
    assert test_script.main(["--resume", str(run / "checkpoint-latest.pth"), "--split", "val",
                             "--output-dir", str(tmp_path / "val")]) == 0
    per_class = json.loads((tmp_path / "val" / "report.json").read_text())["classification"]["per_class"]
    events = EventAccumulator(str(digits_run / "log" / "digits_cnn" / "r"), size_guidance={"scalars": 0})
    events.Reload()
    assert "confusion_matrix/val" in events.Tags()["images"]
    for name, row in per_class.items():
        for key in ("precision", "recall", "f1"):
            assert events.Scalars(f"class_{key}/{name}")[-1].value == pytest.approx(row[key], abs=1e-6)


def test_bad_output_folder_stops_before_anything_is_written(digits_run, tmp_path, capsys):
    run = digits_run / "models" / "digits_cnn" / "r"
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert test_script.main(["--resume", str(run / "model_best.pth"), "--split", "val",
                             "--output-dir", str(blocker / "report")]) == 2
    err = capsys.readouterr().err
    assert f"'{blocker}' is a file" in err and "--output-dir" in err
    assert not (run / "report-model_best-val").exists()


@pytest.mark.needs("configs/diabetes_mlp.yaml")
def test_regression_gets_a_report_without_classification(tmp_path, capsys):
    save_dir = tmp_path / "saved"
    assert train.main(["-c", str(REPO / "configs" / "diabetes_mlp.yaml"), f"trainer.save_dir={save_dir}",
                       "trainer.epochs=1", "trainer.tensorboard=true", "--run-id", "r"]) == 0
    run = save_dir / "models" / "diabetes_mlp" / "r"
    (run / "report-model_best-test").mkdir()
    (run / "report-model_best-test" / "confusion_matrix.png").write_bytes(b"stale")  # an earlier report's
    assert test_script.main(["--resume", str(run / "model_best.pth")]) == 0
    out = capsys.readouterr().out
    assert "No classification report: the model gives one value per sample (a regression, or a binary model" in out
    report = json.loads((run / "report-model_best-test" / "report.json").read_text())
    assert "classification" not in report and set(report["metrics"]) == {"loss", "mae", "rmse", "r2"}
    assert sorted(p.name for p in (run / "report-model_best-test").iterdir()) == ["report.json"]


def test_bad_test_images_skipped_are_counted_in_the_header_and_the_report(tmp_path, capsys):
    data = tiny_digits(tmp_path / "digits")
    assert train.main(train_args(tmp_path / "saved", data, "--run-id", "r")) == 0
    test_file = next(line.split(",")[0] for line in (data / "labels.csv").read_text().splitlines() if line.endswith(",test"))
    (data / test_file).write_bytes(b"not a png")
    run = tmp_path / "saved" / "models" / "digits_cnn" / "r"
    capsys.readouterr()
    assert test_script.main(["--resume", str(run), "-o", str(tmp_path / "report"), "data_loader.args.skip_bad=true"]) == 0
    assert "on the test split: 20 samples, 1 of them bad and skipped (skip_bad)" in capsys.readouterr().out
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["samples"] == 20 and report["skipped"] == 1 and report["classification"]["samples"] == 19
