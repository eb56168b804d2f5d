"""Shared helpers: run train.py / test.py on the bundled digits with small, fast settings."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A small network and light transforms keep a digits epoch well under a second on two CPU cores.
FAST = [
    "arch.args.width=8",
    "trainer.tensorboard=false",
    "trainer.epochs=2",
    "data_loader.args.transform=[{type: ToDtype, args: {dtype: float32, scale: true}}]",
    "data_loader.args.eval_transform=[{type: ToDtype, args: {dtype: float32, scale: true}}]",
]


def fast_args(save_dir: Path, *extra: str) -> list[str]:
    return ["-c", str(REPO / "configs" / "config.yaml"), f"trainer.save_dir={save_dir}", *FAST, *extra]


def run_script(script: str, *args: str, cwd: Path = REPO, timeout: int = 300, env: dict[str, str] | None = None,
               script_dir: Path = REPO) -> subprocess.CompletedProcess:
    """Run one of the entry points (of this repository, or of a project copied from it) as a user would, in a
    fresh interpreter; `env` adds environment variables."""
    return subprocess.run([sys.executable, str(script_dir / script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def only_run(save_dir: Path) -> Path:
    """The single run folder (checkpoints) under save_dir."""
    runs = [p for p in (save_dir / "models").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture
def save_dir(tmp_path: Path) -> Path:
    return tmp_path / "saved"
