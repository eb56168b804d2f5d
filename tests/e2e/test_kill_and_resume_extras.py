"""More kills (SIGKILL) and resumes that must end bit-identical: Trainer subclasses, the recipes, the device-resident loader."""
import signal
import subprocess
import sys

import pytest
import torch

import train
from trainer.checkpoint import load_checkpoint

from helpers import (
    ARGS,
    DICT_BATCHES,
    PER_PART_TRAINER,
    REGULARIZED,
    REPO,
    TWO_OPTIMIZERS,
    assert_same_state,
    define_in_custom,
    fast_args,
    interrupted,
    same,
)


def killed_and_resumed(folder, tmp_path, *extra):
    """Train uninterrupted, then again with a SIGKILL at step 7 of the epoch's 20 and a resume; the two final
    checkpoints. The killed run is a process of its own, started in `folder` (this repository or a project copied
    from it); the uninterrupted run and the resume run in this process."""
    args = [*ARGS, "trainer.epochs=1", "lr_scheduler.args.T_max=1", *extra]
    assert train.main([*args, f"trainer.save_dir={tmp_path}", "--run-id", "ref"]) == 0
    killed = subprocess.run([sys.executable, str(folder / "tests" / "interrupt.py"), "--at", "step:7", "--send", "KILL",
                             "--", *args, f"trainer.save_dir={tmp_path}", "--run-id", "killed"], cwd=folder,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    runs = tmp_path / "models" / "digits_cnn"
    assert train.main(["--resume", str(runs / "killed")]) == 0
    return runs / "ref" / "checkpoint-latest.pth", runs / "killed" / "checkpoint-latest.pth"


def test_regularized_trainer_resumes_bit_identically_after_sigkill(tmp_path):
    assert_same_state(*killed_and_resumed(REPO, tmp_path, *REGULARIZED))


def test_a_closure_optimizer_resumes_bit_identically_after_sigkill(tmp_path):
    lbfgs = "optimizer={type: LBFGS, args: {lr: 0.2, max_iter: 4, history_size: 10}}"
    ref, resumed = killed_and_resumed(REPO, tmp_path, lbfgs, "trainer.grad_clip_norm=5.0")
    assert_same_state(ref, resumed)
    state = load_checkpoint(resumed)["optimizer"]["state"][0]
    assert state["func_evals"] > 20 and len(state["old_dirs"]) == 10  # LBFGS's memory came through the kill


def test_two_optimizers_stepped_by_the_training_step_resume_bit_identically_after_sigkill(project, tmp_path,
                                                                                         monkeypatch):
    define_in_custom(monkeypatch, PER_PART_TRAINER, project)
    ref, resumed = killed_and_resumed(project, tmp_path, *TWO_OPTIMIZERS, "trainer.accumulate_grad_batches=2")
    a, b = load_checkpoint(ref), load_checkpoint(resumed)
    assert a["loop"] == b["loop"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert same(a["optimizer"], b["optimizer"]) and a["lr_scheduler"] == b["lr_scheduler"]
    assert set(a["optimizer"]) == {"features", "classifier"} and a["lr_scheduler"]["classifier"]["last_epoch"] == 10


def test_dict_batch_trainer_resumes_bit_identically_after_sigkill(project, user_code, tmp_path):
    assert_same_state(*killed_and_resumed(project, tmp_path, *DICT_BATCHES))


@pytest.mark.needs("trainer/ema.py")
def test_killed_run_with_ema_mixup_and_warmup_resumes_bit_identical(tmp_path):
    args = fast_args(tmp_path, "trainer.save_every_steps=4", "trainer.monitor=max val_accuracy_ema",
                     "trainer.ema={decay: 0.999, every_steps: 3, warmup: 1}",
                     "data_loader.args.batch_transform={mixup_alpha: 0.2, cutmix_alpha: 1.0}",
                     "lr_scheduler.interval=step", "lr_scheduler.args.T_max=30", "lr_scheduler.warmup={steps: 10}",
                     "optimizer.no_decay=true", "data_loader.args.repeated_augmentations=2",
                     "data_loader.args.transform=[{type: RandomAffine, args: {degrees: 10}}, "
                     "{type: ToDtype, args: {dtype: float32, scale: true}}]")
    assert train.main([*args, "--run-id", "ref"]) == 0  # in this process: only the killed run needs its own
    run = tmp_path / "models" / "digits_cnn" / "cut"
    killed = interrupted("step:7", "KILL", *args, "--run-id", "cut")  # mid-epoch, 3 steps after a checkpoint
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert load_checkpoint(run / "checkpoint-latest.pth")["loop"]["global_step"] == 4
    assert train.main(["--resume", str(run)]) == 0
    ref = tmp_path / "models" / "digits_cnn" / "ref"
    assert_same_state(ref / "checkpoint-latest.pth", run / "checkpoint-latest.pth")
    assert_same_state(ref / "model_best.pth", run / "model_best.pth")
    state = load_checkpoint(run / "checkpoint-latest.pth")
    assert state["ema"] is not None and state["lr_scheduler"]["_milestones"] == [10]


DEVICE_LOADER = ("data_loader={{type: DeviceDataLoader, args: {{source: {{type: CsvImageDataLoader, args: "
                 "{{data_dir: data/digits, batch_size: 64, validation_split: 0.15, eval_transform: "
                 "[{{type: ToDtype, args: {{dtype: float32, scale: true}}}}]}}}}, augment: {augment}}}}}")


@pytest.mark.needs("data_loader/device_loader.py")
def test_training_on_the_device_loader_resumes_exactly(tmp_path):
    # Every augmentation at once (crop, flip and affine draw from the same generator), so one killed run replays them all.
    augment = "{crop_padding: 1, hflip: true, degrees: 10, translate: [0.1, 0.1]}"
    args = fast_args(tmp_path, DEVICE_LOADER.format(augment=augment), "trainer.save_every_steps=5")
    assert train.main([*args, "--run-id", "ref"]) == 0  # in this process: only the killed run needs its own
    run = tmp_path / "models" / "digits_cnn" / "cut"
    result = interrupted("step:12", "KILL", *args, "--run-id", "cut")
    assert result.returncode == -signal.SIGKILL
    assert train.main(["--resume", str(run)]) == 0
    assert_same_state(tmp_path / "models" / "digits_cnn" / "ref" / "checkpoint-latest.pth", run / "checkpoint-latest.pth")


STATEFUL_CALLBACK = '''

class LossAverage(Callback):
    """A running average of the training loss, logged after every batch: state that a resume must give back."""

    def __init__(self, decay: float = 0.9):
        self.decay, self.average = decay, None

    def on_train_batch_end(self, trainer, batch, step):
        loss = step.loss.detach().double()
        self.average = loss if self.average is None else self.decay * self.average + (1 - self.decay) * loss
        trainer.log("loss_average", self.average)

    def state_dict(self):
        return {"average": self.average}

    def load_state_dict(self, state):
        self.average = state["average"]
'''


def test_a_stateful_callback_and_logged_values_resume_bit_identically_after_sigkill(project, tmp_path, monkeypatch):
    import trainer.custom

    (project / "trainer" / "custom.py").write_text((project / "trainer" / "custom.py").read_text()
                                                   + "\nfrom trainer.callbacks import Callback\n" + STATEFUL_CALLBACK)
    namespace = {"__name__": "trainer.custom"}
    exec("from trainer.callbacks import Callback\n" + STATEFUL_CALLBACK, namespace)
    monkeypatch.setattr(trainer.custom, "LossAverage", namespace["LossAverage"], raising=False)
    ref, resumed = killed_and_resumed(project, tmp_path, "callbacks=[{type: LossAverage, args: {decay: 0.8}}]",
                                      "trainer.monitor=min loss_average")
    assert_same_state(ref, resumed)
    a, b = load_checkpoint(ref), load_checkpoint(resumed)
    assert a["callbacks"] == b["callbacks"] and a["callbacks"][0]["state"]["average"] > 0
    assert a["history"] == b["history"] and "loss_average" in a["history"][0]
