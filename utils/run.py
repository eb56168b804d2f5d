"""Run folders: `<save_dir>/models/<name>/<run_id>/` for checkpoints and the config,
`<save_dir>/log/<name>/<run_id>/` for the log file and TensorBoard events. `name` and the run id are folder
names that cannot lead out of `save_dir` ('..', an absolute path)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.errors import ConfigError


@dataclass(frozen=True)
class RunPaths:
    models: Path
    log: Path

    @property
    def run_id(self) -> str:
        return self.models.name


def folder_name(value: Any, what: str, nested: bool = False) -> str:
    """`value` as the name of a folder under save_dir (a whole number such as 2024 is read as text). Refused when it
    is not one plain folder name, since '..', '/' or an absolute path would write elsewhere; `nested` accepts
    several joined by '/' (tune.py's trials are runs of the experiment `<name>_tune/<search_id>`)."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    parts = text.split("/") if isinstance(text, str) and nested else [text]
    if not all(isinstance(p, str) and p.strip() and p not in (".", "..") and not set(p) & {"/", "\\", "\0"}
               for p in parts):
        example = "digits_cnn, or several joined by '/'," if nested else "run1"
        quote = " Quote a number with a decimal point to keep it as written ('1.10')." if isinstance(value, float) \
            else ""
        raise ConfigError(f"{what} must be a folder name such as {example} without '..', '\\' or a leading '/', so "
                          f"that the run stays under trainer.save_dir; got {value!r}.{quote}")
    return text


def new_run(save_dir: str | Path, name: str, run_id: str | None = None) -> RunPaths:
    """Create the folders of a new run. The default run id is a timestamp; runs started in the same second
    get `-2`, `-3`, ... (the folder is created atomically, so two processes never share one)."""
    base = Path(save_dir)
    if run_id is not None:
        models = base / "models" / name / folder_name(run_id, "--run-id")
        if models.exists() and any(models.iterdir()):
            raise ConfigError(f"The run folder '{models}' already exists and is not empty. Continue it with "
                              f"--resume {models}, or choose another --run-id.")
        models.mkdir(parents=True, exist_ok=True)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        (base / "models" / name).mkdir(parents=True, exist_ok=True)
        for attempt in range(1, 10_000):
            models = base / "models" / name / (stamp if attempt == 1 else f"{stamp}-{attempt}")
            try:
                models.mkdir()
                break
            except FileExistsError:
                continue
    log = base / "log" / name / models.name
    log.mkdir(parents=True, exist_ok=True)
    return RunPaths(models, log)


def run_of_checkpoint(checkpoint: Path, name: str) -> RunPaths:
    """The run a checkpoint (or another file of the run's models folder) belongs to: a resumed run keeps writing
    there, so its log, TensorBoard steps and early-stop counter go on where they were. `name` is the experiment
    name the run was made with; it may hold '/' (tune.py's trials are `<name>_tune/<search_id>/trial-NNN`)."""
    models = checkpoint.resolve().parent
    models_root = models.parents[len(Path(name).parts)]  # <save_dir>/models
    log = models_root.parent / "log" / name / models.name
    log.mkdir(parents=True, exist_ok=True)
    return RunPaths(models, log)
