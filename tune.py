"""Hyperparameter search: one ordinary train.py run per trial, a results table, TensorBoard HParams, resume.

    python tune.py -c configs/config.yaml --grid optimizer.args.lr=1e-3,1e-2 data_loader.args.batch_size=32,64
    python tune.py -c configs/config.yaml --random 8 optimizer.args.lr=log-uniform:1e-4:1e-1 --epochs 5
    python tune.py -c configs/config.yaml --optuna 20 optimizer.args.lr=log-uniform:1e-4:1e-1   # pip install optuna
    python tune.py --resume saved/models/<name>_tune/<search_id>
    python tune.py --lr-find -c configs/config.yaml [--steps 100] [key=value ...]   # the LR range test

Search items are described in tools/search.py; every other flag or `key=value` is passed to each trial. Each
trial runs as a subprocess, so a crash or a NaN fails that trial only. The search folder (tools/trials.py, a run folder of the
experiment `<name>_tune`) holds `search.json`, the trials and their status, rewritten atomically whenever a
trial starts or ends, and `results.csv`; trial NNN is the run `<name>_tune/<search_id>/trial-NNN`.

`--lr-find` is the LR range test of tools/lr_find.py, in this process: the run built as train.py builds it,
its files in `<save_dir>/lr_find/<name>/<timestamp>/` (docs/search.md).
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

from tools.lr_find import DIVERGED, SKIP_START, RangeTest, range_test, schedule
from tools.search import Dimension, check_key, grid_trials, random_trials, split_items
from tools.trials import FINISHED, MAX_TRIALS, STATE, Search, new_trial, override
from trainer.setup import build
from trainer.state import HISTORY
from utils.config import Config
from utils.config_file import save_config
from utils.errors import ConfigError, TemplateError, report_errors
from utils.files import atomic_write
from utils.log import setup_logging
from utils.plots import lr_plot, png_bytes
from utils.run import folder_name, new_folder, release_runs
from utils.schema import add_config_arguments, describe

log = logging.getLogger("tune")

LR_FIND = {"steps": 200, "start_lr": 1e-7, "end_lr": 10.0}  # the defaults of --lr-find's own flags


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Hyperparameter search: one train.py run per trial.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--grid", action="store_true", help="every combination of the listed values")
    mode.add_argument("--random", type=int, metavar="N", help="N trials drawn from the ranges (seeded by --seed)")
    mode.add_argument("--optuna", type=int, metavar="N", help="N trials chosen by Optuna's TPE sampler, with pruning")
    mode.add_argument("--lr-find", action="store_true", help="the LR range test: suggest a learning rate")
    parser.add_argument("--steps", type=int, help=f"--lr-find: optimizer steps (default {LR_FIND['steps']}); it "
                        "stops earlier when the loss diverges")
    parser.add_argument("--start-lr", type=float, help=f"--lr-find: the first rate (default {LR_FIND['start_lr']:g})")
    parser.add_argument("--end-lr", type=float, help=f"--lr-find: the last rate (default {LR_FIND['end_lr']:g})")
    parser.add_argument("--seed", type=int, help="seed of the search's draws (default 0); the trials' "
                        "training seed is the config's `seed`, set it with seed=N")
    parser.add_argument("--search-id", help="name of the search folder (default: a timestamp); an existing search "
                        "of that id is continued")
    parser.add_argument("-r", "--resume", metavar="SEARCH_FOLDER", help="continue a search: run the trials not "
                        "finished")
    add_config_arguments(parser)
    args = parser.parse_intermixed_args(argv)
    args.command = shlex.join(["python", "tune.py", *(sys.argv[1:] if argv is None else argv)])
    return args


def _import_optuna():
    try:
        import optuna
    except ImportError:
        raise ConfigError("--optuna needs the Optuna package, which is not installed. Install it with "
                          "pip install optuna, or search with --grid or --random N instead.") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def plan(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """The search's definition from the command line, checked before anything runs, and its experiment name."""
    given = [f"--{key.replace('_', '-')}" for key in LR_FIND if getattr(args, key) is not None]
    if given:
        raise ConfigError(f"{', '.join(given)} set the LR range test: add --lr-find, or leave them out of a search.")
    if args.config is None:
        raise ConfigError("Give a config with -c configs/config.yaml and a search (--grid, --random N or "
                          "--optuna N), or a search to continue with --resume SEARCH_FOLDER.")
    mode = "grid" if args.grid else "random" if args.random is not None else "optuna" if args.optuna is not None \
        else None
    n = {"grid": None, "random": args.random, "optuna": args.optuna}.get(mode)
    if mode is None or (n is not None and n < 1):
        raise ConfigError("Choose the search with --grid, --random N or --optuna N (N >= 1), followed by the "
                          "searched keys, e.g. --grid optimizer.args.lr=1e-3,1e-2 data_loader.args.batch_size=32,64.")
    if n is not None and n > MAX_TRIALS:
        raise ConfigError(f"--{mode} {n} asks for more than {MAX_TRIALS} trials, each a training run; ask for fewer.")
    if mode == "optuna":
        _import_optuna()
    space, fixed = split_items(args.overrides, mode)
    if not space:
        raise ConfigError("Nothing to search: give at least one key with several values or a range, e.g. "
                          "optimizer.args.lr=1e-3,1e-2 (--grid) or optimizer.args.lr=log-uniform:1e-4:1e-1.")
    short = {"lr": args.lr, "bs": args.bs, "epochs": args.epochs, "device": args.device, "name": args.name}
    config = Config.load(args.config, fixed, **short)
    if config["trainer"]["monitor"] == "off":
        raise ConfigError(f"{config.source}: trainer.monitor is off, but a search ranks its trials by the monitored "
                          "value. Set it, e.g. trainer.monitor='max val_accuracy'.")
    for key in space:
        check_key(config.data, key, config.source)
    combinations = math.prod(len(d.values) for d in space.values()) if mode == "grid" else 0
    if combinations > MAX_TRIALS:
        raise ConfigError(f"This grid has {combinations} combinations, more than {MAX_TRIALS} trials, each a training "
                          "run; list fewer values, or draw some of them with --random N.")
    flags = given_flags(args, ("device", "lr", "bs", "epochs"))
    save_dir = Path(config["trainer"]["save_dir"]).resolve()
    definition = {
        "mode": mode, "n": n, "seed": args.seed or 0,
        "space": {item.partition("=")[0]: item.partition("=")[2] for item in args.overrides
                  if item.partition("=")[0] in space},
        "train_args": ["-c", str(Path(args.config).resolve()), *flags, *fixed],
        "monitor": config["trainer"]["monitor"], "save_dir": str(save_dir), "cwd": os.getcwd(),
    }
    trials = grid_trials(space) if mode == "grid" else random_trials(space, n, args.seed or 0) \
        if mode == "random" else []
    for params in trials:  # a value the config refuses (trainer.epochs=0) fails here, not in the trial
        Config.load(args.config, [*fixed, *(override(k, v) for k, v in params.items())], **short)
    definition["trials"] = [new_trial(i, params) for i, params in enumerate(trials)]
    return definition, f"{config['name']}_tune"


