"""The speed switches of the trainer and the device-resident loader: each trains, and each keeps its promise."""

import pytest
import torch
from torch import nn

import train
from data_loader.builtin import CsvImageDataLoader
from data_loader.device_loader import DeviceBatches, DeviceDataLoader, affine
from data_loader.factory import TrainingData, build_data_loader
from data_loader.sampling import ResumableSampler
from trainer.checkpoint import load_checkpoint
from trainer.trainer import Trainer
from utils.config import Config
from utils.errors import DataError

from helpers import REPO, fast_args, only_run

EVAL = [{"type": "ToDtype", "args": {"dtype": "float32", "scale": True}}, {"type": "Normalize", "args": {"mean": [0.3], "std": [0.4]}}]
SOURCE = {"data_dir": str(REPO / "data" / "digits"), "batch_size": 50, "validation_split": 0.2, "eval_transform": EVAL}
AUGMENTS = {"crop+flip": {"crop_padding": 2, "hflip": True}, "affine": {"degrees": 10, "translate": [0.1, 0.1]},
            "all": {"crop_padding": 1, "hflip": True, "degrees": 15, "translate": [0.2, 0.1]}}


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


@pytest.mark.parametrize("augment", AUGMENTS.values(), ids=AUGMENTS)
def test_device_augmentation_is_seeded_per_batch_and_resumes_mid_epoch(augment):
    def batches(augment, skip=0):
        loader = DeviceDataLoader({"type": "CsvImageDataLoader", "args": SOURCE}, augment=augment).train_loader()
        loader.sampler.set_epoch(1)
        loader.sampler.skip(skip * loader.batch_size)
        return list(loader)

    full, plain = batches(augment), batches(None)
    assert len(full) == len(plain)
    for (x, y), (x_plain, y_plain) in zip(full, plain):
        assert x.shape == x_plain.shape and x.dtype == x_plain.dtype == torch.float32
        assert not torch.equal(x, x_plain)  # every batch is augmented
        assert torch.equal(y, y_plain)  # the same samples in the same order
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full, batches(augment)))  # the same seed draws the same
    resumed = batches(augment, skip=5)
    assert len(resumed) == len(full) - 5
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full[5:], resumed))


def test_affine_is_drawn_per_sample_and_per_batch_from_the_seed():
    digit = DeviceDataLoader({"type": "CsvImageDataLoader", "args": SOURCE}).train_loader().images[:1]
    images = digit.repeat(128, 1, 1, 1)  # one image 128 times: any difference comes from the draws

    def batches(seed):
        sampler = ResumableSampler(range(128), shuffle=False, seed=seed)
        return [x for x, _ in DeviceBatches(images, torch.zeros(128), 64, sampler, degrees=10, translate=(0.1, 0.1))]

    first, second = batches(0)
    assert len({tuple(x.flatten().tolist()) for x in first}) == 64  # each sample its own draw
    assert not torch.equal(first, second)  # each batch its own seed
    assert torch.equal(first, batches(0)[0]) and not torch.equal(first, batches(1)[0])
    assert torch.isclose(first[:, 0, 0, 0], digit.min()).float().mean() > 0.5  # corners filled with black


def test_affine_turns_and_shifts_as_torchvision_does():
    from torchvision.transforms.v2 import functional as TF

    images = torch.rand(2, 3, 12, 16, generator=torch.Generator().manual_seed(0))
    degrees, shift = torch.tensor([10.0, -30.0]), torch.tensor([[2 / 16, 0.0], [-1 / 16, 3 / 12]])
    ours = affine(images, degrees, shift, torch.zeros(1, 3, 1, 1))
    for i, (dx, dy) in enumerate([(2, 0), (-1, 3)]):
        theirs = TF.affine(images[i], angle=float(degrees[i]), translate=[dx, dy], scale=1.0, shear=[0.0, 0.0],
                           interpolation=TF.InterpolationMode.BILINEAR)
        assert torch.allclose(ours[i], theirs, atol=1e-5)


