"""A search folder of tune.py (docs/search.md): `search.json`, the definition of the search and every trial with
its status, checked whole before any trial runs and rewritten atomically whenever a trial starts or ends;
`results.csv`; and the trials, each an ordinary train.py run of the experiment `<name>_tune/<search_id>`, run as a
subprocess so that a crash or a NaN fails that trial only."""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from tools.search import parse_dimension
from trainer.checkpoint import find_checkpoint
from trainer.state import HISTORY
from utils.errors import CheckpointError, ConfigError, TrainingError, reason
from utils.files import atomic_write, open_regular, refuse_link
from utils.run import InUse, RunPaths, folder_name, lock_run, new_run, remove_run, run_of_checkpoint
from utils.schema import KEYS, is_number

STATE = "search.json"
RESULTS = "results.csv"
FINISHED = ("done", "failed", "pruned")
STATUSES = ("pending", "running", *FINISHED)
TRAIN = str(Path(__file__).resolve().parents[1] / "train.py")
# The parts of a search's definition that must match when a search is continued.
DEFINITION = ("mode", "n", "seed", "space", "train_args")
MAX_TRIALS = 10_000  # a search's trials are listed and checked in advance

log = logging.getLogger("tune")


def override(key: str, value: Any) -> str:
    """`key=value` that train.py reads back as exactly `value` (JSON is YAML)."""
    return f"{key}={json.dumps(value)}"


def _read_state(path: Path) -> dict[str, Any]:
    """A search's `search.json`, checked whole before any trial folder is touched or any trial runs: a trial id is a
    folder of the search that a trial started over deletes (an edited id such as '../..' must never be followed),
    and the trials' command line must not choose where they write."""
    try:
        state = json.loads(path.read_text())
        problem = _state_problem(state)
    except (OSError, ValueError) as e:
        problem = reason(e)
    if problem:
        raise ConfigError(f"'{path}' is damaged ({problem}); tune.py writes it whole, so it was edited or cut off. "
                          "Restore it from a backup, or start a new search with another --search-id.")
    return state


def _state_problem(state: Any) -> str | None:
    """What is wrong in a search record, or None."""
    if not isinstance(state, dict):
        return "it is not a mapping"
    kinds = {"name": str, "mode": str, "seed": int, "space": dict, "train_args": list, "monitor": str, "cwd": str,
             "save_dir": str, "trials": list}
    wrong = [key for key, kind in kinds.items() if not isinstance(state.get(key), kind)]
    if wrong:
        return f"'{wrong[0]}' is {state.get(wrong[0])!r}"
    try:
        folder_name(state["name"], "the name", nested=True)
        space = {key: parse_dimension(f"{key}={text}") for key, text in state["space"].items()}
        for trial in state["trials"]:
            folder_name(trial.get("id") if isinstance(trial, dict) else None, "a trial id")
    except (ConfigError, TypeError) as e:
        return f"its name, space or trial ids cannot be read: {reason(e)}"
    if not _is_train_args(state["train_args"]):
        return f"train_args {state['train_args']!r} is not -c CONFIG followed by --device, --lr, --bs, --epochs and " \
               "key=value items"
    n = state.get("n")
    if state["mode"] not in ("grid", "random", "optuna") or not (n is None or (is_number(n, True) and 1 <= n <= MAX_TRIALS)) \
            or len(state["trials"]) > MAX_TRIALS:
        return f"the mode {state['mode']!r}, n {n!r} and {len(state['trials'])} trials are not a search's"
    if None in space.values() or state["monitor"] == "off" or not KEYS["trainer.monitor"].rule.test(state["monitor"]):
        return f"the space or the monitor ({state['monitor']!r}) cannot be read"
    if not Path(state["cwd"]).is_dir():
        return f"the working folder of its trials, '{state['cwd']}', does not exist"
    for trial in state["trials"]:
        if not isinstance(trial.get("params"), dict) or trial.get("status") not in STATUSES:
            return f"{trial['id']} lacks params or a known status"
        if not (trial.get("best") is None or (is_number(trial["best"]) and math.isfinite(trial["best"]))) or \
                not is_number(trial.get("epochs"), True) or not is_number(trial.get("seconds")) or \
                not isinstance(trial.get("error"), str) or set(trial["params"]) - set(space):
            return f"{trial['id']}'s best, epochs, seconds, error or params are not what tune.py writes"
    return None


