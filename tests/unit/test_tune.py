"""tune.py as a user runs it: a grid search, a search killed and continued, seeded random draws, errors,
and the Optuna search."""
import errno
import json
import sys

import pytest

import tune
from tools import trials
from tools.search import random_trials, split_items

from helpers import FAST, REPO, a_search, fast_args, one_error


def test_grid_enumerates_every_combination_in_order(tmp_path):
    args = fast_args(tmp_path / "saved", "--grid", "optimizer.args.lr=1e-3,1e-2", "data_loader.args.batch_size=32,64")
    definition, _ = tune.plan(tune.parse_args(args))
    assert [(t["params"]["optimizer.args.lr"], t["params"]["data_loader.args.batch_size"]) for t in
            definition["trials"]] == [(1e-3, 32), (1e-3, 64), (1e-2, 32), (1e-2, 64)]
    assert not (tmp_path / "saved").exists()


RANDOM = ["optimizer.args.lr=log-uniform:1e-4:1e-1", "data_loader.args.batch_size=choice:32,64,128",
          "arch.args.dropout=uniform:0:0.5", "arch.args.width=int:4:16", "trainer.epochs=3"]


def test_random_search_draws_the_same_trials_for_the_same_seed(tmp_path):
    space, fixed = split_items(RANDOM, "random")
    assert list(space) == [item.split("=")[0] for item in RANDOM[:4]] and fixed == ["trainer.epochs=3"]
    trials = random_trials(space, 8, seed=1)
    assert trials == random_trials(space, 8, seed=1) and trials != random_trials(space, 8, seed=2)
    assert random_trials(space, 3, seed=1) == trials[:3]
    for t in trials:
        assert 1e-4 <= t["optimizer.args.lr"] <= 1e-1 and 0 <= t["arch.args.dropout"] <= 0.5
        assert t["data_loader.args.batch_size"] in (32, 64, 128) and t["arch.args.width"] in range(4, 17)
    # The command line gives the same list; nothing is written before the search runs.
    args = fast_args(tmp_path / "saved", "--random", "8", "--seed", "1", *RANDOM)
    definition, _ = tune.plan(tune.parse_args(args))
    assert [t["params"] for t in definition["trials"]] == trials
    assert not (tmp_path / "saved").exists()