@pytest.mark.parametrize("augment, message", [
    ({"degree": 10}, "augment takes crop_padding, hflip, degrees and translate, not degree"),
    ({"degrees": -5}, "augment.degrees must be a number from 0 to 180"),
    ({"degrees": "10"}, "augment.degrees must be a number"),
    ({"translate": 0.1}, r"augment.translate must be two fractions from 0 to 1, \[width, height\]"),
    ({"translate": [0.1, 1.5]}, "augment.translate must be two fractions"),
    ({"crop_padding": 1.5}, "augment.crop_padding must be a whole number"),
    ({"hflip": "yes"}, "augment.hflip must be true or false"),
    ([10], "augment must be a mapping"),
])
def test_bad_augment_settings_are_refused_by_name(augment, message):
    with pytest.raises(ValueError, match="^" + message):
        DeviceDataLoader({"type": "CsvImageDataLoader", "args": SOURCE}, augment=augment)


def test_source_args_beside_it_reach_the_source_so_short_flags_work():
    flat = DeviceDataLoader(source="CsvImageDataLoader", **SOURCE).train_loader()
    nested = DeviceDataLoader({"type": "CsvImageDataLoader", "args": {**SOURCE, "batch_size": 7}},
                              batch_size=SOURCE["batch_size"]).train_loader()
    assert all(torch.equal(a[0], b[0]) for a, b in zip(flat, nested)) and len(flat) == len(nested)
    config = Config.load(REPO / "configs" / "config.yaml", bs=32)
    assert config["data_loader"]["type"] == "DeviceDataLoader"  # the default example
    assert build_data_loader(config["data_loader"], config["seed"]).train_loader().batch_size == 32
    with pytest.raises(ValueError, match="^transform: DeviceDataLoader does not use it.*augment"):
        DeviceDataLoader(source="CsvImageDataLoader", **SOURCE, transform=EVAL)


def test_device_loader_checks_samples_as_the_ordinary_loader_does(tmp_path, caplog):
    from torchvision.io import write_png

    from helpers import small_copy

    root = small_copy(tmp_path, rows=40)
    source = {**SOURCE, "data_dir": str(root), "validation_split": 0}
    with pytest.raises(DataError, match=r"image '.*0000\.png' \(line 2 of labels\.csv\) has 1 channel, but the data "
                                        r"loader's channels is 3"):
        DeviceDataLoader(source="CsvImageDataLoader", **source, channels=3).train_loader()
    count = len(DeviceDataLoader(source="CsvImageDataLoader", **source).train_loader().images)
    write_png(torch.zeros(3, 8, 8, dtype=torch.uint8), str(root / "images" / "0003.png"))  # one RGB image
    with pytest.raises(DataError, match=r"The samples of a batch do not fit together .*image_mode to gray or rgb"):
        DeviceDataLoader(source="CsvImageDataLoader", **source).train_loader()
    (root / "images" / "0003.png").write_bytes(b"")  # now unreadable
    with pytest.raises(DataError, match=r"Cannot read image '.*0003\.png'"):
        DeviceDataLoader(source="CsvImageDataLoader", **source).train_loader()
    batches = DeviceDataLoader(source="CsvImageDataLoader", **source, skip_bad=True).train_loader()
    assert len(batches.images) == count - 1 and "Left out 1 bad sample(s) of the training data" in caplog.text


def test_device_loader_refuses_data_that_does_not_fit():
    loader = DeviceDataLoader({"type": "CsvImageDataLoader", "args": SOURCE}, memory_fraction=1e-12)
    with pytest.raises(DataError, match=r"training data needs .* GiB on cpu.*Use the ordinary loader"):
        loader.train_loader(torch.device("cpu"))
    for fraction in (0, 1.5, "half"):
        with pytest.raises(ValueError, match=r"^memory_fraction must be a share of the free memory in \(0, 1\]"):
            DeviceDataLoader({"type": "CsvImageDataLoader", "args": SOURCE}, memory_fraction=fraction)


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
                   TrainingData(data.train_loader()))


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
