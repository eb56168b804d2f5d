"""Several optimizers by name (the config's `optimizers`), stepped by the training step through manual_backward
and step_optimizer, which do what the loop does for its one optimizer."""
import pytest
import torch

import train
from trainer.checkpoint import load_checkpoint

from helpers import PER_PART_TRAINER, TWO_OPTIMIZERS, define_in_custom, fast_args, only_run


def test_a_step_that_steps_its_one_optimizer_itself_matches_the_loop_bit_for_bit(monkeypatch, tmp_path):
    define_in_custom(monkeypatch, PER_PART_TRAINER)
    common = ["trainer.epochs=2", "trainer.accumulate_grad_batches=2", "trainer.grad_clip_norm=0.5"]
    scheduler = "{type: CosineAnnealingLR, args: {T_max: 10}, interval: step}"
    assert train.main(fast_args(tmp_path / "loop", *common, "optimizer.args.lr=0.01",
                                f"lr_scheduler={scheduler}")) == 0
    assert train.main(fast_args(tmp_path / "step", *common, "trainer.type=PerPartTrainer", "optimizer=null",
                                "lr_scheduler=null", "optimizers={all: {type: AdamW, args: {lr: 0.01, weight_decay: 1.0e-4}, "
                                f"lr_scheduler: {scheduler}}}}}")) == 0
    loop = load_checkpoint(only_run(tmp_path / "loop") / "checkpoint-latest.pth")
    step = load_checkpoint(only_run(tmp_path / "step") / "checkpoint-latest.pth")
    assert loop["loop"] == step["loop"] and loop["loop"]["global_step"] == 20
    assert all(torch.equal(loop["model"][k], step["model"][k]) for k in loop["model"])
    assert loop["lr_scheduler"]["last_epoch"] == step["lr_scheduler"]["all"]["last_epoch"] == 20
    assert loop["history"] == step["history"]


def test_two_optimizers_step_their_own_modules_and_come_back_on_resume(monkeypatch, save_dir):
    define_in_custom(monkeypatch, PER_PART_TRAINER)
    assert train.main(fast_args(save_dir, *TWO_OPTIMIZERS, "trainer.epochs=1", "--run-id", "r")) == 0
    run = only_run(save_dir)
    state = load_checkpoint(run / "checkpoint-latest.pth")
    assert set(state["optimizer"]) == {"features", "classifier"}
    assert "momentum_buffer" in state["optimizer"]["features"]["state"][0]
    assert len(state["optimizer"]["classifier"]["state"]) == 2  # the classifier's weight and bias
    assert state["lr_scheduler"]["classifier"]["last_epoch"] == 20
    assert state["optimizer"]["classifier"]["param_groups"][0]["lr"] == pytest.approx(1e-3 * 0.5 ** 4)
    assert train.main(["--resume", str(run), "--epochs", "2"]) == 0
    resumed = load_checkpoint(run / "checkpoint-latest.pth")
    assert resumed["lr_scheduler"]["classifier"]["last_epoch"] == 40 and resumed["loop"]["global_step"] == 40


@pytest.mark.parametrize("override, message", [
    ("trainer.amp=fp16", "(trainer.amp=fp16): with 'optimizers', your training step steps the optimizers itself"),
    ("trainer.on_nan=skip_batch", "Set trainer.on_nan: stop"),
    ("optimizer={type: SGD, args: {lr: 0.1}}", "set only one of 'optimizer'"),
    ("optimizers.classifier.modules=[features]", "'optimizers.classifier.modules' shares parameters with "
                                                 "'optimizers.features'"),
    ("optimizers.features.modules=[featurs]", "'optimizers.features.modules' names 'featurs', which is not a module"),
    ("optimizers.features.lr_scheduler={type: StepLR, interval: hourly}", "'optimizers.features.lr_scheduler' must be"),
    ("optimizers.features.args.lr=.inf", "'optimizers.features.args.lr' is inf"),
    ("lr_scheduler={type: StepLR, args: {step_size: 1}}", "with 'optimizers', each optimizer has its own lr_scheduler"),
    ("optimizers.features.lr_scheduler={type: StepLR, args: {step_size: 1}, every: 2}",
     "'optimizers.features.lr_scheduler' must be {type, args, interval"),
])
def test_wrong_optimizers_settings_are_refused_before_writing(monkeypatch, save_dir, capsys, override, message):
    define_in_custom(monkeypatch, PER_PART_TRAINER)
    assert train.main(fast_args(save_dir, *TWO_OPTIMIZERS, override)) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("error:") == 1 and "Traceback" not in err
    assert not save_dir.exists()


def test_stepping_an_optimizer_the_config_does_not_name_says_which_there_are(monkeypatch, save_dir, capsys):
    define_in_custom(monkeypatch, PER_PART_TRAINER.replace("self.step_optimizer(name)", "self.step_optimizer('head')"))
    assert train.main(fast_args(save_dir, *TWO_OPTIMIZERS)) == 2
    assert "step_optimizer('head'): the config's optimizers are features, classifier" in capsys.readouterr().err
    assert not save_dir.exists()


def test_resuming_with_other_optimizers_is_refused(monkeypatch, save_dir, capsys):
    define_in_custom(monkeypatch, PER_PART_TRAINER)
    assert train.main(fast_args(save_dir, *TWO_OPTIMIZERS, "trainer.epochs=1", "--run-id", "r")) == 0
    run = only_run(save_dir)
    assert train.main(["--resume", str(run), "optimizers.features.args.lr=0.5"]) == 2
    assert "sets optimizers to" in capsys.readouterr().err
