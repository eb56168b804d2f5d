"""Check before writing: one batch goes through the model, the loss, the metrics and backward before the run
folder exists, so mismatches stop with one message, exit code 2 and nothing written; and the check leaves no
trace in the run."""
import collections
import copy
from types import SimpleNamespace

import pytest
import torch

import train
from data_loader.factory import build_data_loader, training_data
from model.factory import build_criterion, build_metrics, build_model, build_optimizer
from trainer import preflight, setup
from trainer.checkpoint import load_checkpoint
from trainer.factory import build_trainer
from trainer.metric_tracker import as_scalar
from utils.config import Config

from helpers import FAST, REPO, fast_args, only_run

RGB = "data_loader.args.image_mode=rgb"


def refused(save_dir, capsys, *extra):
    code = train.main(fast_args(save_dir, *extra))
    err = capsys.readouterr().err
    assert code == 2 and not save_dir.exists(), err
    assert err.count("error:") == 1 and "Traceback" not in err
    return err


def test_rgb_images_into_a_one_channel_model_are_refused_before_writing(save_dir, capsys):
    err = refused(save_dir, capsys, RGB)
    assert "inputs ((64, 3, 8, 8) float32, (64,) int64)" in err
    assert "the model's in_channels" in err and "the data loader's image_mode" in err


def test_images_left_as_uint8_are_refused_with_the_transform_to_add(save_dir, capsys):
    err = refused(save_dir, capsys, "data_loader.args.transform=[]", "data_loader.args.eval_transform=null")
    assert "(64, 1, 8, 8) uint8" in err and "{type: ToDtype, args: {dtype: float32, scale: true}}" in err


@pytest.mark.parametrize("transform, reason", [
    ("[{type: Normalize, args: {mean: [0.3], std: [0.4]}}]",
     "TypeError: Input tensor should be a float tensor. Got torch.uint8"),
    ("[{type: RandomCrop, args: {size: 32}}, {type: ToDtype, args: {dtype: float32, scale: true}}]",
     "ValueError: Required crop size (32, 32) is larger than input image size (8, 8)"),
])
def test_a_transform_that_cannot_take_the_data_is_refused_before_writing(save_dir, capsys, transform, reason):
    err = refused(save_dir, capsys, f"data_loader.args.transform={transform}")
    assert f"The training data's first batch cannot be made ({reason}). When a transform is the cause, check " \
           "the data loader's transform" in err
    assert "which comes before Normalize" in err


@pytest.mark.needs("data_loader/device_loader.py")
def test_the_default_loaders_eval_transform_that_cannot_take_the_data_is_refused(save_dir, capsys):
    code = train.main(["-c", str(REPO / "configs" / "config.yaml"), f"trainer.save_dir={save_dir}",
                       "data_loader.args.eval_transform=[{type: Normalize, args: {mean: [0.3], std: [0.4]}}]"])
    err = capsys.readouterr().err
    assert code == 2 and not save_dir.exists() and "Traceback" not in err
    assert "The training data cannot be prepared (TypeError: Input tensor should be a float tensor. Got " \
           "torch.uint8). When eval_transform is the cause, check the data loader's eval_transform" in err


def test_a_model_with_too_few_classes_is_refused_before_writing(save_dir, capsys):
    err = refused(save_dir, capsys, "arch.args.num_classes=6")
    assert "The model gives 6 outputs per sample, but the data has 10 classes" in err
    assert "Set the model's number of classes (its num_classes arg" in err


def test_a_label_outside_the_head_is_refused_when_the_data_does_not_say_its_classes(save_dir, capsys):
    err = refused(save_dir, capsys, "arch.args.num_classes=6", "data_loader.args.num_classes=null")
    assert "but the model gives 6 outputs per sample (classes 0..5)" in err


def test_an_output_that_the_loss_would_broadcast_against_the_target_is_refused(save_dir, capsys):
    err = refused(save_dir, capsys, "loss={type: MSELoss}", "arch.args.num_classes=1", "metrics=[]",
                  "trainer.monitor=min val_loss", "data_loader.args.target_transform=[{type: OneHot, args: "
                  "{num_classes: 10}}]")
    assert "(64, 1) float32 and the target (64, 10) float32 have different shapes" in err


