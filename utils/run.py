"""Run folders: `<save_dir>/models/<name>/<run_id>/` for checkpoints and the config,
`<save_dir>/log/<name>/<run_id>/` for the log file and TensorBoard events."""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path

from utils.errors import ConfigError


@dataclass(frozen=True)
class RunPaths:
    models: Path
    log: Path

    @property
    def run_id(self) -> str:
        return self.models.name


def new_run(save_dir: str | Path, name: str, run_id: str | None = None) -> RunPaths:
    """Create the folders of a new run (`new_folder`), and its log folder of the same name."""
    base = Path(save_dir)
    models = new_folder(base / "models" / name, run_id)
    log = base / "log" / name / models.name
    log.mkdir(parents=True, exist_ok=True)
    return RunPaths(models, log)


def new_folder(parent: Path, run_id: str | None = None) -> Path:
    """Create `parent/run_id`, which must be new or empty. The default id is a timestamp; folders made in the
    same second get `-2`, `-3`, ... (each is created atomically, so two processes never share one)."""
    if run_id is not None:
        folder = parent / run_id
        if folder.exists() and any(folder.iterdir()):
            raise ConfigError(f"The run folder '{folder}' already exists and is not empty. Continue it with "
                              f"--resume {folder}, or choose another --run-id.")
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    stamp = time.strftime("%Y%m%d-%H%M%S")
    parent.mkdir(parents=True, exist_ok=True)
    for attempt in itertools.count(1):
        folder = parent / (stamp if attempt == 1 else f"{stamp}-{attempt}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue


def run_of_checkpoint(checkpoint: Path, name: str) -> RunPaths:
    """The run a checkpoint (or another file of the run's models folder) belongs to: a resumed run keeps writing
    there, so its log, TensorBoard steps and early-stop counter go on where they were. `name` is the experiment
    name the run was made with; it may hold '/' (tune.py's trials are `<name>_tune/<search_id>/trial-NNN`)."""
    models = checkpoint.resolve().parent
    models_root = models.parents[len(Path(name).parts)]  # <save_dir>/models
    log = models_root.parent / "log" / name / models.name
    log.mkdir(parents=True, exist_ok=True)
    return RunPaths(models, log)
