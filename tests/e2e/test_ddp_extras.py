"""More under two-process DDP (torchrun, gloo): Trainer subclasses, the EMA copy, the evaluation report."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trainer.checkpoint import load_checkpoint
from trainer.confusion import ConfusionCollector

from helpers import (
    DICT_BATCHES,
    FAST,
    MATRIX,
    PER_PART_TRAINER,
    REGULARIZED,
    REPO,
    define_in_custom,
    fast_args,
    feed,
    only_run,
    torchrun,
)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")
@pytest.mark.parametrize("subclass", ["regularized", "dict"])
def test_subclasses_train_under_two_process_ddp(project, tmp_path, subclass, capfd):
    extra = REGULARIZED if subclass == "regularized" else DICT_BATCHES
    result = torchrun(capfd, "-c", str(REPO / "configs" / "config.yaml"), f"trainer.save_dir={tmp_path}", *FAST,
                      "trainer.epochs=1", *extra, cwd=project)
    assert result.returncode == 0, result.stderr
    state = load_checkpoint(next((tmp_path / "models" / "digits_cnn").iterdir()) / "checkpoint-latest.pth")
    assert state["world_size"] == 2 and state["config"]["trainer"]["type"] == extra[-2].split("=")[1]


DDP_SCRIPT = """
import sys
sys.path.insert(0, {repo!r})
import torch, train
from trainer.trainer import Trainer

fit = Trainer.fit

def fit_and_keep(self, run):
    result = fit(self, run)
    torch.save({{"ema": self.ema.module.state_dict(), "model": self.model.state_dict()}},
               f"{out}/rank{{self.dist.rank}}.pt")
    return result

Trainer.fit = fit_and_keep
sys.exit(train.main(sys.argv[1:]))
"""


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")
@pytest.mark.needs("trainer/ema.py")
def test_ema_is_the_same_copy_in_every_ddp_process(tmp_path, capfd):
    script = tmp_path / "keep_ema.py"
    script.write_text(DDP_SCRIPT.format(repo=str(REPO), out=str(tmp_path)))
    result = torchrun(capfd, *fast_args(tmp_path, "trainer.epochs=1", "trainer.ema={decay: 0.9, every_steps: 2}"),
                      script=str(script))
    assert result.returncode == 0, result.stderr
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    saved = load_checkpoint(only_run(tmp_path) / "checkpoint-latest.pth")["ema"]["model"]
    for name, value in ranks[0]["ema"].items():
        assert torch.equal(value, ranks[1]["ema"][name]) and torch.equal(value, saved[name]), name
    # Every process ends with rank 0's BatchNorm statistics, the saved ones (each updates its own while it trains).
    assert torch.equal(ranks[0]["model"]["features.1.running_mean"], ranks[1]["model"]["features.1.running_mean"])


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")
def test_optimizers_stepped_by_the_training_step_keep_every_process_in_step_under_ddp(project, tmp_path, capfd,
                                                                                      monkeypatch):
    # Without DDP's wrapper (the step calls step_optimizer), each optimizer averages its gradients over the processes:
    # every process holds the same weights, and one named optimizer trains as the loop's own does under DDP.
    define_in_custom(monkeypatch, PER_PART_TRAINER, project)
    script = tmp_path / "keep_weights.py"
    script.write_text(DDP_SCRIPT.format(repo=str(project), out=str(tmp_path / "step"))
                      .replace('"ema": self.ema.module.state_dict(), ', ""))
    (tmp_path / "step").mkdir()
    common = ["trainer.epochs=1", "trainer.accumulate_grad_batches=2", "lr_scheduler=null"]
    step = torchrun(capfd, *fast_args(tmp_path / "step", *common, "trainer.type=PerPartTrainer", "optimizer=null",
                                      "optimizers={all: {type: AdamW, args: {lr: 3.0e-3, weight_decay: 1.0e-4}}}"),
                    script=str(script), cwd=project)
    assert step.returncode == 0, step.stderr
    loop = torchrun(capfd, *fast_args(tmp_path / "loop", *common), cwd=project)
    assert loop.returncode == 0, loop.stderr
    ranks = [torch.load(tmp_path / "step" / f"rank{r}.pt", weights_only=True)["model"] for r in (0, 1)]
    stepped = load_checkpoint(only_run(tmp_path / "step") / "checkpoint-latest.pth")
    looped = load_checkpoint(only_run(tmp_path / "loop") / "checkpoint-latest.pth")
    assert stepped["world_size"] == 2 and stepped["loop"] == looped["loop"]
    for name, value in ranks[0].items():
        assert torch.equal(value, ranks[1][name]) and torch.equal(value, stepped["model"][name]), name
        assert torch.allclose(value, looped["model"][name], atol=1e-5), name


def _two_processes(rank: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        collector = ConfusionCollector(torch.device("cpu"))
        feed(collector, range(0, 5) if rank == 0 else range(5, 6))  # unequal shares
        report = collector.result()
        queue.put((rank, report.matrix))
    finally:
        dist.destroy_process_group()


def test_counts_are_exact_over_two_processes():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    queue = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(_two_processes, args=(port, queue), nprocs=2, start_method="spawn")
    assert sorted([queue.get(), queue.get()]) == [(0, MATRIX), (1, MATRIX)]


RANK_LOGGER = '''
from trainer.callbacks import Callback
from trainer.trainer import Trainer


class RankLogger(Callback):
    """Logs its process's rank after every batch, and counts the batches it saw, as its state."""

    def __init__(self):
        self.batches = 0

    def on_train_batch_end(self, trainer, batch, step):
        self.batches += 1
        trainer.log("rank", float(trainer.dist.rank))

    def state_dict(self):
        return {"batches": self.batches}

    def load_state_dict(self, state):
        self.batches = state["batches"]