# ---------------------------------------------------------------------- the searches
def run_list(search: Search) -> None:
    """Grid and random searches: the trials are listed in advance; run those not finished, in order."""
    for trial in search.state["trials"]:
        if trial["status"] not in FINISHED:
            search.run_trial(trial)


def run_optuna(search: Search) -> None:
    """Ask Optuna's TPE sampler for each next trial and prune trials whose monitored value falls behind
    (MedianPruner: below the median of earlier trials at the same epoch, from the second epoch on). A continued
    search tells the study its finished trials first; an interrupted trial is run again with its parameters."""
    optuna = _import_optuna()
    trials = search.state["trials"]
    finished = [t for t in trials if t["status"] in FINISHED]
    study = optuna.create_study(
        direction="maximize" if search.monitor_mode == "max" else "minimize",
        sampler=optuna.samplers.TPESampler(seed=search.state["seed"] + len(finished)),  # new draws after a resume
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2))
    distributions = {key: _distribution(optuna, dim) for key, dim in search.space.items()}
    states = {"done": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED,
              "failed": optuna.trial.TrialState.FAIL}
    for trial in finished:
        study.add_trial(optuna.trial.create_trial(
            state=states[trial["status"]], value=trial["best"] if trial["status"] == "done" else None,
            params=_to_optuna(search.space, trial["params"]), distributions=distributions,
            intermediate_values=_history(search, trial)))
    for trial in [t for t in trials if t["status"] not in FINISHED]:
        study.enqueue_trial(_to_optuna(search.space, trial["params"]))
        _run_optuna_trial(search, study, distributions, trial, states)
    while len(trials) < search.state["n"]:
        trial = new_trial(len(trials), {})
        trials.append(trial)
        _run_optuna_trial(search, study, distributions, trial, states)


