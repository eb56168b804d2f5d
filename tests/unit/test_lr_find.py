"""tune.py --lr-find, the LR range test (tools/lr_find.py): the schedule, the suggestion on a known curve, the
files on the digits, and that nothing outside its own folder is written."""
import csv
import hashlib
import math
import re
import shlex

import pytest
from PIL import Image

import train
import tune
from tools.lr_find import SKIP_START, schedule, suggest
from utils.config import Config

from helpers import FAST, REPO, fast_args


def test_schedule_rises_by_a_constant_factor():
    lrs = schedule(1e-7, 10.0, 200)
    assert len(lrs) == 200 and lrs[0] == 1e-7 and lrs[-1] == pytest.approx(10.0)
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert all(r == pytest.approx(10 ** (8 / 199)) for r in ratios)


def test_suggestion_is_the_steepest_descent_before_the_lowest_loss():
    lrs = schedule(1e-6, 10.0, 141)  # 20 steps per decade
    # Falls fastest at 1e-3 (tanh's steepest point), lowest at 1e-1, then rises more steeply than it fell.
    smoothed = [2 - math.tanh(2 * (math.log10(lr) + 3)) if lr <= 0.1 else 1 + 5 * (math.log10(lr) + 1)
                for lr in lrs]
    assert suggest(lrs, smoothed) == pytest.approx(1e-3)
    assert suggest(lrs[:SKIP_START + 3], smoothed[:SKIP_START + 3]) is None  # too few steps before the lowest


def digest(folder):
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")
            if p.is_file()}


def test_lr_find_on_the_digits_writes_its_own_folder_only(save_dir, capsys):
    assert train.main(fast_args(save_dir, "trainer.epochs=1", "--run-id", "run")) == 0
    before = digest(save_dir)
    args = ["--lr-find", "-c", str(REPO / "configs" / "config.yaml"), f"trainer.save_dir={save_dir}", *FAST,
            "optimizer.args.lr=1e-3", "--steps", "40", "--start-lr", "1e-4", "--end-lr", "1000", "--bs", "32"]
    assert tune.main(args) == 0
    out = capsys.readouterr().out
    after = digest(save_dir)
    new = {path for path in after if path not in before}
    assert {path: after[path] for path in before} == before  # the run's checkpoints and logs are untouched
    folder = save_dir / next(iter(new)).parent
    assert folder.parent == save_dir / "lr_find" / "digits_cnn"
    assert {path.name for path in new} == {"lr_find.csv", "lr_find.png", "config.yaml"}
    rows = list(csv.DictReader((folder / "lr_find.csv").open()))
    lrs = [float(row["lr"]) for row in rows]
    assert lrs == pytest.approx(schedule(1e-4, 1000, 40)[:len(rows)], rel=1e-12)
    assert [int(row["step"]) for row in rows] == list(range(1, len(rows) + 1))
    assert len(rows) < 40 and "where the loss diverged" in out  # Adam at rates near 1000 does
    assert all(math.isfinite(float(row["smoothed_loss"])) for row in rows[:-3])
    suggested = float(re.search(r"Suggested learning rate: ([\d.e-]+)", out).group(1))
    assert 1e-4 <= suggested <= lrs[-1] and f"optimizer.args.lr={suggested:.2g}" in out
    # The suggested command is one train.py takes, with the suggested rate (over the lr given to the test).
    command = shlex.split(re.search(r"Train with it: (.*)", out).group(1))
    parsed = train.parse_args(command[2:])
    config = Config.load(parsed.config, parsed.overrides, lr=parsed.lr, bs=parsed.bs)
    assert config["optimizer"]["args"]["lr"] == float(f"{suggested:.2g}")
    assert config["data_loader"]["args"]["batch_size"] == 32  # the batch size the rate was measured with
    assert Image.open(folder / "lr_find.png").size == (720, 440)


@pytest.mark.parametrize("flags, message", [
    (["--start-lr", "1", "--end-lr", "0.1"], "needs 0 < --start-lr < --end-lr"),
    (["--steps", "5"], "at least 20 --steps"),
    (["arch.args.widht=8"], "widht"),
])
def test_lr_find_refuses_bad_input_before_writing(save_dir, capsys, flags, message):
    assert tune.main(["--lr-find", "-c", str(REPO / "configs" / "config.yaml"), f"trainer.save_dir={save_dir}",
                      *flags]) == 2
    assert message in capsys.readouterr().err
    assert not save_dir.exists()


def test_range_test_flags_without_lr_find_are_refused(save_dir, capsys):
    assert tune.main(["-c", str(REPO / "configs" / "config.yaml"), f"trainer.save_dir={save_dir}", "--grid",
                      "optimizer.args.lr=1e-3,1e-2", "--steps", "50"]) == 2
    assert "--steps set the LR range test: add --lr-find" in capsys.readouterr().err
    assert not save_dir.exists()
