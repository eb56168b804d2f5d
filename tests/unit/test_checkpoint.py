import errno
import math
import os
import pathlib
import re

import pytest
import torch

from trainer.checkpoint import find_checkpoint, keep_top_k, load_checkpoint, save_checkpoint
from trainer.monitor import Monitor
from utils import files
from utils.errors import CheckpointError, TrainingError
from utils.files import atomic_write

from helpers import REPO


def state(value: float) -> dict:
    """A checkpoint with every part train.py writes, small."""
    return {"format": 1, "config": {"name": "x"}, "model": {"w": torch.full((3,), value)}, "optimizer": {},
            "lr_scheduler": None, "scaler": None, "loop": {"epoch": 1, "batch_idx": 0, "global_step": 0},
            "monitor": {"best": 0.5, "not_improved": 0, "kept": []}, "data": {"seed": 0}, "world_size": 1,
            "per_rank": []}


def test_round_trip_with_weights_only(tmp_path):
    path = tmp_path / "a.pth"
    save_checkpoint(state(1.0), [path])
    loaded = torch.load(path, weights_only=True)
    assert torch.equal(loaded["model"]["w"], torch.ones(3))
    assert not list(tmp_path.glob(".*"))


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint-latest.pth"
    save_checkpoint(state(1.0), [path])

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", disk_full)
    with pytest.raises(TrainingError, match=r"Could not write the checkpoint .*No space left on device.*intact"):
        save_checkpoint(state(2.0), [path])
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_truncated_checkpoint_is_reported_by_name(tmp_path):
    path = tmp_path / "checkpoint-latest.pth"
    save_checkpoint(state(1.0), [path])
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"checkpoint-latest\.pth' is truncated or corrupt"):
        load_checkpoint(path)


def test_run_folder_falls_back_to_the_newest_intact_checkpoint(tmp_path, caplog):
    older, latest = tmp_path / "checkpoint-epoch1.pth", tmp_path / "checkpoint-latest.pth"
    save_checkpoint(state(1.0), [older])
    save_checkpoint(state(2.0), [latest])
    (tmp_path / ".checkpoint-latest.pth.tmp-123").write_bytes(b"half written")
    path, loaded = find_checkpoint(tmp_path)
    assert path == latest and torch.equal(loaded["model"]["w"], torch.full((3,), 2.0))
    assert (tmp_path / ".checkpoint-latest.pth.tmp-123").exists()  # a live run may be writing it
    latest.write_bytes(b"PK\x03\x04 garbage")
    path, loaded = find_checkpoint(tmp_path)
    assert path == older and torch.equal(loaded["model"]["w"], torch.ones(3))
    assert "newest intact checkpoint" in caplog.text and "checkpoint-latest.pth' is truncated" in caplog.text
    older.write_bytes(b"")
    with pytest.raises(CheckpointError, match="None of the 2 checkpoint"):
        find_checkpoint(tmp_path)


