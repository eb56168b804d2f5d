"""Run folders: `<save_dir>/models/<name>/<run_id>/` for checkpoints and the config,
`<save_dir>/log/<name>/<run_id>/` for the log file and TensorBoard events.

Every folder the template writes is one of these: `name` and the run id are folder names that cannot lead out of
`save_dir` ('..', an absolute path), and a checkpoint outside this layout is continued in its own folder.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from utils.errors import ConfigError
from utils.files import open_regular, refuse_link

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; a second writer is not detected there
    fcntl = None

log = logging.getLogger(__name__)

_locks: list[IO] = []  # lock files this process holds open (and so locked) while it trains


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
    if not all(isinstance(p, str) and p.strip() and p not in (".", "..") and not set(p) & {"/", "\\"}
               and p.isprintable() for p in parts):
        example = "digits_cnn, or several joined by '/'," if nested else "run1"
        quote = " Quote a number with a decimal point to keep it as written ('1.10')." if isinstance(value, float) \
            else ""
        raise ConfigError(f"{what} must be a folder name such as {example} without '..', '\\', a leading '/' or control "
                          f"characters, so that the run stays under trainer.save_dir; got {value!r}.{quote}")
    return text


def shown(path: Path) -> Path:
    """`path` relative to the working directory when it lies under it, else absolute: a resumed run prints its
    folders as a fresh run with the default `save_dir: saved/` does."""
    path = Path(os.path.abspath(path))
    return path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path


def check_output_file(path: Path, chosen: bool = True) -> None:
    """Refuse an `--output` file that is a folder or whose folder does not exist (predict.py, export.py); and a
    default name (not `chosen` on the command line) that is a symbolic link or not a regular file, as it lies beside a
    checkpoint in a run folder that may come from elsewhere."""
    if path.is_dir() or not path.parent.is_dir():
        raise ConfigError(f"--output '{path}' must be a file in an existing folder; "
                          f"{'it is a folder' if path.is_dir() else 'its folder does not exist'}.")
    if not chosen:
        refuse_link(path, "remove it, or give --output")


def check_not_an_input(output: Path, inputs: Iterable[Path]) -> None:
    """Refuse an output file that is one of the inputs (the checkpoint, an image, a list of them): writing it would
    destroy what it is made from."""
    if not output.is_file():
        return
    for path in inputs:
        with contextlib.suppress(OSError):
            if os.path.samefile(output, path):
                raise ConfigError(f"--output '{output}' is the input '{path}', which writing the output would "
                                  "overwrite. Give another output file.")


def _make_writable(folder: Path, fix: str) -> None:
    """Create `folder` (and its parents) and check that a file can be written in it, before a run starts."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise ConfigError(f"Cannot write in '{folder}' ({e.strerror or e}). {fix}") from None


def new_run(save_dir: str | Path, name: str, run_id: str | None = None) -> RunPaths:
    """Create the folders of a new run (`new_folder`), and its log folder of the same name."""
    base = Path(save_dir)
    fix = f"Choose a writable trainer.save_dir (now '{save_dir}') or fix the folder's permissions."
    models = new_folder(base / "models" / name, fix, run_id)
    log_dir = base / "log" / name / models.name
    _make_writable(log_dir, fix)
    return RunPaths(models, log_dir)


def new_folder(parent: Path, fix: str, run_id: str | None = None) -> Path:
    """Create `parent/run_id`, which must be new or empty, checking that it can be written (`fix` says what to do
    if not). The default id is a timestamp; folders made in the same second get `-2`, `-3`, ... (each is created
    atomically, so two processes never share one)."""
    if run_id is not None:
        folder = parent / folder_name(run_id, "--run-id")
        if folder.exists() and any(folder.iterdir()):
            raise ConfigError(f"The run folder '{folder}' already exists and is not empty. Continue it with "
                              f"--resume {folder}, or choose another --run-id.")
        _make_writable(folder, fix)
        return folder
    stamp = time.strftime("%Y%m%d-%H%M%S")
    _make_writable(parent, fix)
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
    name the run was made with (it may hold '/'). A checkpoint outside `<save_dir>/models/<name>/<run_id>/`
    (copied or downloaded elsewhere) is continued in its own folder, which then holds the log too."""
    models = Path(os.path.abspath(checkpoint)).parent
    parts = Path(folder_name(name, f"The experiment name saved in '{checkpoint}'", nested=True)).parts
    if models.parts[-len(parts) - 2:-1] == ("models", *parts) and len(models.parts) > len(parts) + 2:
        save_dir = models.parents[len(parts) + 1]
        log_dir = save_dir / "log" / name / models.name
        for depth in range(1, len(parts) + 3):  # <save_dir>/log, .../<name parts>, .../<run_id>: not links
            refuse_link(Path(*log_dir.parts[:len(save_dir.parts) + depth]), "remove it, or copy the run folder (its "
                        "checkpoints) elsewhere and resume the copy", folder=True)
    else:
        log_dir = models
        log.info("'%s' is not in a <save_dir>/models/%s/<run_id> folder: the run goes on in '%s', log included.",
                 shown(checkpoint), name, shown(models))
    fix = ("A resumed run writes its checkpoints and log there: fix the folder's permissions, or copy the run "
           "folder somewhere writable and resume the copy.")
    for folder in (models, log_dir):
        _make_writable(folder, fix)
    return RunPaths(shown(models), shown(log_dir))


class InUse(ConfigError):
    """Another process holds the folder's lock: what it wrote there is its own, and stays."""


def lock_run(models: Path, what: str = "run folder", holder: str = "training process") -> None:
    """Hold an exclusive lock on a run folder while this process writes there, released when it ends (the system
    releases it even after kill -9): a second process on the same run would delete the first one's temporary
    files, mix their logs, and the last writer's checkpoints would win. A POSIX record lock (`lockf`), which
    belongs to this process alone: DataLoader workers forked from it do not hold it after it ends. `what` and
    `holder` name the folder and who works in it, for the message (tune.py locks its search folders too)."""
    if fcntl is None:
        return

    def unwritable(e: OSError) -> ConfigError:
        return ConfigError(f"Cannot write the lock file in '{models}' ({e.strerror or e}). Free disk space or fix the "
                           "folder's permissions, then start again.")

    try:
        handle = open_regular(models / ".lock", "a+")
    except OSError as e:
        raise unwritable(e) from None
    try:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder_pid = handle.read().strip()
        handle.close()
        raise InUse(f"The {what} '{models}' is in use by another {holder}"
                    f"{f' (pid {holder_pid})' if holder_pid.isdigit() else ''}. Let it finish or stop it first; "
                    "to work from the same checkpoint at the same time, copy the folder and use the copy."
                          ) from None
    try:
        os.ftruncate(handle.fileno(), 0)
        os.write(handle.fileno(), f"{os.getpid()}\n".encode())
    except OSError as e:
        handle.close()
        raise unwritable(e) from None
    _locks.append(handle)


def release_runs() -> None:
    """Release the locks of `lock_run` (at the end of train.py's main)."""
    while _locks:
        _locks.pop().close()


def remove_run(run: RunPaths) -> None:
    """Delete a new run's folders, when it stopped on bad input before anything worth keeping was saved."""
    for folder in (run.models, run.log):
        shutil.rmtree(folder, ignore_errors=True)