def test_a_metric_that_returns_no_single_number_is_refused(save_dir, capsys, monkeypatch):
    import model.builtin.metrics

    monkeypatch.setattr(model.builtin.metrics, "accuracy", lambda output, target: output.argmax(1) == target)
    err = refused(save_dir, capsys)
    assert "The metric 'accuracy' returned a Tensor of shape (64,)" in err


def test_metrics_may_return_python_and_numpy_numbers_and_tensors():
    import numpy as np

    cpu = torch.device("cpu")
    for value in (0.5, 1, np.float32(0.5), np.float64(0.5), np.int64(1), torch.tensor(0.5), torch.tensor([0.5])):
        scalar = as_scalar(value, "m", cpu)
        assert scalar.shape == () and scalar.dtype == torch.float32 and float(scalar) == float(value)
    for bad in ("0.5", [0.5], torch.ones(2), None, True):
        try:
            as_scalar(bad, "m", cpu)
        except Exception as e:
            assert "The metric 'm' returned a" in str(e)
        else:
            raise AssertionError(f"{bad!r} was accepted")


def test_a_run_with_the_check_is_bit_identical_to_one_without(tmp_path, monkeypatch):
    args = ["trainer.epochs=1", "arch.args.dropout=0.5", "--run-id", "r",  # dropout and BatchNorm: RNG and buffers
            "data_loader.args.transform=[{type: RandomAffine, args: {degrees: 10}}, "
            "{type: ToDtype, args: {dtype: float32, scale: true}}]"]
    assert train.main(fast_args(tmp_path / "checked", *args)) == 0
    monkeypatch.setattr(setup, "check_one_batch", lambda *a: None)
    assert train.main(fast_args(tmp_path / "unchecked", *args)) == 0
    a = load_checkpoint(only_run(tmp_path / "checked") / "checkpoint-latest.pth")
    b = load_checkpoint(only_run(tmp_path / "unchecked") / "checkpoint-latest.pth")
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), "weights or buffers differ"
    assert torch.equal(a["per_rank"][0]["rng"]["torch"], b["per_rank"][0]["rng"]["torch"])
    assert a["history"] == b["history"]