def _run_optuna_trial(search: Search, study, distributions: dict, trial: dict[str, Any], states: dict) -> None:
    asked = study.ask(distributions)
    trial["params"] = {key: json.loads(v) if search.space[key].kind == "choice" else v
                       for key, v in asked.params.items()}

    def report(record: dict[str, Any]) -> bool:
        value = record.get(search.monitor_key)
        if value is None or not math.isfinite(value):
            return False
        asked.report(value, record["epoch"])
        return asked.should_prune()

    search.run_trial(trial, on_epoch=report)
    if trial["status"] == "done" and trial["best"] is not None:
        study.tell(asked, trial["best"])
    else:
        study.tell(asked, state=states["pruned" if trial["status"] == "pruned" else "failed"])


def _distribution(optuna, dimension: Dimension):
    if dimension.kind == "choice":  # categories as JSON text: Optuna takes only scalars, a choice may hold lists
        return optuna.distributions.CategoricalDistribution([json.dumps(v) for v in dimension.values])
    if dimension.kind == "int":
        return optuna.distributions.IntDistribution(int(dimension.low), int(dimension.high))
    return optuna.distributions.FloatDistribution(dimension.low, dimension.high, log=dimension.kind == "log-uniform")


def _to_optuna(space: dict[str, Dimension], params: dict[str, Any]) -> dict[str, Any]:
    return {key: json.dumps(v) if space[key].kind == "choice" else v for key, v in params.items()}


def _history(search: Search, trial: dict[str, Any]) -> dict[int, float]:
    """A finished trial's monitored value per epoch, from its history.jsonl."""
    path = search.paths.log / trial["id"] / HISTORY
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return {r["epoch"]: r[search.monitor_key] for r in records
            if math.isfinite(r.get(search.monitor_key, math.nan))}


def lr_find(args: argparse.Namespace) -> RangeTest:
    """The LR range test of the config's run, built by train.py's `build` (same seed, same initial weights,
    checked before anything is written), on a model that is then thrown away. Writes lr_find.csv, lr_find.png
    and config.yaml into a new folder `<save_dir>/lr_find/<name>/<timestamp>/` and no other."""
    steps, start, end = (default if getattr(args, key) is None else getattr(args, key) for key, default in
                         LR_FIND.items())
    if args.config is None or args.resume or args.search_id:
        raise ConfigError("--lr-find tests a config's run from its initial weights: give it -c CONFIG (and any "
                          "key=value overrides), without --resume or --search-id.")
    if not 0 < start < end or steps < SKIP_START + 10:
        raise ConfigError(f"--lr-find needs 0 < --start-lr < --end-lr and at least {SKIP_START + 10} --steps; "
                          f"got --start-lr {start:g}, --end-lr {end:g}, --steps {steps}.")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("--lr-find runs in a single process; start it with python, not torchrun.")
    built = build(argparse.Namespace(**{**vars(args), "resume": None, "seed": None, "run_id": None}))
    config = built.config
    folder = new_folder(Path(config["trainer"]["save_dir"]) / "lr_find" / config["name"],
                        f"Choose a writable trainer.save_dir (now '{config['trainer']['save_dir']}').")
    log.info("LR range test of %s: up to %d steps, the rate rising from %g to %g.", config["name"], steps, start,
             end)
    try:
        result = range_test(built.trainer, schedule(start, end, steps))
    except BaseException:
        folder.rmdir()  # still empty: an interrupted test leaves nothing behind
        raise
    save_config(config.data, folder / "config.yaml")
    atomic_write(folder / "lr_find.csv", result.csv_bytes())
    atomic_write(folder / "lr_find.png", png_bytes(lr_plot(result.lrs, result.losses, result.smoothed,
                                                           result.suggestion)))
    lowest = min((i for i, v in enumerate(result.smoothed) if math.isfinite(v)), key=result.smoothed.__getitem__,
                 default=0)
    print(f"Ran {len(result.lrs)} of {steps} steps" + (f"; stopped at lr {result.lrs[-1]:.3g}, where the loss "
          f"diverged (over {DIVERGED:g}x its lowest)" if result.diverged else "") +
          f". Lowest smoothed loss {result.smoothed[lowest]:.4g} at lr {result.lrs[lowest]:.3g}.")
    if result.suggestion is None:
        print("No suggestion: the loss diverged too soon to judge. Lower --start-lr, or raise --steps.")
    else:
        # As the last key=value, it wins over any lr among the overrides (a --lr flag and one would be refused).
        command = shlex.join(["python", "train.py", "-c", args.config, *given_flags(args, ("device", "bs", "epochs",
                              "name")), *args.overrides, f"optimizer.args.lr={result.suggestion:.2g}"])
        print(f"Suggested learning rate: {result.suggestion:.3g} (where the smoothed loss falls fastest). Train "
              f"with it: {command}")
    print(f"Files: {folder / 'lr_find.csv'}, {folder / 'lr_find.png'}")
    return result


