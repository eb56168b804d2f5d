"""Shared helpers: run train.py / test.py on the bundled digits with small, fast settings."""
from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest

import train  # noqa: F401  (torch, torchvision and the project, imported once for the whole session)

REPO = Path(__file__).resolve().parents[1]

# As the entry points do: the millions of objects these imports made stay out of every garbage collection, which
# would otherwise walk them again and again during the runs the tests make in this process.
gc.freeze()

TO_FLOAT = "{type: ToDtype, args: {dtype: float32, scale: true}}"
NORMALIZE = "{type: Normalize, args: {mean: [0.3], std: [0.4]}}"
# The ordinary (host-side, per-sample) loader on the bundled digits, with per-sample RandomAffine: the tests
# of the trainer run on it, so that they keep exercising the general data path (workers, per-sample seeds,
# bad samples) while the default example uses the device-resident loader (tests/test_speed_options.py).
ORDINARY_LOADER = (
    "data_loader={type: CsvImageDataLoader, args: {data_dir: data/digits, batch_size: 64, validation_split: 0.15, "
    f"num_classes: 10, cache: true, transform: [{{type: RandomAffine, args: {{degrees: 10, translate: [0.1, 0.1]}}}}, "
    f"{TO_FLOAT}, {NORMALIZE}], eval_transform: [{TO_FLOAT}, {NORMALIZE}]}}}}")

# A small network and light transforms keep a digits epoch well under a second on two CPU cores. The tests
# that read the monitored value expect val_accuracy (the default example monitors val_loss).
FAST = [
    "arch.args.width=8",
    "trainer.tensorboard=false",
    "trainer.epochs=2",
    "trainer.monitor=max val_accuracy",
    ORDINARY_LOADER,
    f"data_loader.args.transform=[{TO_FLOAT}]",
    f"data_loader.args.eval_transform=[{TO_FLOAT}]",
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
