"""Checkpoint files: atomic writes, safe loading, finding the newest intact one, and which to keep.

A checkpoint holds only tensors and plain Python values, so it loads with `torch.load(weights_only=True)`,
which refuses pickled code. Every file is written to a temporary name in the same folder, flushed to disk and
renamed over the final name, so a kill or a full disk in the middle of a save never leaves a broken
`checkpoint-latest.pth`: the previous one stays as it was.
"""
from __future__ import annotations

import io
import logging
import pickle
import reprlib
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from utils.config import check_test_split
from utils.config_file import read_config_file
from utils.errors import CheckpointError, TrainingError, reason
from utils.files import atomic_write

log = logging.getLogger(__name__)

FORMAT = 1
LATEST = "checkpoint-latest.pth"
BEST = "model_best.pth"


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


_WRITTEN_BY_TRAIN = ("Checkpoints are written by train.py as checkpoint-*.pth and model_best.pth in the run folder; "
                     "pass one of them, or the run folder.")

# What train.py writes into every checkpoint (Trainer.state_dict), checked before anything reads it.
_LAYOUT: dict[str, Any] = {
    "format": int, "config": dict, "model": dict, "optimizer": dict, "lr_scheduler": (dict, type(None)),
    "scaler": (dict, type(None)), "loop": {"epoch": int, "batch_idx": int, "global_step": int},
    "monitor": {"best": (int, float), "not_improved": int, "kept": list}, "data": {"seed": int},
    "world_size": int, "per_rank": list,
}
_KINDS = {int: "a whole number", dict: "a mapping", list: "a list", (int, float): "a number",
          (dict, type(None)): "a mapping or null"}


def unreadable_value(value: Any) -> str | None:
    """What in `value` `torch.load(weights_only=True)` would refuse (a NumPy number, an object of a class of its
    own), and where: checkpoints hold tensors and plain Python values only. None when it reads back."""
    buffer = io.BytesIO()
    try:
        torch.save(value, buffer)
        buffer.seek(0)
        torch.load(buffer, weights_only=True)
        return None
    except Exception as e:
        return _first_object(value, "") or f"something it cannot read back ({reason(e)})"


def _first_object(value: Any, path: str) -> str | None:
    """The first value below `value` that is no tensor, plain Python value or container of them, with its path."""
    if isinstance(value, (torch.Tensor, torch.dtype, torch.device)) or type(value) in (
            int, float, bool, complex, str, bytes, bytearray, type(None)):
        return None
    if isinstance(value, (list, tuple, set)):
        return next((p for i, v in enumerate(value) if (p := _first_object(v, f"{path}[{i}]"))), None)
    if isinstance(value, dict):
        return next((p for k, v in value.items() if (p := _first_object(v, f"{path}[{k!r}]"))), None)
    return f"a {type(value).__module__}.{type(value).__qualname__} at {path or 'its top'}"


def _layout_problem(state: dict[str, Any], layout: dict[str, Any], where: str = "") -> str | None:
    """The first key of `layout` that `state` lacks or holds with another type, described; None if it fits."""
    for key, kind in layout.items():
        if key not in state:
            return f"'{where}{key}' is missing"
        value = state[key]
        if isinstance(kind, dict):
            problem = (_layout_problem(value, kind, f"{where}{key}.") if isinstance(value, dict)
                       else f"'{where}{key}' is {reprlib.repr(value)}, not a mapping")
            if problem:
                return problem
        elif not isinstance(value, kind) or isinstance(value, bool):
            return f"'{where}{key}' is {reprlib.repr(value)}, not {_KINDS[kind]}"
    return None


