"""The regression example: the CSV table loader and its standardisation, mse_loss, the MLP, the mae/rmse/r2
metrics against hand computations, and a short run of configs/diabetes_mlp.yaml."""
import csv
import json
import math

import pytest
import torch

import train
from data_loader.builtin import TableDataLoader
from model.builtin.losses import mse_loss
from model.builtin.metrics import mae, r2, rmse
from model.builtin.models import MLP
from trainer.checkpoint import load_checkpoint
from trainer.metric_tracker import MetricTracker
from utils.errors import CheckpointError, DataError

from helpers import REPO, only_run

TABLE = REPO / "data" / "diabetes" / "diabetes.csv"
COLUMNS = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]


def raw_rows(split):
    """The bundled table's rows of `split` as float tensors (features, targets), read without the loader."""
    with open(TABLE, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == split]
    return (torch.tensor([[float(r[c]) for c in COLUMNS] for r in rows]),
            torch.tensor([[float(r["target"])] for r in rows]))


def write_table(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


SMALL = ["a,b,y,split", "1,10,5,train", "2,20,6,train", "3,30,7,train", "4,40,8,train", "5,50,9,test"]


def test_bundled_table_gives_float_rows_of_ten_features_and_a_target_of_shape_1():
    data = TableDataLoader(validation_split=0.15)
    assert data.features == COLUMNS and data.target == "target"
    train_rows, val_rows, _ = data.split()
    assert len(train_rows) + len(val_rows) == 353 and len(val_rows) == round(353 * 0.15)
    features, target = data.make_dataset(True, None)[0]
    assert features.shape == (10,) and features.dtype == torch.float32
    assert target.shape == (1,) and target.dtype == torch.float32 and float(target) == 151.0  # first row of the CSV
    x, y = next(iter(data.train_loader()))
    assert x.shape == (64, 10) and y.shape == (64, 1)
    test = data.make_dataset(False, None)
    assert len(test) == 89
    assert torch.equal(torch.stack([test[i][1] for i in range(len(test))]), raw_rows("test")[1])


def test_standardisation_is_fitted_on_the_training_rows_only_and_applied_to_every_split():
    data = TableDataLoader(validation_split=0.15)
    features, _ = raw_rows("train")
    fitted = features[data.split()[0]]
    mean, std = fitted.mean(dim=0), fitted.std(dim=0, correction=0)
    state = data.state_dict()
    assert torch.allclose(state["mean"], mean) and torch.allclose(state["std"], std)
    assert not torch.allclose(state["mean"], features.mean(dim=0))  # the validation rows are left out of the fit
    train_set = data.make_dataset(True, None)
    standardised = torch.stack([train_set[i][0] for i in data.split()[0]])
    assert torch.allclose(standardised.mean(dim=0), torch.zeros(10), atol=1e-5)
    assert torch.allclose(standardised.std(dim=0, correction=0), torch.ones(10), atol=1e-5)
    test_features, _ = raw_rows("test")
    assert torch.allclose(data.make_dataset(False, None)[5][0], (test_features[5] - mean) / std, atol=1e-5)
    assert state["features"] == COLUMNS and state["target"] == "target"


def test_load_state_dict_makes_the_test_loader_use_the_saved_statistics(caplog):
    trained = TableDataLoader(validation_split=0.15, seed=0)
    other = TableDataLoader(validation_split=0.15, seed=1)  # another validation split: other statistics
    expected = next(iter(trained.test_loader()))[0]
    assert not torch.allclose(next(iter(other.test_loader()))[0], expected)
    other.load_state_dict(trained.state_dict())
    assert torch.equal(next(iter(other.test_loader()))[0], expected)
    before = other.state_dict()
    other.load_state_dict({})
    assert torch.equal(other.state_dict()["mean"], before["mean"]) and "holds no standardisation" in caplog.text


def test_load_state_dict_refuses_other_columns():
    state = TableDataLoader().state_dict()
    fewer = TableDataLoader(features=["age", "bmi", "bp"])
    assert next(iter(fewer.train_loader()))[0].shape[1] == 3
    with pytest.raises(CheckpointError, match="trained on the features age, sex, bmi.*gives the features age, bmi, bp"):
        fewer.load_state_dict(state)
    with pytest.raises(CheckpointError, match="target 'target'.*target 's6'"):
        TableDataLoader(target="s6", features=COLUMNS[:-1] + ["target"]).load_state_dict(state)


def test_constant_column_becomes_zero_instead_of_a_division_by_zero(tmp_path):
    table = write_table(tmp_path / "t.csv", ["a,c,y", "1,7,1", "2,7,2", "3,7,3"])
    data = TableDataLoader(csv_file=table, target="y", validation_split=0)
    assert data.features == ["a", "c"]
    assert torch.allclose(data.make_dataset(True, None)[0][0], torch.tensor([-math.sqrt(1.5), 0.0]))


def test_missing_file_and_columns_are_named(tmp_path):
    with pytest.raises(DataError, match=r"Table file '.*nowhere.csv' not found \(the data loader's csv_file\)"):
        TableDataLoader(csv_file=str(tmp_path / "nowhere.csv"))
    table = write_table(tmp_path / "t.csv", SMALL)
    with pytest.raises(DataError, match="lacks the column.s. target .*its columns: a, b, y, split"):
        TableDataLoader(csv_file=table)
    with pytest.raises(DataError, match="lacks the column.s. c "):
        TableDataLoader(csv_file=table, target="y", features=["a", "c"])
    with pytest.raises(DataError, match="other than the target 'y'"):
        TableDataLoader(csv_file=table, target="y", features=["a", "y"])
    with pytest.raises(ValueError, match="^features must be a list of column names"):
        TableDataLoader(csv_file=table, target="y", features="a")


def test_bad_cells_name_file_line_and_column_or_are_skipped(tmp_path, caplog):
    lines = list(SMALL)
    lines[3] = "3,abc,7,train"
    table = write_table(tmp_path / "t.csv", lines)
    with pytest.raises(DataError, match=r"t.csv', line 4, column 'b': 'abc' is not a finite number.*features"):
        TableDataLoader(csv_file=table, target="y")
    data = TableDataLoader(csv_file=table, target="y", features=["a"], validation_split=0)  # column b left out
    assert len(data.make_dataset(True, None)) == 4
    skipped = TableDataLoader(csv_file=table, target="y", validation_split=0, skip_bad=True)
    assert len(skipped.make_dataset(True, None)) == 3 and "Left out 1 row(s)" in caplog.text
    lines[3] = "3,30,nan,train"
    with pytest.raises(DataError, match=r"line 4, column 'y': 'nan' is not a finite number"):
        TableDataLoader(csv_file=write_table(tmp_path / "t.csv", lines), target="y")
    lines[3] = "3,30,7,tset"
    with pytest.raises(DataError, match=r"line 4, column 'split': 'tset' is neither train nor test"):
        TableDataLoader(csv_file=write_table(tmp_path / "t.csv", lines), target="y")


def test_empty_splits_are_refused(tmp_path):
    no_test = write_table(tmp_path / "a.csv", SMALL[:-1])
    data = TableDataLoader(csv_file=no_test, target="y", validation_split=0)
    with pytest.raises(DataError, match="lists no rows for split 'test', so there is no test split"):
        data.test_loader()
    no_split = write_table(tmp_path / "b.csv", [line.rsplit(",", 1)[0] for line in SMALL])
    data = TableDataLoader(csv_file=no_split, target="y", validation_split=0)
    assert len(data.make_dataset(True, None)) == 5
    with pytest.raises(DataError, match="has no 'split' column, so there is no test split"):
        data.test_loader()
    with pytest.raises(DataError, match="has no training rows"):
        TableDataLoader(csv_file=write_table(tmp_path / "c.csv", [SMALL[0], SMALL[-1]]), target="y")


# Four samples whose figures are worked out by hand: errors 0, -1, 1, -2; targets' mean 3.
OUTPUT = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
TARGET = torch.tensor([[1.0], [3.0], [2.0], [6.0]])


def test_regression_metrics_and_loss_match_hand_computations():
    assert float(mae(OUTPUT, TARGET)) == pytest.approx((0 + 1 + 1 + 2) / 4)
    assert float(mse_loss(OUTPUT, TARGET)) == pytest.approx((0 + 1 + 1 + 4) / 4)
    assert float(rmse(OUTPUT, TARGET)) == pytest.approx(math.sqrt(1.5))
    assert float(r2(OUTPUT, TARGET)) == pytest.approx(1 - 6 / 14)  # SST = 4 + 0 + 1 + 9
    assert float(r2(TARGET, TARGET)) == 1.0 and float(r2(TARGET.mean().expand(4, 1), TARGET)) == 0.0
    assert float(r2(OUTPUT.flatten(), TARGET)) == pytest.approx(1 - 6 / 14)  # (B,) against (B, 1): no broadcasting
    # Two target columns: R² is the mean of the columns' (the second column is predicted exactly).
    two_columns = r2(torch.cat([OUTPUT, TARGET], 1), torch.cat([TARGET, TARGET], 1))
    assert float(two_columns) == pytest.approx((1 - 6 / 14 + 1) / 2)
    # A batch with a single target value: 1 when predicted exactly, else 0, not a division by zero.
    assert float(r2(torch.tensor([[2.0]]), torch.tensor([[2.0]]))) == 1.0
    assert float(r2(torch.tensor([[3.0], [1.0]]), torch.tensor([[2.0], [2.0]]))) == 0.0
    with pytest.raises(ValueError, match=r"mse_loss: the model.s outputs have the shape \(4, 2\) and the targets"):
        mse_loss(torch.cat([OUTPUT, OUTPUT], 1), TARGET)
    with pytest.raises(ValueError, match="r2: .*MLP's out_features"):
        r2(torch.zeros(4, 3), TARGET)


def test_rmse_and_r2_are_exact_over_an_epoch_of_several_batches():
    tracker = MetricTracker({"rmse": rmse, "r2": r2, "mae": mae}, torch.device("cpu"))
    for rows in (slice(0, 1), slice(1, 4)):  # batches of unequal size
        tracker.update(mse_loss(OUTPUT[rows], TARGET[rows]), OUTPUT[rows], TARGET[rows])
    logged = tracker.result()
    assert logged["rmse"] == pytest.approx(math.sqrt(1.5)) == pytest.approx(math.sqrt(logged["loss"]))
    assert logged["r2"] == pytest.approx(1 - 6 / 14)  # against the mean of all four targets, not each batch's
    assert logged["mae"] == pytest.approx(float((OUTPUT - TARGET).abs().mean()))
    resumed = MetricTracker({"rmse": rmse, "r2": r2, "mae": mae}, torch.device("cpu"))
    resumed.load_state_dict(tracker.state_dict())  # a mid-epoch checkpoint keeps the totals
    assert resumed.result() == logged


def test_mlp_maps_features_to_one_output_and_names_a_wrong_feature_count():
    model = MLP(in_features=10, hidden=[16, 8], dropout=0.1)
    assert model(torch.randn(5, 10)).shape == (5, 1)
    assert [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)] == [16, 8, 1]
    assert MLP(in_features=3, hidden=[], out_features=2)(torch.randn(4, 3)).shape == (4, 2)  # a linear model
    with pytest.raises(ValueError, match="the data has 9 feature columns but in_features is 10"):
        model(torch.randn(5, 9))
    with pytest.raises(ValueError, match="^activation must be one of relu, swish"):
        MLP(in_features=10, activation="tanh")