BAD = {
    "one bound": (["--random", "2", "optimizer.args.lr=log-uniform:1e-4"], "'optimizer.args.lr=log-uniform:1e-4' is"),
    "log of zero": (["--random", "2", "optimizer.args.lr=log-uniform:0:1"], "bounds 0 and 1 do not make a range"),
    "misspelt kind": (["--random", "2", "optimizer.args.lr=loguniform:1e-4:1e-1"], "Did you mean 'log-uniform'"),
    "int of floats": (["--random", "2", "arch.args.width=int:4:8.5"], "int bounds must be whole numbers"),
    "unknown key": (["--grid", "optimizer.args.lrr=1e-3,1e-2"], "searched key 'optimizer.args.lrr' is not in"),
    "range in grid": (["--grid", "optimizer.args.lr=uniform:0:1"], "--grid cannot enumerate"),
    "no mode": (["optimizer.args.lr=1e-3,1e-2"], "Choose the search with --grid"),
    "too many draws": (["--random", "100000000", "optimizer.args.lr=log-uniform:1e-4:1e-1"],
                       "--random 100000000 asks for more than 10000 trials"),
    "too large a grid": (["--grid", *(f"{k}=1,2,3,4,5,6,7,8,9,10,11" for k in ("arch.args.width", "arch.args.dropout",
                                                                             "optimizer.args.lr", "trainer.epochs"))],
                         "This grid has 14641 combinations, more than 10000 trials"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_search_gives_one_message_exit_2_and_writes_nothing(tmp_path, case, capsys):
    items, message = BAD[case]
    assert tune.main(fast_args(tmp_path / "saved", *items)) == 2
    err = one_error(capsys)
    assert message in err, err
    assert not (tmp_path / "saved").exists()


def test_optuna_missing_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    assert tune.main(fast_args(tmp_path / "saved", "--optuna", "2", "optimizer.args.lr=log-uniform:1e-3:1e-1")) == 2
    assert "pip install optuna" in capsys.readouterr().err


TAMPERED = {
    "best": ({"best": "abc"}, "trial-000's best, epochs, seconds, error or params are not what tune.py writes"),
    "seconds": ({"seconds": "x"}, "trial-000's best, epochs, seconds"),
    "params as a list": ({"params": [1]}, "trial-000 lacks params or a known status"),
    "no params": ({"no_params": None}, "trial-000 lacks params or a known status"),
    "no id": ({"no_id": None}, "a trial id must be a folder name such as run1"),
    "monitor": ({"monitor": "bad"}, "the space or the monitor ('bad') cannot be read"),
    "cwd": ({"cwd": "/no/such/folder"}, "the working folder of its trials, '/no/such/folder', does not exist"),
    "train_args": ({"train_args": ["--resume", "/elsewhere"]}, "train_args ['--resume', '/elsewhere'] is not -c CONFIG"),
}


def test_a_trial_folder_that_is_a_link_is_neither_deleted_through_nor_written_into(tmp_path, capsys):
    folder = a_search(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    (folder / "trial-000").symlink_to(elsewhere)
    assert tune.main(["--resume", str(folder)]) == 2
    assert f"'{folder / 'trial-000'}' is a symbolic link" in capsys.readouterr().err
    assert [p.name for p in elsewhere.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("case", TAMPERED)
def test_a_tampered_search_record_is_refused_before_any_trial_runs(tmp_path, case, capsys):
    changes, message = TAMPERED[case]
    folder = a_search(tmp_path, **changes)
    assert tune.main(["--resume", str(folder)]) == 2
    err = one_error(capsys)
    assert "search.json' is damaged (" in err and message in err, err
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "search.json"]


def test_a_full_disk_during_a_search_stops_it_with_one_message(tmp_path, monkeypatch, capsys):
    folder = a_search(tmp_path)
    record = (folder / "search.json").read_text()

    def no_space(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(trials, "atomic_write", no_space)
    assert tune.main(["--resume", str(folder)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Could not write") and len(err.strip().splitlines()) == 1, err
    assert "search.json': No space left on device. The search stopped" in err and f"--resume {folder}" in err
    assert (folder / "search.json").read_text() == record


def test_tune_refuses_a_search_json_whose_trial_ids_lead_elsewhere(tmp_path, capsys):
    folder = tmp_path / "saved" / "models" / "digits_cnn_tune" / "s"
    folder.mkdir(parents=True)
    victim = tmp_path / "saved" / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    trial = {"id": "../../../victim", "params": {}, "status": "pending", "best": None, "epochs": 0, "seconds": 0.0,
             "error": ""}
    (folder / "search.json").write_text(json.dumps({
        "format": 1, "name": "digits_cnn_tune/s", "mode": "grid", "n": None, "seed": 0, "space": {},
        "train_args": [], "monitor": "max val_accuracy", "save_dir": str(tmp_path / "saved"), "cwd": str(tmp_path),
        "trials": [trial]}))
    assert tune.main(["--resume", str(folder)]) == 2
    assert "a trial id must be a folder name such as run1" in one_error(capsys)
    assert (victim / "keep.txt").read_text() == "mine"


def test_tune_refuses_a_search_id_that_leads_elsewhere(tmp_path, capsys):
    args = ["-c", str(REPO / "configs" / "config.yaml"), f"trainer.save_dir={tmp_path / 'saved'}", *FAST,
            "--grid", "optimizer.args.lr=1e-3,1e-2", "--search-id", "../../x"]
    assert tune.main(args) == 2
    assert "--search-id must be a folder name such as run1" in one_error(capsys)
    assert list(tmp_path.iterdir()) == []