class Payload:
    """Unpickling this would create a marker file: the shape of a malicious checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_checkpoint_carrying_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"format": 1, "config": {}, "model": Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match=r"Refused to load .*evil\.pth.*pickled Python objects.*weights_only=True") \
            as refused:
        load_checkpoint(path)
    assert not marker.exists() and "weights_only=False" not in str(refused.value)


def test_files_that_are_not_checkpoints_are_named_for_what_they_are(tmp_path):
    linear, example = torch.nn.Linear(2, 2).eval(), torch.zeros(1, 2)
    with pytest.warns(FutureWarning):  # torch.jit is deprecated
        torch.jit.trace(linear, example).save(str(tmp_path / "model.ts.pt"))
    torch.export.save(torch.export.export(linear, (example,)), tmp_path / "model.pt2")
    (tmp_path / "config.yaml").write_text("name: digits_cnn\narch: {type: DigitsCNN}\n")
    (tmp_path / "train.log").write_text("2024-06-01 12:00:00 INFO train: Run r1 on cpu\n")
    (tmp_path / "model.onnx").write_bytes(b"\x08\x08\x12\x07pytorch\x1a\x032.6")
    (tmp_path / "digit.png").write_bytes((REPO / "data" / "digits" / "images" / "0000.png").read_bytes())
    (tmp_path / "random.pth").write_bytes(bytes(range(7, 256)) * 4)
    (tmp_path / "empty.pth").write_bytes(b"")
    expected = {
        "model.ts.pt": r"is a TorchScript model \(export\.py --format torchscript writes these; load it with torch\.jit",
        "model.pt2": r"is a torch\.export program \(export\.py --format exported writes these",
        "config.yaml": r"is a text file \(it begins 'name: digits_cnn'\)",
        "train.log": r"is a text file \(it begins '2024-06-01 12:00:00 INFO train: Run r1 on cpu'\)",
        "model.onnx": r"is an ONNX model",
        "digit.png": r"is a PNG image",
        "random.pth": r"is neither a zip archive nor a pickle, the formats torch\.save writes",
        "empty.pth": r"is empty \(0 bytes\)",
    }
    for name, what in expected.items():
        with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / name}' ") + what + ".*, not a training "
                                                  r"checkpoint\. Checkpoints are written by train\.py") as e:
            load_checkpoint(tmp_path / name)
        assert "weights_only=False" not in str(e.value) and "pickled" not in str(e.value), name


@pytest.mark.parametrize("change, problem", [
    (lambda s: s.pop("loop"), "'loop' is missing"),
    (lambda s: s.update(format="1"), "'format' is '1', not a whole number"),
    (lambda s: s["loop"].update(epoch=None), "'loop.epoch' is None, not a whole number"),
    (lambda s: s.update(monitor=[]), "'monitor' is [], not a mapping"),
    (lambda s: s.update(per_rank=None), "'per_rank' is None, not a list"),
])
def test_a_checkpoint_with_parts_missing_or_mistyped_is_refused(tmp_path, change, problem):
    checkpoint = state(1.0)
    change(checkpoint)
    torch.save(checkpoint, tmp_path / "edited.pth")
    with pytest.raises(CheckpointError, match=r"edited\.pth' is not a complete checkpoint of this template: "
                                              + re.escape(problem) + r"\. It was edited or written by other code"):
        load_checkpoint(tmp_path / "edited.pth")


def test_a_run_folder_can_prefer_model_best(tmp_path, caplog):
    save_checkpoint(state(1.0), [tmp_path / "checkpoint-latest.pth"])
    assert find_checkpoint(tmp_path, first="model_best.pth")[0].name == "checkpoint-latest.pth"  # none: no warning
    assert "Using" not in caplog.text
    save_checkpoint(state(2.0), [tmp_path / "model_best.pth"])
    path, loaded = find_checkpoint(tmp_path, first="model_best.pth")
    assert path.name == "model_best.pth" and torch.equal(loaded["model"]["w"], torch.full((3,), 2.0))


def test_foreign_files_are_not_taken_for_checkpoints(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"fc.weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a checkpoint of this template"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pth")


def test_atomic_write_replaces_whole_files(tmp_path):
    path = tmp_path / "f"
    atomic_write(path, b"old")
    atomic_write(path, b"new")
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["f"]


def test_keep_top_k():
    kept, write, evict = [], True, []
    for value, name in [(0.5, "e1"), (0.3, "e2"), (0.4, "e3"), (0.6, "e4"), (0.1, "e5")]:
        kept, write, evict = keep_top_k(kept, value, name, 2, "min")
        if name == "e3":
            assert write and evict == ["e1"]
        if name == "e4":
            assert not write and evict == []
    assert [e[1] for e in kept] == ["e5", "e2"] and evict == ["e3"]
    newest = []
    for epoch in range(1, 5):
        newest, write, evict = keep_top_k(newest, float(epoch), f"e{epoch}", 2, "max")
    assert [e[1] for e in newest] == ["e4", "e3"] and evict == ["e2"]
    assert keep_top_k([], 1.0, "e1", 0, "min") == ([], False, [])
    assert keep_top_k([[1.0, "e1"]], 2.0, "e2", -1, "min")[1:] == (True, [])


def test_a_tie_with_the_best_keeps_the_later_epoch_but_does_not_put_off_early_stopping():
    monitor = Monitor("max val_accuracy", "config")
    assert [monitor.update({"val_accuracy": v}) for v in (0.5, 0.5, 0.4, 0.5)] == [True, True, False, True]
    assert monitor.best == 0.5 and monitor.not_improved == 3  # ties are not improvements: a plateau still stops
    assert monitor.early_stopped(3)
    nan = Monitor("min val_loss", "config")
    assert not nan.update({"val_loss": math.inf}) and not nan.update({"val_loss": math.nan})
    # Of the epoch checkpoints, the later of two equal ones is kept.
    kept, write, evict = keep_top_k([[0.5, "e1"]], 0.5, "e2", 1, "max")
    assert write and evict == ["e1"] and kept == [[0.5, "e2"]]