'''


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")
def test_logged_values_are_means_over_every_process_under_ddp(project, tmp_path, capfd, monkeypatch):
    define_in_custom(monkeypatch, RANK_LOGGER, project)
    result = torchrun(capfd, *fast_args(tmp_path, "trainer.epochs=1", "callbacks=[RankLogger]"), cwd=project)
    assert result.returncode == 0, result.stderr
    state = load_checkpoint(only_run(tmp_path) / "checkpoint-latest.pth")
    assert state["history"][0]["rank"] == 0.5  # as many batches on rank 0 (logging 0) as on rank 1 (logging 1)
    assert state["callbacks"] == [{"type": "RankLogger", "state": {"batches": 10}}]  # rank 0's, of its 10 batches


ONE_RANK_FAILS = '''
from trainer.trainer import Trainer


class FailsOnRank1(Trainer):
    """Steps its one named optimizer itself, and cannot take a batch on rank 1 (as a bad label there would)."""

    def training_step(self, model, batch):
        if self.dist.rank == 1:
            raise ValueError("rank 1 cannot take this batch")
        step = super().training_step(model, batch)
        self.manual_backward(step.loss)
        self.step_optimizer("all")
        return step
'''


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")
def test_a_check_that_fails_on_one_process_stops_all_of_them_with_several_optimizers(project, tmp_path, capfd,
                                                                                    monkeypatch):
    # The check's step_optimizer must not wait in a collective for the process whose check already failed.
    define_in_custom(monkeypatch, ONE_RANK_FAILS, project)
    result = torchrun(capfd, *fast_args(tmp_path, "trainer.type=FailsOnRank1", "optimizer=null", "lr_scheduler=null",
                                        "optimizers={all: {type: SGD, args: {lr: 0.1}}}"), cwd=project, timeout=120)
    assert result.returncode != 0 and "rank 1 cannot take this batch" in result.stderr
    assert not (tmp_path / "models").exists()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")
def test_a_closure_optimizer_under_torchrun_is_refused_before_writing(tmp_path, capfd):
    result = torchrun(capfd, *fast_args(tmp_path, "optimizer={type: LBFGS, args: {lr: 0.2}}", "lr_scheduler=null"))
    assert result.returncode != 0 and "re-evaluates the loss through a closure" in result.stderr
    assert "Train it in one process" in result.stderr and not (tmp_path / "models").exists()
