"""Shared helpers: run train.py / test.py on the bundled digits with small, fast settings."""
from __future__ import annotations

import gc
import os
import signal
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


def torchrun(capfd: pytest.CaptureFixture, *args: str, script: str = "train.py", cwd: Path = REPO,
             timeout: int = 300) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node=2 <script> <args>`, with torchrun's own launcher running in this process
    (one torch import less than its command line): it starts the two worker processes as the command does, and stops
    them after `timeout` seconds (with SIGALRM: an alarm set before is cancelled). What the launcher changes here
    (signal handlers, OMP_NUM_THREADS, the working folder) is put back afterwards. The workers' output is read back
    through `capfd`, after what it held before the call is dropped."""
    from torch.distributed import run as launcher
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    def too_long(signum, frame):
        raise TimeoutError(f"torchrun {script} ran over {timeout} s")

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGALRM)
    handlers, environ, folder = {s: signal.getsignal(s) for s in handled}, dict(os.environ), os.getcwd()
    capfd.readouterr()
    signal.signal(signal.SIGALRM, too_long)
    signal.alarm(timeout)
    try:
        os.chdir(cwd)
        launcher.main(["--standalone", "--nproc_per_node=2", str(cwd / script), *args])
        code = 0
    except ChildFailedError:
        code = 1
    finally:
        signal.alarm(0)
        os.chdir(folder)
        os.environ.clear()
        os.environ.update(environ)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(["torchrun", script, *args], code, out, err)


def only_run(save_dir: Path) -> Path:
    """The single run folder (checkpoints) under save_dir."""
    runs = [p for p in (save_dir / "models").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture
def save_dir(tmp_path: Path) -> Path:
    return tmp_path / "saved"
