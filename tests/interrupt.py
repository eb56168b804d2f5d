"""Run train.py and interrupt it at a chosen point, the way a cluster or a user would.

    python tests/interrupt.py --at step:7 --send KILL [--group] -- <train.py arguments>

Points: `step:N` after optimizer step N, `epoch-start:E` before epoch E's first batch, `save:N` inside the
N-th checkpoint file write (after the temporary file is written, before it is renamed), `validation:E` at
the start of epoch E's validation, `fail-rank1:N` a DataError raised by rank 1 alone after step N (DDP).
With `--group` the signal goes to the whole process group (DataLoader workers included), as a terminal's
`kill`, a job scheduler or Kubernetes send it; start the script in a session of its own.

A stop signal (TERM, INT, USR1) sent to the process itself can also be tested in the test process: `interrupting`
installs the same points there and takes them away afterwards.
"""
import argparse
import contextlib
import gc
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train  # noqa: E402
from trainer.trainer import Trainer  # noqa: E402


@contextlib.contextmanager
def interrupting(at: str, send: str = "KILL", group: bool = False) -> Iterator[None]:
    """While active, the signal `send` goes to this process (its process group with `group`: only in a process
    started in a session of its own, never in the test process) at the point `at`."""
    where, number = at.split(":")
    number = int(number)
    signum = getattr(signal, f"SIG{send}")

    def fire():
        if group:
            os.killpg(os.getpgid(0), signum)
        else:
            os.kill(os.getpid(), signum)

    if where == "step":
        owner, name, original = Trainer, "count_step", Trainer.count_step

        def patched(self):
            original(self)
            if self.global_step == number:
                fire()
    elif where == "epoch-start":
        owner, name, original = Trainer, "train_epoch", Trainer.train_epoch

        def patched(self):
            if self.epoch == number and self.batch_idx == 0:
                fire()
            return original(self)
    elif where == "save":
        owner, name, original, calls = os, "replace", os.replace, {"n": 0}

        def patched(src, dst):
            calls["n"] += str(dst).endswith(".pth")  # checkpoint files only, not history.jsonl
            if calls["n"] == number and str(dst).endswith(".pth"):
                fire()
            return original(src, dst)
    elif where == "fail-rank1":
        from utils.errors import DataError

        owner, name, original = Trainer, "count_step", Trainer.count_step

        def patched(self):
            original(self)
            if self.global_step == number and self.dist.rank == 1:
                raise DataError("Cannot read image 'images/0042.png': simulated failure on rank 1.")
    elif where == "validation":
        owner, name, original = Trainer, "validate", Trainer.validate

        def patched(self):
            if self.epoch == number:
                fire()
            return original(self)
    else:
        raise ValueError(f"unknown point {at!r}")
    setattr(owner, name, patched)
    try:
        yield
    finally:
        setattr(owner, name, original)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--at", required=True)
    parser.add_argument("--send", default="KILL", choices=("KILL", "TERM", "INT", "USR1"))
    parser.add_argument("--group", action="store_true", help="signal the process group, not this process only")
    parser.add_argument("train_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    with interrupting(args.at, args.send, args.group):
        return train.main(train_args)


if __name__ == "__main__":
    gc.freeze()  # as train.py does: the imported modules stay out of every garbage collection
    sys.exit(main())
