"""Run train.py and interrupt it at a chosen point, the way a cluster or a user would.

    python tests/interrupt.py --at step:7 --send KILL [--group] -- <train.py arguments>

Points: `step:N` after optimizer step N, `epoch-start:E` before epoch E's first batch, `save:N` inside the
N-th checkpoint file write (after the temporary file is written, before it is renamed), `validation:E` at
the start of epoch E's validation, `fail-rank1:N` a DataError raised by rank 1 alone after step N (DDP).
With `--group` the signal goes to the whole process group (DataLoader workers included), as a terminal's
`kill`, a job scheduler or Kubernetes send it; start the script in a session of its own.
"""
import argparse
import gc
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train  # noqa: E402
from trainer import checkpoint  # noqa: E402
from trainer.trainer import Trainer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--at", required=True)
    parser.add_argument("--send", default="KILL", choices=("KILL", "TERM", "INT", "USR1"))
    parser.add_argument("--group", action="store_true", help="signal the process group, not this process only")
    parser.add_argument("train_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    where, number = args.at.split(":")
    number = int(number)
    signum = getattr(signal, f"SIG{args.send}")

    def fire():
        if args.group:
            os.killpg(os.getpgid(0), signum)
        else:
            os.kill(os.getpid(), signum)

    if where == "step":
        step = Trainer.optimizer_step

        def patched_step(self):
            step(self)
            if self.global_step == number:
                fire()

        Trainer.optimizer_step = patched_step
    elif where == "epoch-start":
        train_epoch = Trainer.train_epoch

        def patched_epoch(self):
            if self.epoch == number and self.batch_idx == 0:
                fire()
            return train_epoch(self)

        Trainer.train_epoch = patched_epoch
    elif where == "save":
        replace, calls = os.replace, {"n": 0}

        def patched_replace(src, dst):
            calls["n"] += str(dst).endswith(".pth")  # checkpoint files only, not history.jsonl
            if calls["n"] == number and str(dst).endswith(".pth"):
                fire()
            return replace(src, dst)

        checkpoint.os.replace = patched_replace
    elif where == "fail-rank1":
        from utils.errors import DataError

        step = Trainer.optimizer_step

        def failing_step(self):
            step(self)
            if self.global_step == number and self.dist.rank == 1:
                raise DataError("Cannot read image 'images/0042.png': simulated failure on rank 1.")

        Trainer.optimizer_step = failing_step
    elif where == "validation":
        validate = Trainer.validate

        def patched_validate(self):
            if self.epoch == number:
                fire()
            return validate(self)

        Trainer.validate = patched_validate
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    return train.main(train_args)


if __name__ == "__main__":
    gc.freeze()  # as train.py does: the imported modules stay out of every garbage collection
    sys.exit(main())