def _is_train_args(items: list[Any]) -> bool:
    """Whether `items` is what `plan` passes to every trial: the config, short flags and overrides. Nothing else
    is run: tune.py adds the trial's own folder (save_dir, name, --run-id) after them."""
    if items[:1] != ["-c"] or len(items) < 2 or not all(isinstance(item, str) for item in items):
        return False
    rest = items[2:]
    while rest:
        if rest[0] in ("--device", "--lr", "--bs", "--epochs") and len(rest) > 1:
            rest = rest[2:]
        elif "=" in rest[0] and not rest[0].startswith("-"):
            rest = rest[1:]
        else:
            return False
    return True


def new_trial(index: int, params: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"trial-{index:03d}", "params": params, "status": "pending", "best": None, "epochs": 0,
            "seconds": 0.0, "error": ""}


class Search:
    """A search folder: `search.json` (definition and trials), `results.csv`, the trials' run folders, and on the
    log side the trials' logs plus the HParams summaries TensorBoard compares them with."""

    def __init__(self, paths: RunPaths, state: dict[str, Any]):
        self.paths = paths
        self.state = state
        self.space = {key: parse_dimension(f"{key}={text}") for key, text in state["space"].items()}
        self.monitor_mode, self.monitor_key = state["monitor"].split()
        self._writer = None

    @classmethod
    def create(cls, definition: dict[str, Any], name: str, search_id: str | None, command: str) -> Search:
        """A new search folder of the experiment `name` (a run folder of it), locked, with its record written."""
        paths = new_run(definition["save_dir"], name, search_id)
        search = cls(paths, {"format": 1, "name": f"{name}/{paths.run_id}", "command": command, **definition})
        try:
            lock_run(paths.models, "search folder", "tune.py process")
            search.save()
        except BaseException as e:
            if not isinstance(e, InUse):  # a tune.py on the same --search-id owns the folder
                remove_run(paths)
            raise
        return search

    @classmethod
    def reopen(cls, folder: Path, definition: dict[str, Any] | None = None) -> Search:
        """The search in `folder`, locked, its record checked whole; with `definition` (the command line gave the
        search again), that must be the one the search was started with."""
        if folder.name == STATE:
            folder = folder.parent
        if not (folder / STATE).is_file():
            raise ConfigError(f"'{folder}' is not a search folder (it has no {STATE}). Pass the folder tune.py "
                              "printed when the search started: saved/models/<name>_tune/<search_id>.")
        lock_run(folder, "search folder", "tune.py process")  # before reading: a running search rewrites it
        state = _read_state(folder / STATE)
        parts = Path(state["name"]).parts
        if folder.resolve().parts[-len(parts) - 1:] != ("models", *parts):
            raise ConfigError(f"'{folder}' is not in its place, <save_dir>/models/{state['name']}: its trials are "
                              "runs of that experiment, and would be written there. Move it back, or start a new "
                              "search.")
        state["save_dir"] = str(folder.resolve().parents[len(parts)])
        if definition is not None:
            changed = [key for key in DEFINITION if definition[key] != state[key]]
            if changed:
                raise ConfigError(f"The search in '{folder}' was started with another {changed[0]} "
                                  f"({state[changed[0]]!r}, now {definition[changed[0]]!r}). Continue it with "
                                  f"python tune.py --resume {folder} alone, or start a new search with another "
                                  "--search-id.")
        return cls(run_of_checkpoint(folder / STATE, str(Path(state["name"]).parent)), state)

    def save(self) -> None:
        self._write(STATE, json.dumps(self.state, indent=1).encode())

    def _write(self, name: str, data: bytes) -> None:
        """A file of the search folder, replaced whole; a full disk stops the search with what it had recorded."""
        try:
            atomic_write(self.paths.models / name, data)
        except OSError as e:
            raise self._stopped(self.paths.models / name, e) from None

    def _stopped(self, path: Path, e: OSError) -> TrainingError:
        return TrainingError(f"Could not write '{path}': {e.strerror or e}. The search stopped with its trials "
                             "recorded as they were; free disk space (or fix the folder's permissions) and continue "
                             f"it with: python tune.py --resume {self.paths.models}")

    # ------------------------------------------------------------------ trials
    def run_trial(self, trial: dict[str, Any], on_epoch: Callable[[dict], bool] | None = None) -> None:
        """Run one trial to its end and record it. A trial that was interrupted continues from its checkpoint
        (train.py --resume), or starts over if it had none yet. `on_epoch` sees each epoch's values as the trial
        writes them; when it returns True the trial is stopped (it saves and exits) and recorded as pruned."""
        run, log_dir = self.paths.models / trial["id"], self.paths.log / trial["id"]
        for folder in (run, log_dir):  # deleted or written below: never through a link
            refuse_link(folder, "remove it, then continue the search", folder=True)
        if trial["status"] == "running" and any(run.glob("*.pth")):
            argv, how = ["--resume", str(run)], "continued from its checkpoint"
        else:
            shutil.rmtree(run, ignore_errors=True)
            shutil.rmtree(log_dir, ignore_errors=True)
            # The trial's folder comes last, where nothing before it can move it; trials leave the HParams summary
            # to the search, which shows the searched keys (trainer.hparams).
            argv = [*self.state["train_args"], *(override(k, v) for k, v in trial["params"].items()),
                    override("trainer.save_dir", self.state["save_dir"]), "trainer.hparams=false",
                    override("name", self.state["name"]), "--run-id", trial["id"]]
            how = "started over" if trial["status"] == "running" else ""
        trial["status"] = "running"
        self.save()
        log.info("%s  %s%s", trial["id"], " ".join(f"{k}={_shown(v)}" for k, v in trial["params"].items()),
                 f"  ({how})" if how else "")
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
            err = open_regular(log_dir / "stderr.txt", "a")
        except OSError as e:
            raise self._stopped(log_dir / "stderr.txt", e) from None
        started = time.monotonic()
        with err:
            offset = err.tell()
            child = subprocess.Popen([sys.executable, TRAIN, *argv], stdout=subprocess.DEVNULL, stderr=err,
                                     cwd=self.state["cwd"])
            try:
                pruned = _follow(child, log_dir / HISTORY, on_epoch)
            finally:  # a stopped trial's time counts when it is continued
                trial["seconds"] = round(trial["seconds"] + time.monotonic() - started, 1)
        trial["best"], trial["epochs"] = _result_of(run)
        if child.returncode == 0:
            trial["status"], trial["error"] = "done", ""
        elif pruned and child.returncode in (128 + signal.SIGTERM, -signal.SIGTERM):
            trial["status"], trial["error"] = "pruned", ""
        else:
            trial["status"], trial["error"] = "failed", _error_line(log_dir / "stderr.txt", offset, child.returncode)
        self.save()
        self.write_results()
        if trial["best"] is not None:
            self._write_hparams(trial)
        log.info("%s  %s: %s %s, epochs %d, %.1f s%s", trial["id"], trial["status"], self.monitor_key,
                 _shown(trial["best"]), trial["epochs"], trial["seconds"],
                 f"\n  {trial['error']}" if trial["error"] else "")

    def _write_hparams(self, trial: dict[str, Any]) -> None:
        """The trial's hyperparameters and results, for TensorBoard's HParams tab (in the trial's log folder)."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.paths.log))
        hparams = {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
                   for k, v in trial["params"].items()}
        self._writer.add_hparams(hparams, {f"hparam/{self.monitor_key}": trial["best"],
                                           "hparam/epochs": trial["epochs"]}, run_name=trial["id"])
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    # ------------------------------------------------------------------ results
    def ranked(self) -> list[dict[str, Any]]:
        """Trials best first by the monitored value; trials without one (failed early, not run) last."""
        sign = -1 if self.monitor_mode == "max" else 1
        return sorted(self.state["trials"], key=lambda t: (t["best"] is None, sign * (t["best"] or 0), t["id"]))

    def rows(self) -> list[dict[str, Any]]:
        return [{"rank": rank, "trial": t["id"], "status": t["status"], self.monitor_key: t["best"],
                 "epochs": t["epochs"], "seconds": t["seconds"], **t["params"],
                 "run": os.path.abspath(self.paths.models / t["id"]), "error": t["error"]}
                for rank, t in enumerate(self.ranked(), 1)]

    def write_results(self) -> None:
        text = io.StringIO()
        writer = csv.DictWriter(text, ["rank", "trial", "status", self.monitor_key, "epochs", "seconds",
                                       *self.space, "run", "error"])
        writer.writeheader()
        writer.writerows(self.rows())
        self._write(RESULTS, text.getvalue().encode())

    def print_results(self) -> None:
        rows = [{k: _shown(v) for k, v in row.items() if k != "error"} for row in self.rows()]
        for row in rows:
            relative = os.path.relpath(row["run"])
            row["run"] = row["run"] if relative.startswith("..") else relative
        widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in rows[0]}
        for row in [dict(zip(widths, widths)), *rows]:
            print("  ".join(row[k].ljust(w) for k, w in widths.items()).rstrip())
        for trial in self.state["trials"]:
            if trial["error"]:
                print(f"{trial['id']} failed: {trial['error']}")
        print(f"Results: {self.paths.models / RESULTS}")
        print(f"Compare the trials in TensorBoard's HParams tab: tensorboard --logdir {self.paths.log}")


def _shown(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _follow(child: subprocess.Popen, history: Path, on_epoch: Callable[[dict], bool] | None) -> bool:
    """Wait for the trial; with `on_epoch`, pass it each new line of the trial's history.jsonl and stop the trial
    with SIGTERM once it returns True. Whether the trial was stopped so. Ctrl+C (or SIGTERM to tune.py) stops
    the trial the same way, waits for its checkpoint, and goes on as KeyboardInterrupt."""
    seen, stopped = 0, False
    try:
        while child.poll() is None:
            time.sleep(0.2)
            if on_epoch is None or stopped or not history.is_file():
                continue
            lines = history.read_text().splitlines()
            for line in lines[seen:]:  # the trainer replaces the file atomically: no partial lines
                seen += 1
                if not stopped and on_epoch(json.loads(line)):
                    child.send_signal(signal.SIGTERM)
                    stopped = True
    except KeyboardInterrupt:
        child.send_signal(signal.SIGTERM)
        child.wait()
        raise
    return stopped


def _result_of(run: Path) -> tuple[float | None, int]:
    """The best monitored value and the number of finished epochs, from the trial's newest checkpoint."""
    try:
        _, state = find_checkpoint(run)
    except CheckpointError:
        return None, 0
    best = state["monitor"]["best"]
    return (best if math.isfinite(best) else None), state["loop"]["epoch"] - 1


def _error_line(stderr: Path, offset: int, returncode: int) -> str:
    """The trial's own error message (train.py writes one `error: ...` line), or the last line it wrote."""
    with open(stderr) as f:
        f.seek(offset)
        lines = [line for line in f.read().splitlines() if line.strip()]
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    if errors:
        return errors[-1]
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return lines[-1] if lines else f"train.py exited with code {returncode}"


