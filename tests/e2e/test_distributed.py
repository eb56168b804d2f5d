"""DDP on the CPU: two processes under torchrun with gloo, on the bundled digits."""
import json
import re
import shutil
import time

import pytest
import torch

import test as test_script
import train
from trainer.checkpoint import load_checkpoint

from helpers import REPO, assert_same_state, fast_args, only_run, torchrun

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")

# 1216 training samples: 19 full global batches of 64, so one process with batch 64 and two with batch 32 see
# the same samples at every step. No dropout and no random augmentation (they draw per process), and no
# BatchNorm (its batch statistics are per process; SyncBatchNorm needs CUDA).
SAME_GLOBAL_BATCH = ["data_loader.args.validation_split=221", "arch.args.dropout=0", "arch.args.batch_norm=false"]


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, capfd):
    two = torchrun(capfd, *fast_args(tmp_path / "two", *SAME_GLOBAL_BATCH, "data_loader.args.batch_size=32",
                              "trainer.monitor=min val_loss"))
    assert two.returncode == 0, two.stderr
    assert train.main(fast_args(tmp_path / "one", *SAME_GLOBAL_BATCH, "data_loader.args.batch_size=64")) == 0
    run = only_run(tmp_path / "two")  # one checkpoint set, written by rank 0
    a = load_checkpoint(run / "checkpoint-latest.pth")
    b = load_checkpoint(only_run(tmp_path / "one") / "checkpoint-latest.pth")
    assert a["world_size"] == 2 and len(a["per_rank"]) == 2 and a["loop"] == b["loop"]
    assert not any(name.startswith("module.") for name in a["model"])
    for name, tensor in a["model"].items():
        # Not bit-identical: the gradient mean is summed in another order (per process, then across processes).
        assert torch.allclose(tensor.float(), b["model"][name].float(), rtol=1e-4, atol=1e-5), name
    # The 2-process checkpoint loads in a single process and reproduces the logged validation figures.
    logged = [line for line in two.stdout.splitlines() if line.startswith("epoch 2/2")][0]
    assert test_script.main(["--resume", str(run / "model_best.pth"), "--split", "val"]) == 0
    out = capfd.readouterr().out
    for key in ("loss", "accuracy", "top_k_acc"):
        printed = float(re.search(rf"^  {key}\s+([\d.]+)$", out, re.M).group(1))
        assert f"{printed:.4f}" == re.search(rf"  val_{key} ([\d.]+)", logged).group(1)