def given_flags(args: argparse.Namespace, names: tuple[str, ...]) -> list[str]:
    """The short flags of `names` given on the command line, as train.py takes them (`--bs 32`)."""
    return [arg for flag in names if getattr(args, flag) is not None for arg in (f"--{flag}", str(getattr(args, flag)))]


def open_search(args: argparse.Namespace) -> Search:
    """A new search, or the one named by --resume / an existing --search-id (whose definition, when the command line
    gives one, must be the same)."""
    rest = [flag for flag, value in vars(args).items() if value not in (None, False, [])
            and flag not in ("resume", "command")]
    if args.resume and rest and args.config is None:
        raise ConfigError(f"--resume continues the search in '{args.resume}' as it was defined; give it alone, "
                          f"or after the search's whole original command (-c ... included).")
    if args.search_id is not None:
        folder_name(args.search_id, "--search-id")
    definition, name = plan(args) if rest or not args.resume else (None, None)
    folder = Path(args.resume) if args.resume else None
    if folder is None and args.search_id:
        candidate = Path(definition["save_dir"]) / "models" / name / args.search_id
        folder = candidate if (candidate / STATE).is_file() else None
    if folder is None:
        return Search.create(definition, name, args.search_id, args.command)
    return Search.reopen(folder, definition)


def tune(args: argparse.Namespace) -> Search:
    search = open_search(args)
    state = search.state
    left = sum(t["status"] not in FINISHED for t in state["trials"])
    total = state["n"] or len(state["trials"])
    log.info("Search %s (%s): %d trials, %d to run. Search folder: %s", search.paths.run_id, state["mode"], total,
             left + total - len(state["trials"]), search.paths.models)
    try:
        run_optuna(search) if state["mode"] == "optuna" else run_list(search)
    except KeyboardInterrupt:
        search.save()
        log.warning("Stopped. The search is saved; continue it with:\n  python tune.py --resume %s",
                    search.paths.models)
        raise
    finally:
        search.close()
    search.print_results()
    return search


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    if args.help_config is not None:
        return report_errors(lambda: print(describe(args.help_config or None)), log)
    if args.lr_find:
        return report_errors(lambda: lr_find(args), log)
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops a search like Ctrl+C
    try:
        search = tune(args)
    except TemplateError as e:
        log.error("%s", e)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        release_runs()
    return 0 if any(t["status"] == "done" for t in search.state["trials"]) else 1


if __name__ == "__main__":
    gc.freeze()  # as train.py does: the imported modules stay out of every garbage collection
    sys.exit(main())