def test_diabetes_config_trains_and_writes_a_checkpoint(save_dir):
    config = str(REPO / "configs" / "diabetes_mlp.yaml")
    assert train.main(["-c", config, f"trainer.save_dir={save_dir}", "trainer.epochs=2"]) == 0
    run = only_run(save_dir)
    checkpoint = load_checkpoint(run / "model_best.pth")
    assert checkpoint["config"]["arch"]["type"] == "MLP" and "output.bias" in checkpoint["model"]
    history = [json.loads(line) for line in (save_dir / "log" / run.parent.name / run.name / "history.jsonl").open()]
    assert [h["epoch"] for h in history] == [1, 2] and history[1]["val_loss"] < history[0]["val_loss"]
    assert all(h["val_rmse"] == pytest.approx(math.sqrt(h["val_loss"])) for h in history)
    assert train.main(["-c", config, f"trainer.save_dir={save_dir}", "data_loader.args.target=progression"]) == 2


def test_excels_byte_order_mark_is_read_and_latin1_is_named(tmp_path):
    text = (REPO / "data" / "diabetes" / "diabetes.csv").read_text()
    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufeff".encode() + text.encode())  # Excel's "CSV UTF-8"
    loader = TableDataLoader(csv_file=str(bom), target="target")
    assert loader.state_dict()["features"][0] == "age"  # not "\ufeffage"
    latin = tmp_path / "latin.csv"
    lines = text.splitlines()
    latin.write_bytes("\n".join([lines[0], lines[1].replace("train", "tr\xe9in"), *lines[2:]]).encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.csv' is not UTF-8 text: line 2 holds the byte 0xe9"):
        TableDataLoader(csv_file=str(latin), target="target")