def test_the_check_puts_back_buffers_gradients_and_random_state():
    config = Config.load(REPO / "configs" / "config.yaml", FAST)
    data = build_data_loader(config["data_loader"], config["seed"])
    model = build_model(config)
    trainer = build_trainer(config, model=model, criterion=build_criterion(config), metrics=build_metrics(config),
                            optimizer=build_optimizer(config, model), device=torch.device("cpu"),
                            data=training_data(data, torch.device("cpu"), "CsvImageDataLoader"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    preflight.check_one_batch(trainer, 10)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(rng, torch.get_rng_state()) and model.training


def test_the_check_puts_back_whatever_a_step_with_side_effects_changed():
    from trainer.trainer import Trainer

    class SideEffects(Trainer):
        """A step that steps the optimizer itself, and keeps a counter, a list and a tensor of its own."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.calls, self.seen, self.hidden = 0, [], torch.zeros(3)
            self.noise, self.recent = torch.Generator().manual_seed(1), collections.deque(maxlen=4)

        def training_step(self, model, batch):
            super().training_step(model, batch).loss.backward()  # a step of its own, as a GAN's discriminator takes
            self.optimizer.step()
            self.calls += 1
            self.seen.append(self.calls)
            self.hidden += 1
            self.added = True
            self.recent.append(torch.randn(1, generator=self.noise))
            return super().training_step(model, batch)

    config = Config.load(REPO / "configs" / "config.yaml", [*FAST, "optimizer.type=Adam"])
    data = build_data_loader(config["data_loader"], config["seed"])
    model = build_model(config)
    optimizer = build_optimizer(config, model)
    trainer = SideEffects(model, build_criterion(config), build_metrics(config), optimizer, config,
                          torch.device("cpu"), data=training_data(data, torch.device("cpu"), "CsvImageDataLoader"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    preflight.check_one_batch(trainer, 10)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "parameters changed"
    assert not optimizer.state and all(p.grad is None for p in model.parameters())
    assert trainer.calls == 0 and trainer.seen == [] and torch.equal(trainer.hidden, torch.zeros(3))
    assert not hasattr(trainer, "added") and not trainer.recent
    assert torch.equal(torch.randn(2, generator=trainer.noise), torch.randn(2, generator=torch.Generator().manual_seed(1)))


def test_a_scheduler_that_cannot_step_is_refused_before_writing(save_dir, capsys):
    err = refused(save_dir, capsys, "lr_scheduler.args.T_max=abc")
    assert "command line's lr_scheduler.args.T_max=abc: lr_scheduler 'CosineAnnealingLR' fails on its next step" in err


@pytest.mark.parametrize("scheduler", [
    "lr_scheduler={type: CosineAnnealingLR, args: {T_max: 3}, warmup: {epochs: 2}}",
    "lr_scheduler={type: ReduceLROnPlateau, args: {factor: 0.5, patience: 0}}",
    "lr_scheduler={type: OneCycleLR, args: {max_lr: 0.01, total_steps: 40}, interval: step}",
])
def test_the_scheduler_step_of_the_check_is_put_back(scheduler):
    from trainer.scheduler import build_lr_scheduler

    config = Config.load(REPO / "configs" / "config.yaml", [*FAST, scheduler])
    data = build_data_loader(config["data_loader"], config["seed"])
    model = build_model(config)
    optimizer = build_optimizer(config, model)
    lr_scheduler = build_lr_scheduler(config, optimizer)
    trainer = build_trainer(config, model=model, criterion=build_criterion(config), metrics=build_metrics(config),
                            optimizer=optimizer, device=torch.device("cpu"),
                            data=training_data(data, torch.device("cpu"), "CsvImageDataLoader"), lr_scheduler=lr_scheduler)
    state, lrs = copy.deepcopy(lr_scheduler.state_dict()), [group["lr"] for group in optimizer.param_groups]
    preflight.check_one_batch(trainer, 10)
    assert lr_scheduler.state_dict() == state and [group["lr"] for group in optimizer.param_groups] == lrs
    if "Plateau" not in scheduler:  # PyTorch warns at a schedule's first step only: the check's step left no count
        with pytest.warns(UserWarning, match=r"lr_scheduler.step\(\)` before `optimizer.step\(\)"):
            lr_scheduler.step()


def test_a_finished_one_cycle_run_resumes_and_a_longer_run_is_refused_before_writing(tmp_path, capsys):
    # 20 steps in the epoch, and a one-cycle schedule of exactly 20 steps.
    one_cycle = "lr_scheduler={type: OneCycleLR, args: {max_lr: 0.01, total_steps: 20}, interval: step}"
    assert train.main(fast_args(tmp_path, "trainer.epochs=1", one_cycle, "--run-id", "o")) == 0
    run = only_run(tmp_path)
    capsys.readouterr()
    assert train.main(["--resume", str(run)]) == 0  # nothing left to train: no step to check
    assert "This run already finished epoch 1 of 1" in capsys.readouterr().out
    files = {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.name != ".lock"}
    assert train.main(["--resume", str(run), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "lr_scheduler 'OneCycleLR' fails on its next step: Tried to step 21 times" in err and "total_steps" in err
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.name != ".lock"} == files


def test_a_tensor_learning_rate_is_put_back_in_place():
    model = torch.nn.Linear(2, 2)
    lr = torch.tensor(0.1)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.5)
    trainer = SimpleNamespace(lr_schedulers={"optimizer": scheduler}, manual=False, epoch=1, epochs=1)
    preflight.check_scheduler(trainer)
    assert optimizer.param_groups[0]["lr"] is lr and lr.item() == pytest.approx(0.1)