def test_two_processes_killed_and_resumed_end_identical(tmp_path, capfd):
    args = fast_args(tmp_path, "trainer.save_every_steps=4",
                     "data_loader.args.transform=[{type: RandomAffine, args: {degrees: 10}}, "
                     "{type: ToDtype, args: {dtype: float32, scale: true}}]")
    reference = torchrun(capfd, *args, "--run-id", "ref")
    assert reference.returncode == 0, reference.stderr
    killed = torchrun(capfd, "--at", "step:6", "--send", "KILL", "--", *args, "--run-id", "ddp", script="tests/interrupt.py")
    assert killed.returncode != 0
    run = tmp_path / "models" / "digits_cnn" / "ddp"
    assert load_checkpoint(run / "checkpoint-latest.pth")["loop"]["global_step"] == 4
    # Resuming the 2-process checkpoint in one process re-derives the data position and says so.
    single = tmp_path / "single" / "models" / "digits_cnn" / "ddp"
    shutil.copytree(run, single)
    capfd.readouterr()
    assert train.main(["--resume", str(single), "--epochs", "1"]) == 0
    alone = capfd.readouterr().out
    assert "written by 2 process(es) with batch size 64, this run has 1 with 64" in alone and "(batch 8)" in alone
    resumed = torchrun(capfd, "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_state(tmp_path / "models" / "digits_cnn" / "ref" / "checkpoint-latest.pth", run / "checkpoint-latest.pth")
    # Every process validates with rank 0's BatchNorm statistics, the ones saved: the logged figures are those of the
    # saved model, and a resumed run logs the same ones.
    history = (tmp_path / "log" / "digits_cnn" / "ref" / "history.jsonl").read_text()
    assert (tmp_path / "log" / "digits_cnn" / "ddp" / "history.jsonl").read_text() == history
    capfd.readouterr()
    assert test_script.main(["--resume", str(tmp_path / "models" / "digits_cnn" / "ref" / "checkpoint-latest.pth"),
                             "--split", "val", "--no-report"]) == 0
    printed = float(re.search(r"^  loss\s+([\d.]+)$", capfd.readouterr().out, re.M).group(1))
    assert printed == pytest.approx(json.loads(history.splitlines()[-1])["val_loss"], abs=2e-6)


def test_a_failing_process_brings_the_run_down_with_its_message(tmp_path, capfd):
    started = time.monotonic()
    result = torchrun(capfd, "--at", "fail-rank1:3", "--", *fast_args(tmp_path), script="tests/interrupt.py")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "error: [rank 1] Cannot read image 'images/0042.png'" in output
    # The other process says that it lost contact with it (a gloo error inside DDP's collective), not a traceback.
    assert "error: [rank 0] Lost contact with the other training processes (" in output, output
    assert "[rank0]: Traceback" not in output and "RuntimeError" not in output
    assert time.monotonic() - started < 120


def test_sigterm_stops_all_processes_with_a_checkpoint(tmp_path, capfd):
    args = fast_args(tmp_path, "--run-id", "stop", "trainer.log_step=2")
    result = torchrun(capfd, "--at", "step:5", "--send", "TERM", "--", *args, script="tests/interrupt.py")
    output = result.stdout + result.stderr
    assert "continue it with" in output, output
    state = load_checkpoint(tmp_path / "models" / "digits_cnn" / "stop" / "checkpoint-latest.pth")
    assert state["loop"]["global_step"] == 6  # the processes agree at the next logging step
    assert torchrun(capfd, "--resume", str(tmp_path / "models" / "digits_cnn" / "stop")).returncode == 0


def test_a_failure_on_rank_0_alone_stops_the_other_process_too(tmp_path, capfd):
    taken = tmp_path / "models" / "digits_cnn" / "taken"
    taken.mkdir(parents=True)
    (taken / "checkpoint-latest.pth").write_bytes(b"an earlier run")
    result = torchrun(capfd, *fast_args(tmp_path, "--run-id", "taken"), timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "already exists and is not empty" in output
    assert "error: [rank 1] Stopped because rank 0 failed" in output
    assert (taken / "checkpoint-latest.pth").read_bytes() == b"an earlier run"


def test_a_check_failing_on_one_process_stops_every_process_before_anything_is_written(tmp_path, capfd):
    from data_loader.base import split_indices
    from data_loader.datasets import CsvImageDataset
    from data_loader.sampling import ResumableSampler

    from helpers import tiny_digits, train_args

    # A label outside the model's 10 classes in rank 1's first batch only: the check fails there alone.
    data = tiny_digits(tmp_path / "digits")
    train, _ = split_indices(60, 20, 0)
    first_of_rank1 = ResumableSampler(train, seed=0, num_replicas=2, rank=1).order()[0].item()
    name = CsvImageDataset(data, split="train").samples[first_of_rank1][0]
    lines = (data / "labels.csv").read_text().splitlines()
    (data / "labels.csv").write_text("\n".join(f"{name},10,train" if line.startswith(f"{name},") else line
                                               for line in lines) + "\n")
    result = torchrun(capfd, *train_args(tmp_path / "saved", data, "data_loader.args.num_classes=null"))
    assert result.returncode != 0
    assert "[rank 1] A batch holds label 10, but the model gives 10 outputs" in result.stderr
    assert "[rank 0] Stopped because rank 1 failed; its message comes first in the output." in result.stderr
    assert "Connection closed by peer" not in result.stderr  # rank 0 did not go on and lose its partner
    assert not (tmp_path / "saved").exists()


ACCUMULATION_SCRIPT = """
import sys
sys.path.insert(0, {repo!r})
import torch, train
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from trainer.trainer import Trainer

init, train_batch, training_step, fit = Trainer.__init__, Trainer.train_batch, Trainer.training_step, Trainer.fit
average = Trainer._average_gradients
reductions, after, averaged = [0], [], {{}}

def count(state, bucket):  # DDP's own all-reduce of a gradient bucket, counted
    reductions[0] += 1
    return allreduce_hook(state, bucket)

def init_with_hook(self, *args, **kwargs):
    init(self, *args, **kwargs)
    self.train_model.register_comm_hook(None, count)

def counted_batch(self, batch):
    after.append(reductions[0]) if not after else None
    train_batch(self, batch)
    after.append(reductions[0])

def poisoned_step(self, model, batch):  # a NaN loss on the last batch of the second window, in every process
    step = training_step(self, model, batch)
    return step._replace(loss=step.loss * float("nan")) if self.batch_idx == 3 else step

def kept_average(self):
    averaged["local"] = {{n: p.grad.clone() for n, p in self.model.named_parameters()}}
    average(self)
    averaged["mean"] = {{n: p.grad.clone() for n, p in self.model.named_parameters()}}

def fit_and_keep(self, run):
    result = fit(self, run)
    params = {{name: p.detach().clone() for name, p in self.model.named_parameters()}}
    # Then a gradient that one process has and the other has not (find_unused_parameters, a data-dependent branch).
    first, second = list(self.model.parameters())[:2]
    self.optimizer.zero_grad(set_to_none=True)
    if self.dist.rank == 0:
        first.grad = torch.full_like(first, 2.0)
    average(self)
    uneven = {{"first": first.grad, "second": second.grad}}
    torch.save({{"after": after, "params": params, "uneven": uneven, **averaged}}, f"{out}/rank{{self.dist.rank}}.pt")
    return result

Trainer.__init__, Trainer.train_batch, Trainer.training_step, Trainer.fit = (
    init_with_hook, counted_batch, poisoned_step, fit_and_keep)
Trainer._average_gradients = kept_average
sys.exit(train.main(sys.argv[1:]))
"""


def test_accumulation_averages_gradients_across_processes_once_per_window(tmp_path, capfd):
    script = tmp_path / "count_reductions.py"
    script.write_text(ACCUMULATION_SCRIPT.format(repo=str(REPO), out=str(tmp_path)))
    result = torchrun(capfd, *fast_args(tmp_path, "trainer.epochs=1", "trainer.accumulate_grad_batches=2",
                                        "trainer.on_nan=skip_batch"), script=str(script))
    assert result.returncode == 0, result.stderr
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    after = ranks[0]["after"]
    steps = [b - a for a, b in zip(after, after[1:])]  # all-reduces in each batch's backward
    per_sync = steps[1]
    # Only the last batch of each window of 2 synchronises. Batch 4 is left out: DDP still expects the backward that
    # batch 3's forward prepared, so it may average batch 4's gradients at once (the same result: an average is linear).
    expected = [per_sync if i % 2 == 1 or i == len(steps) - 1 else 0 for i in range(len(steps))]
    expected[3] = 0
    assert per_sync > 0 and len(steps) > 6 and steps[:4] + steps[5:] == expected[:4] + expected[5:], steps
    # Batch 3 was skipped in every process, so batch 2's gradients, kept local, are averaged as DDP would.
    for name, local in ranks[0]["local"].items():
        mean = (local + ranks[1]["local"][name]) / 2
        for rank in ranks:
            torch.testing.assert_close(rank["mean"][name], mean)
    for name, value in ranks[0]["params"].items():
        assert torch.equal(value, ranks[1]["params"][name]), name
    for rank in ranks:  # the mean of 2 and nothing (zero); a gradient that no process has stays None
        assert torch.equal(rank["uneven"]["first"], torch.ones_like(rank["uneven"]["first"]))
        assert rank["uneven"]["second"] is None
