"""Checkpoint files: atomic writes, safe loading, finding the newest intact one, and which to keep.

A checkpoint holds only tensors and plain Python values, so it loads with `torch.load(weights_only=True)`,
which refuses pickled code. Every file is written to a temporary name in the same folder, flushed to disk and
renamed over the final name, so a kill or a full disk in the middle of a save never leaves a broken
`checkpoint-latest.pth`: the previous one stays as it was.
"""
from __future__ import annotations

import io
import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from utils.errors import CheckpointError, TrainingError, reason

log = logging.getLogger(__name__)

FORMAT = 1
LATEST = "checkpoint-latest.pth"
BEST = "model_best.pth"
_TEMP_MARK = ".tmp-"


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that `path` always holds either the old or the complete new content."""
    temp = path.with_name(f".{path.name}{_TEMP_MARK}{os.getpid()}")
    try:
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def save_checkpoint(state: dict[str, Any], paths: list[Path]) -> None:
    """Serialise `state` once and write it atomically to each of `paths`, in order."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    for path in paths:
        try:
            atomic_write(path, data)
        except OSError as e:
            raise TrainingError(f"Could not write the checkpoint '{path}': {e.strerror or e}. Training stopped; the "
                                f"checkpoints saved before are intact. Free disk space (or fix the folder's "
                                f"permissions) and continue with: python train.py --resume {path.parent}") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint on the CPU with `weights_only=True`; every failure is a CheckpointError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint '{path}' not found. Pass a .pth file or a run folder to --resume.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = next((line.split("error:", 1)[-1].strip() for line in str(e).splitlines() if "Unpickler" in line),
                      "unpickling error")
        raise CheckpointError(
            f"Refused to load '{path}': it contains pickled Python objects, not only tensors and plain values "
            f"({refused}). Loading such a file could run code it "
            "carries, so this template only reads checkpoints with torch.load(weights_only=True). If the file comes "
            "from a source you trust, load it once with weights_only=False in a separate script and re-save its "
            "state_dict.") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CheckpointError(f"Checkpoint '{path}' is truncated or corrupt ({reason(e)}). It was probably cut off "
                              "while being written or copied; use another checkpoint of the run (e.g. pass the run "
                              "folder to --resume to pick the newest intact one).") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        keys = ", ".join(map(str, list(state)[:6])) if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"'{path}' is not a checkpoint of this template (it holds: {keys}). Checkpoints are "
                              "written by train.py as checkpoint-*.pth and model_best.pth in the run folder.")
    if state.get("format", FORMAT) > FORMAT:
        raise CheckpointError(f"'{path}' was written by a newer version of this template (format "
                              f"{state['format']}, this code reads {FORMAT}). Update the code.")
    return state


def find_checkpoint(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """A checkpoint file as given, or for a run folder the newest intact checkpoint in it (latest first)."""
    path = Path(path)
    if not path.is_dir():
        return path, load_checkpoint(path)
    candidates = sorted(path.glob("*.pth"), key=lambda p: (p.name != LATEST, -p.stat().st_mtime))
    if not candidates:
        raise CheckpointError(f"No checkpoint (*.pth) in the run folder '{path}'. Pass a folder under "
                              "saved/models/<name>/ or a .pth file to --resume.")
    for candidate in candidates:
        try:
            state = load_checkpoint(candidate)
        except CheckpointError as e:
            log.warning("%s Trying an older checkpoint of the run.", e)
            continue
        if candidate != candidates[0]:
            log.warning("Resuming from '%s', the newest intact checkpoint in '%s'.", candidate.name, path)
        return candidate, state
    raise CheckpointError(f"None of the {len(candidates)} checkpoint(s) in '{path}' could be read (see the warnings "
                          "above). Start a new run.")


def remove_temp_files(folder: Path) -> None:
    """Delete half-written temporary files left by a save that was killed."""
    for temp in folder.glob(f".*{_TEMP_MARK}*"):
        temp.unlink(missing_ok=True)


def keep_top_k(kept: list[list], value: float, name: str, k: int, mode: str) -> tuple[list[list], bool, list[str]]:
    """Decide whether the epoch checkpoint `name` (monitored `value`) joins the `k` kept ones.

    `kept` is a list of [value, file name]; `mode` is 'min' or 'max' (for 'max' with the epoch number as
    value, the newest are kept). Returns the new list, whether to write `name`, and the files to delete
    once it is written. k = -1 keeps every checkpoint, 0 none.
    """
    if k == 0:
        return kept, False, []
    entries = kept + [[value, name]]
    entries.sort(key=lambda e: e[0], reverse=(mode == "max"))
    if k < 0:
        return entries, True, []
    keep, drop = entries[:k], entries[k:]
    write = any(e[1] == name for e in keep)
    return keep, write, [e[1] for e in drop if e[1] != name]


def check_resume_config(saved: dict[str, Any], config: dict[str, Any], source: str) -> None:
    """Refuse to resume a checkpoint with a config that builds a different model or optimizer.

    Changing `epochs`, the data path or logging options is fine; the architecture, the optimizer type and the
    scheduler type are not, because the saved tensors and states would not fit them.
    """
    for key, part in (("arch", "type"), ("arch", "args"), ("optimizer", "type"), ("optimizer", "param_groups"),
                      ("optimizer", "no_decay"), ("lr_scheduler", "type"), ("lr_scheduler", "warmup")):
        # Unset, empty and false are the same setting (checkpoints older than a key do not have it).
        before, now = (saved[key] or {}).get(part) or None, (config[key] or {}).get(part) or None
        if before != now:
            raise CheckpointError(f"{source} sets {key}.{part} to {now!r}, but the checkpoint was trained with "
                                  f"{before!r}. Resume with the checkpoint's own settings (leave out -c and that "
                                  f"override), change {key}.{part} back, or start a new run with -c.")