def _not_a_checkpoint(path: Path) -> str | None:
    """What `path` is when it cannot be a file torch.save wrote, found from its first bytes and, for a zip archive,
    its contents; None when it may be one. Asked once torch.load has failed, whose errors for such files are
    misleading (and advise an unsafe load)."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        return "is empty (0 bytes)"
    if head.startswith(b"PK\x03\x04"):
        try:
            names = {name.split("/", 1)[-1] for name in zipfile.ZipFile(path).namelist()}
        except zipfile.BadZipFile:
            return None  # a cut-off archive: torch.load reports it as truncated
        if "constants.pkl" in names or any(name.startswith("code/") for name in names):
            return "is a TorchScript model (export.py --format torchscript writes these; load it with torch.jit.load)"
        if "archive_format" in names:
            return "is a torch.export program (export.py --format exported writes these; load it with torch.export.load)"
        return None if "data.pkl" in names else "is a zip archive that torch.save did not write"
    if head.startswith(b"\x80"):
        return None  # a pickle: torch.save's legacy format
    for magic, kind in ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image")):
        if head.startswith(magic):
            return f"is {kind}"
    if path.suffix == ".onnx":
        return "is an ONNX model (export.py --format onnx writes these; run it with onnxruntime)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if text.strip() and "\0" not in text:
        return f"is a text file (it begins {text.strip().splitlines()[0][:60]!r})"
    return "is neither a zip archive nor a pickle, the formats torch.save writes"


def _refuse(path: Path, e: Exception) -> None:
    """Why torch.load could not read `path`, as a CheckpointError: what the file is when it is not a file torch.save
    wrote; a checkpoint carrying pickled code; or a truncated or corrupt one."""
    what = _not_a_checkpoint(path)
    if what is not None:
        raise CheckpointError(f"'{path}' {what}, not a training checkpoint. {_WRITTEN_BY_TRAIN}") from None
    if isinstance(e, pickle.UnpicklingError):
        refused = next((line.split("error:", 1)[-1].strip() for line in str(e).splitlines() if "Unpickler" in line),
                       "unpickling error")
        raise CheckpointError(
            f"Refused to load '{path}': it contains pickled Python objects, not only tensors and plain values "
                              f"({refused}). Loading such a file could run code it carries, so this template reads checkpoints with "
                              "torch.load(weights_only=True) only. train.py never writes such objects: the file was written by other "
                              f"code. {_WRITTEN_BY_TRAIN}") from None
    raise CheckpointError(f"Checkpoint '{path}' is truncated or corrupt ({reason(e)}). It was probably cut off "
                          "while being written or copied; use another checkpoint of the run (e.g. pass the run "
                          "folder to --resume to pick the newest intact one).") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint on the CPU with `weights_only=True`; every failure is a CheckpointError naming the file and
    saying what it is, and a checkpoint whose layout is not the one train.py writes is refused before it is used."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint '{path}' not found. Pass a .pth file or a run folder to --resume.")
    try:
        with warnings.catch_warnings():  # a TorchScript file: _refuse says what it is, and how to load it
            warnings.filterwarnings("ignore", "'torch.load' received a zip file that looks like a TorchScript")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        _refuse(path, e)
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        keys = ", ".join(map(str, list(state)[:6])) if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"'{path}' is not a checkpoint of this template (it holds: {keys}). {_WRITTEN_BY_TRAIN}")
    problem = _layout_problem(state, _LAYOUT)
    if problem is not None:
        raise CheckpointError(f"'{path}' is not a complete checkpoint of this template: {problem}. It was edited or "
                              "written by other code; use another checkpoint of the run (pass the run folder to "
                              "--resume to pick the newest intact one).")
    if state["format"] > FORMAT:
        raise CheckpointError(f"'{path}' was written by a newer version of this template (format "
                              f"{state['format']}, this code reads {FORMAT}). Update the code.")
    return state


def find_checkpoint(path: str | Path, first: str = LATEST) -> tuple[Path, dict[str, Any]]:
    """A checkpoint file as given, or for a run folder its newest intact checkpoint: `first` (checkpoint-latest.pth
    to resume; test.py asks for model_best.pth) if it can be read, else the others, checkpoint-latest.pth first, then
    newest first. Each one skipped is a warning, and so is the one used instead of `first`."""
    path = Path(path)
    if not path.is_dir():
        return path, load_checkpoint(path)
    candidates = sorted(path.glob("*.pth"), key=lambda p: (p.name != first, p.name != LATEST, -p.stat().st_mtime))
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
            log.warning("Using '%s', the newest intact checkpoint in '%s'.", candidate.name, path)
        return candidate, state
    raise CheckpointError(f"None of the {len(candidates)} checkpoint(s) in '{path}' could be read (see the warnings "
                          "above). Start a new run.")


def find_resume(path: str | Path) -> tuple[Path | None, dict[str, Any] | None, dict[str, Any]]:
    """What `--resume` names: (checkpoint file, checkpoint, its config); or, for a run folder that was stopped
    before its first checkpoint (killed, a full disk, bad data in the first epoch), (None, None, the config.yaml
    the run saved), so that the run starts again from it in the same folder."""
    path = Path(path)
    config_file = path / "config.yaml"
    if path.is_dir() and not any(path.glob("*.pth")) and config_file.is_file():
        return None, None, read_config_file(config_file)
    checkpoint_path, checkpoint = find_checkpoint(path)
    return checkpoint_path, checkpoint, checkpoint["config"]


def best_in_file(path: Path) -> tuple[float | None, int]:
    """The monitored value a best-model file was saved with and the epochs it had finished (its history's length);
    (None, 0) when it is missing or unreadable."""
    if not path.is_file():
        return None, 0
    try:
        checkpoint = load_checkpoint(path)
    except CheckpointError:
        return None, 0
    return checkpoint["monitor"]["best"], len(checkpoint.get("history") or [])


def keep_top_k(kept: list[list], value: float, name: str, k: int, mode: str) -> tuple[list[list], bool, list[str]]:
    """Decide whether the epoch checkpoint `name` (monitored `value`) joins the `k` kept ones.

    `kept` is a list of [value, file name]; `mode` is 'min' or 'max' (for 'max' with the epoch number as
    value, the newest are kept); of equal values, the newer file ranks first. Returns the new list, whether to
    write `name`, and the files to delete once it is written. k = -1 keeps every checkpoint, 0 none.
    """
    if k == 0:
        return kept, False, []
    entries = [[value, name], *kept]  # the sort is stable: ahead of the older files of its value
    entries.sort(key=lambda e: e[0], reverse=(mode == "max"))
    if k < 0:
        return entries, True, []
    keep, drop = entries[:k], entries[k:]
    write = any(e[1] == name for e in keep)
    return keep, write, [e[1] for e in drop if e[1] != name]


def check_resume_config(saved: dict[str, Any], config: dict[str, Any], source: str) -> None:
    """Refuse to resume a checkpoint with a config that builds a different model, optimizer or scheduler.

    Changing `epochs`, the data path or logging options is fine; the architecture, the optimizer and the scheduler
    are not: the saved tensors would not fit them, and the saved optimizer and scheduler states (learning rate
    included) would silently replace their new arguments. Nor is the monitored value: the best so far and the
    kept epoch checkpoints were chosen by the old one.
    """
    for key, part in (("arch", "type"), ("arch", "args"), ("optimizer", "type"), ("optimizer", "args"),
                      ("optimizer", "param_groups"), ("optimizer", "no_decay"), ("lr_scheduler", "type"),
                      ("lr_scheduler", "args"), ("lr_scheduler", "interval"), ("lr_scheduler", "warmup"),
                      ("trainer", "monitor")):
        # Unset, empty and false are the same setting (checkpoints older than a key do not have it).
        before, now = (saved[key] or {}).get(part) or None, (config[key] or {}).get(part) or None
        if before != now:
            raise CheckpointError(f"{source} sets {key}.{part} to {now!r}, but the checkpoint was trained with "
                                  f"{before!r}. Resume with the checkpoint's own settings (leave out -c and that "
                                  f"override), change {key}.{part} back, or start a new run with -c.")
    check_test_split(saved, config, source)
    before, now = saved.get("optimizers"), config.get("optimizers")
    if before != now:
        raise CheckpointError(f"{source} sets optimizers to {now!r}, but the checkpoint was trained with {before!r}. "
                              "Resume with the checkpoint's own settings (leave out -c and that override), or start "
                              "a new run with -c.")


def class_names(checkpoint: dict[str, Any]) -> list[str] | None:
    """The names of the classes the checkpoint's model predicts, label i's at index i (the training loader's
    `classes`: class folders, label names in labels.csv, a torchvision dataset's), or None when its labels were
    bare numbers (or the checkpoint predates class names)."""
    classes = (checkpoint.get("data_loader") or {}).get("classes")
    return [str(name) for name in classes] if classes else None


def inputs_record(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """How the checkpoint's model takes its inputs (data_loader/base.py `inputs`: image_mode, eval_transform, one
    prepared sample's shape and dtype), or {} when it records none (an older checkpoint, a loader of its own)."""
    return (checkpoint.get("data_loader") or {}).get("inputs") or {}
