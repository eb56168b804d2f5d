"""tune.py as a user runs it: a grid search, a search killed and continued, seeded random draws, errors,
and the Optuna search."""
import contextlib
import csv
import errno
import io
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

import tune
from tools import trials
from tools.search import random_trials, split_items
from trainer.checkpoint import load_checkpoint

from conftest import REPO, fast_args

GRID = ["--grid", "optimizer.args.lr=1e-3,3e-3,1e-2", "--search-id", "s"]


def search_folder(save_dir):
    return save_dir / "models" / "digits_cnn_tune" / "s"


def started_trials(stdout: str) -> list[str]:
    """The trials a tune.py run started, from its `trial-NNN  key=value ...` lines."""
    return re.findall(r"^(trial-\d{3})  \S+=", stdout, re.M)


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A grid search of three trials killed during its second trial, then continued. One search serves both tests
    below: each trial is a train.py process, and a test suite on two CPU cores cannot afford many."""
    save_dir = tmp_path_factory.mktemp("tune") / "saved"
    folder = search_folder(save_dir)
    # Killed as a terminal or a job scheduler kills a job: the whole process group, tune.py and its trial.
    search = subprocess.Popen([sys.executable, str(REPO / "tune.py"), *fast_args(save_dir), *GRID],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 300
    while True:
        assert search.poll() is None and time.monotonic() < deadline, search.stderr.read() if search.stderr else ""
        state = json.loads((folder / "search.json").read_text()) if (folder / "search.json").is_file() else None
        statuses = [t["status"] for t in state["trials"]] if state else []
        # Wait for trial-001 to have saved its first epoch, so that it is killed half-way.
        if statuses[:1] == ["done"] and (folder / "trial-001" / "checkpoint-latest.pth").is_file():
            break
        time.sleep(0.1)
    os.killpg(search.pid, signal.SIGKILL)
    search.wait()
    killed = json.loads((folder / "search.json").read_text())
    finished = {"trial-000": (folder / "trial-000" / "checkpoint-latest.pth").stat().st_mtime_ns}
    # An edited record cannot send the trials elsewhere: tune.py gives each its own folder after everything else.
    tampered = {**killed, "train_args": [*killed["train_args"], f"trainer.save_dir={save_dir.parent / 'elsewhere'}"]}
    (folder / "search.json").write_text(json.dumps(tampered))
    with contextlib.redirect_stdout(io.StringIO()) as out:  # in this process: one less torch import
        assert tune.main(["--resume", str(folder)]) == 0
    assert not (save_dir.parent / "elsewhere").exists()
    return save_dir, killed, finished, out.getvalue()


def test_grid_search_writes_a_run_per_combination_and_ranks_them(grid):
    save_dir, _, _, resumed = grid
    folder = search_folder(save_dir)
    trials = ["trial-000", "trial-001", "trial-002"]
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == trials
    with open(folder / "results.csv") as f:
        rows = list(csv.DictReader(f))
    best = {t: load_checkpoint(folder / t / "checkpoint-latest.pth")["monitor"]["best"] for t in trials}
    assert [float(row["val_accuracy"]) for row in rows] == [best[row["trial"]] for row in rows]
    assert [best[row["trial"]] for row in rows] == sorted(best.values(), reverse=True)
    assert {float(row["optimizer.args.lr"]) for row in rows} == {1e-3, 3e-3, 1e-2}
    assert all(row["status"] == "done" and row["epochs"] == "2" for row in rows)
    printed = re.findall(r"^\d+\s+(trial-\d{3})\s+done", resumed, re.M)
    assert printed == [row["trial"] for row in rows]

    # Each trial is an ordinary run with its values; its log folder holds its history and HParams summary.
    config = yaml.safe_load((folder / "trial-001" / "config.yaml").read_text())
    assert config["name"] == "digits_cnn_tune/s"
    assert config["optimizer"]["args"]["lr"] == 3e-3
    for trial in trials:
        log_dir = save_dir / "log" / "digits_cnn_tune" / "s" / trial
        history = [json.loads(line) for line in (log_dir / "history.jsonl").read_text().splitlines()]
        assert [h["epoch"] for h in history] == [1, 2]
        assert max(h["val_accuracy"] for h in history) == best[trial]
        assert list(log_dir.glob("events.out.tfevents.*")), "add_hparams writes into the trial's log folder"


def test_search_killed_after_a_trial_runs_only_the_rest(grid, capsys):
    save_dir, killed, finished, resumed = grid
    folder = search_folder(save_dir)
    assert [t["status"] for t in killed["trials"]] == ["done", "running", "pending"]
    assert started_trials(resumed) == ["trial-001", "trial-002"]
    assert "trial-001  optimizer.args.lr=0.003  (continued from its checkpoint)" in resumed
    assert "Resuming trial-001" in (save_dir / "log" / "digits_cnn_tune" / "s" / "trial-001" / "train.log").read_text()
    assert {t: (folder / t / "checkpoint-latest.pth").stat().st_mtime_ns for t in finished} == finished
    state = json.loads((folder / "search.json").read_text())
    assert [(t["status"], t["epochs"]) for t in state["trials"]] == [("done", 2)] * 3
    assert tune.main(["--resume", str(folder)]) == 0
    assert started_trials(capsys.readouterr().out) == []


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
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert message in err, err
    assert not (tmp_path / "saved").exists()


def test_optuna_missing_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    assert tune.main(fast_args(tmp_path / "saved", "--optuna", "2", "optimizer.args.lr=log-uniform:1e-3:1e-1")) == 2
    assert "pip install optuna" in capsys.readouterr().err


def test_optuna_search_runs_and_ranks_its_trials(tmp_path):
    pytest.importorskip("optuna")
    save_dir = tmp_path / "saved"
    assert tune.main([*fast_args(save_dir, "trainer.epochs=1"), "--optuna", "2", "--search-id", "s",
                      "optimizer.args.lr=log-uniform:1e-3:1e-1", "data_loader.args.batch_size=choice:32,64"]) == 0
    state = json.loads((search_folder(save_dir) / "search.json").read_text())
    assert [t["status"] for t in state["trials"]] == ["done", "done"]
    for t in state["trials"]:
        params = t["params"]
        assert 1e-3 <= params["optimizer.args.lr"] <= 1e-1 and params["data_loader.args.batch_size"] in (32, 64)
    with open(search_folder(save_dir) / "results.csv") as f:
        values = [float(row["val_accuracy"]) for row in csv.DictReader(f)]
    assert values == sorted(values, reverse=True) and len(values) == 2


def a_search(tmp_path, **changes):
    """A search folder as tune.py writes it, one trial pending, with `changes` made to its record."""
    folder = search_folder(tmp_path / "saved")
    folder.mkdir(parents=True)
    trial = {"id": "trial-000", "params": {"optimizer.args.lr": 0.01}, "status": "pending", "best": None,
             "epochs": 0, "seconds": 0.0, "error": ""}
    state = {"format": 1, "name": "digits_cnn_tune/s", "command": "python tune.py", "mode": "grid", "n": None,
             "seed": 0, "space": {"optimizer.args.lr": "1e-3,1e-2"}, "train_args": ["-c", str(REPO / "configs" /
                                                                                            "config.yaml")],
             "monitor": "max val_accuracy", "save_dir": str(tmp_path / "saved"), "cwd": str(REPO), "trials": [trial]}
    for key, value in changes.items():
        if key in trial:
            trial[key] = value
        elif value is None:
            del trial[key.removeprefix("no_")]
        else:
            state[key] = value
    (folder / "search.json").write_text(json.dumps(state))
    return folder


TAMPERED = {
    "best": ({"best": "abc"}, "trial-000's best, epochs, seconds, error or params are not what tune.py writes"),
    "seconds": ({"seconds": "x"}, "trial-000's best, epochs, seconds"),
    "params as a list": ({"params": [1]}, "trial-000 lacks params or a known status"),
    "no params": ({"no_params": None}, "trial-000 lacks params or a known status"),
    "monitor": ({"monitor": "bad"}, "the space or the monitor ('bad') cannot be read"),
    "cwd": ({"cwd": "/no/such/folder"}, "the working folder of its trials, '/no/such/folder', does not exist"),
    "train_args": ({"train_args": ["--resume", "/elsewhere"]}, "train_args ['--resume', '/elsewhere'] is not -c CONFIG"),
}


@pytest.mark.parametrize("case", TAMPERED)
def test_a_tampered_search_record_is_refused_before_any_trial_runs(tmp_path, case, capsys):
    changes, message = TAMPERED[case]
    folder = a_search(tmp_path, **changes)
    assert tune.main(["--resume", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "search.json' is damaged (" in err and message in err, err
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "search.json"]


def test_a_second_tune_process_on_a_live_search_is_refused(tmp_path, capsys):
    folder = a_search(tmp_path)
    (folder / "trial-000").mkdir()
    (folder / "trial-000" / "checkpoint-latest.pth").write_bytes(b"the first search's trial, training")
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; f = open(sys.argv[1], 'a+'); "
                               "fcntl.lockf(f, fcntl.LOCK_EX); f.write(f'{os.getpid()}\\n'); f.flush(); print(1, flush=True); "
                               "time.sleep(60)", str(folder / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "1\n"  # it holds the lock, as a running search does
        assert tune.main(["--resume", str(folder)]) == 2
        assert f"The search folder '{folder}' is in use by another tune.py process (pid {holder.pid})" in \
            capsys.readouterr().err
        assert (folder / "trial-000" / "checkpoint-latest.pth").read_bytes() == b"the first search's trial, training"
    finally:
        holder.kill()
        holder.wait()


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
