"""The speed switches of the trainer and the device-resident loader: each trains, and each keeps its promise."""
import signal

import pytest
import torch
from torch import nn

import train
from data_loader.builtin import CsvImageDataLoader
from data_loader.device_loader import DeviceDataLoader
from trainer.checkpoint import load_checkpoint
from trainer.trainer import Trainer
from utils.config import Config
from utils.errors import DataError

from conftest import REPO, fast_args, only_run, run_script
from test_exact_resume import assert_same_state, interrupted

EVAL = [{"type": "ToDtype", "args": {"dtype": "float32", "scale": True}}, {"type": "Normalize", "args": {"mean": [0.3], "std": [0.4]}}]
SOURCE = {"data_dir": str(REPO / "data" / "digits"), "batch_size": 50, "validation_split": 0.2, "eval_transform": EVAL}
DEVICE_LOADER = ("data_loader={type: DeviceDataLoader, args: {source: {type: CsvImageDataLoader, args: "
                 "{data_dir: data/digits, batch_size: 64, validation_split: 0.15, eval_transform: "
                 "[{type: ToDtype, args: {dtype: float32, scale: true}}]}}, augment: {crop_padding: 1, hflip: true}}}")


def test_device_loader_serves_the_same_batches_as_the_ordinary_loader():
    ordinary = CsvImageDataLoader(**SOURCE, transform=EVAL, seed=4)
    device = DeviceDataLoader({"type": "CsvImageDataLoader", "args": SOURCE}, seed=4)
    for a, b in [(ordinary.train_loader(), device.train_loader()), (ordinary.val_loader(), device.val_loader()),
                 (ordinary.test_loader(), device.test_loader())]:
        a.sampler.set_epoch(3) if hasattr(a.sampler, "set_epoch") else None
        b.sampler.set_epoch(3)
        batches_a, batches_b = list(a), list(b)
        assert len(batches_a) == len(batches_b) == len(b)
        for (xa, ya), (xb, yb) in zip(batches_a, batches_b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_device_augmentation_is_seeded_per_batch_and_resumes_mid_epoch():
    loader = DeviceDataLoader({"type": "CsvImageDataLoader", "args": SOURCE}, augment={"crop_padding": 2, "hflip": True})
    train_batches = loader.train_loader()
    train_batches.sampler.set_epoch(1)
    full = list(train_batches)
    plain = DeviceDataLoader({"type": "CsvImageDataLoader", "args": SOURCE}).train_loader()
    plain.sampler.set_epoch(1)
    plain_batches = list(plain)
    assert full[0][0].shape == plain_batches[0][0].shape
    assert not torch.equal(full[0][0], plain_batches[0][0])
    assert all(torch.equal(a[1], b[1]) for a, b in zip(full, plain_batches))
    train_batches.sampler.set_epoch(1)
    train_batches.sampler.skip(5 * train_batches.batch_size)
    resumed = list(train_batches)
    assert len(resumed) == len(full) - 5
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full[5:], resumed))


def test_device_loader_refuses_data_that_does_not_fit():
    loader = DeviceDataLoader({"type": "CsvImageDataLoader", "args": SOURCE}, memory_fraction=1e-12)
    with pytest.raises(DataError, match=r"training data needs .* GiB on cpu.*Use the ordinary loader"):
        loader.train_loader(torch.device("cpu"))


def test_training_on_the_device_loader_resumes_exactly(tmp_path):
    args = fast_args(tmp_path, DEVICE_LOADER, "trainer.save_every_steps=5")
    reference = run_script("train.py", *args, "--run-id", "ref")
    assert reference.returncode == 0, reference.stderr
    run = tmp_path / "models" / "digits_cnn" / "cut"
    result = interrupted("step:12", "KILL", *args, "--run-id", "cut")
    assert result.returncode == -signal.SIGKILL
    assert run_script("train.py", "--resume", str(run)).returncode == 0
    assert_same_state(tmp_path / "models" / "digits_cnn" / "ref" / "checkpoint-latest.pth", run / "checkpoint-latest.pth")


def linear_trainer(overrides, batch_size):
    """A Trainer around a BatchNorm-free linear model, so batch composition alone decides the gradients."""
    config = Config.load(REPO / "configs" / "config.yaml", [
        *overrides, "optimizer={type: SGD, args: {lr: 0.5}}", "lr_scheduler=null", "metrics=[]",
        "trainer.monitor=off", "trainer.save_period=0"])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    # 1408 training samples: every batch is full, so two halves average to exactly the larger batch's mean.
    data = CsvImageDataLoader(**{**SOURCE, "batch_size": batch_size, "validation_split": 29}, transform=EVAL)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    return Trainer(model, nn.functional.cross_entropy, {}, optimizer, config, torch.device("cpu"),
                   data.train_loader(), None)


def one_epoch(trainer, tmp_path):
    from utils.run import new_run

    trainer.fit(new_run(tmp_path, "x"))
    return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])


def test_gradient_accumulation_matches_one_larger_batch(tmp_path):
    big = one_epoch(linear_trainer(["trainer.epochs=1"], 64), tmp_path)
    accumulated = one_epoch(linear_trainer(["trainer.epochs=1", "trainer.accumulate_grad_batches=2"], 32), tmp_path)
    small = one_epoch(linear_trainer(["trainer.epochs=1"], 32), tmp_path)
    assert torch.allclose(big, accumulated, atol=1e-5)
    assert not torch.allclose(big, small, atol=1e-3)


def test_grad_clip_norm_bounds_every_update(tmp_path):
    trainer = linear_trainer(["trainer.epochs=1", "trainer.grad_clip_norm=0.001"], 64)
    before = torch.cat([p.detach().flatten() for p in trainer.model.parameters()]).clone()
    after = one_epoch(trainer, tmp_path)
    steps = trainer.global_step
    assert 0 < (after - before).norm() <= 0.5 * 0.001 * steps + 1e-6


@pytest.mark.parametrize("option", ["trainer.amp=bf16", "trainer.amp=fp16", "trainer.channels_last=true",
                                    "trainer.compile={backend: eager}", "trainer.deterministic=true"])
def test_each_speed_switch_trains_and_checkpoints(tmp_path, option):
    try:
        assert train.main(fast_args(tmp_path, option, "trainer.epochs=1", "trainer.monitor=min val_loss")) == 0
    finally:
        torch.use_deterministic_algorithms(False)
    state = load_checkpoint(only_run(tmp_path) / "model_best.pth")
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert not any(name.startswith("_orig_mod") for name in state["model"])
    if option == "trainer.amp=fp16":
        assert state["scaler"] is not None and state["scaler"]["scale"] > 0
        assert train.main(["--resume", str(only_run(tmp_path)), "--epochs", "2"]) == 0
