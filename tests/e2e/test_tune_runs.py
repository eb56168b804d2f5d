"""tune.py searches that run their trials (each a train.py process): a grid search killed and continued,
Optuna, and a second tune.py on a live search."""
import contextlib
import csv
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
from trainer.checkpoint import load_checkpoint

from helpers import REPO, a_search, fast_args, search_folder

GRID = ["--grid", "optimizer.args.lr=1e-3,3e-3,1e-2", "--search-id", "s"]


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
