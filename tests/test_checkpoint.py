import errno
import os
import pathlib

import pytest
import torch

from trainer import checkpoint
from trainer.checkpoint import atomic_write, find_checkpoint, keep_top_k, load_checkpoint, save_checkpoint
from utils.errors import CheckpointError, TrainingError


def state(value: float) -> dict:
    return {"format": 1, "config": {"name": "x"}, "model": {"w": torch.full((3,), value)},
            "loop": {"epoch": 1, "batch_idx": 0, "global_step": 0}}


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

    monkeypatch.setattr(checkpoint.os, "fsync", disk_full)
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
    with pytest.raises(CheckpointError, match=r"Refused to load .*evil\.pth.*pickled Python objects.*weights_only=True"):
        load_checkpoint(path)
    assert not marker.exists()


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
