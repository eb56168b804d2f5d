"""The switches of torchvision's classification reference, from the config (docs/recipes.md): each one does what
the reference's does, on the bundled digits."""
import math

import pytest
import torch
import torch.nn.functional as F

import train
from data_loader.batch_transforms import training_batch
from data_loader.builtin import CsvImageDataLoader
from data_loader.device_loader import DeviceDataLoader
from data_loader.factory import build_data_loader
from data_loader.sampling import ResumableSampler
from data_loader.transforms import build_transforms
from model.builtin.losses import cross_entropy
from model.builtin.metrics import accuracy
from model.factory import build_model, build_optimizer
from trainer.checkpoint import load_checkpoint
from trainer.scheduler import build_lr_scheduler
from trainer.trainer import Trainer
from utils.config import Config
from utils.errors import ConfigError

from fake_data import patch_cifar10_sums, write_cifar10
from helpers import FAST, REPO, fast_args, only_run, train_example

EVAL = [{"type": "ToDtype", "args": {"dtype": "float32", "scale": True}}]
DIGITS = {"data_dir": str(REPO / "data" / "digits"), "batch_size": 32, "num_classes": 10, "eval_transform": EVAL}
CPU = torch.device("cpu")


def first_batch_mixed(number: int, **mix):
    """The first training batch of epoch 1 of the digits, and the same batch mixed as batch `number`."""
    data = CsvImageDataLoader(**DIGITS, transform=EVAL, batch_transform=mix)
    loader = data.train_loader()
    loader.sampler.set_epoch(1)
    images, labels = next(iter(loader))
    return images, labels, training_batch((images, labels), data.batch_transform, loader.sampler, number, CPU, False)


def test_mixup_targets_are_convex_combinations_whose_weights_sum_to_one():
    images, labels, (mixed, target) = first_batch_mixed(0, mixup_alpha=0.4)
    assert target.shape == (32, 10) and (target >= 0).all()
    assert torch.allclose(target.sum(dim=1), torch.ones(32))
    # One weight for the batch: each sample with its predecessor (torchvision pairs consecutive samples).
    first = next(i for i in range(32) if labels[i] != labels[i - 1])
    lam = target[first, labels[first]].item()
    assert 0 < lam < 1
    one_hot = F.one_hot(labels, 10).float()
    assert torch.allclose(target, lam * one_hot + (1 - lam) * one_hot.roll(1, 0))
    assert torch.allclose(mixed, lam * images + (1 - lam) * images.roll(1, 0), atol=1e-6)
    # The loss and the metrics read the probabilities: the loss is the same mixture of the two labels' losses.
    output = torch.randn(32, 10)
    assert torch.allclose(cross_entropy(output, target),
                          lam * cross_entropy(output, labels) + (1 - lam) * cross_entropy(output, labels.roll(1)))
    assert accuracy(output, target) == accuracy(output, target.argmax(1))


def test_cutmix_pastes_a_box_and_weights_the_labels_by_its_area():
    images, labels, (mixed, target) = first_batch_mixed(0, cutmix_alpha=1.0)
    assert torch.allclose(target.sum(dim=1), torch.ones(32))
    first = next(i for i in range(32) if labels[i] != labels[i - 1])
    lam = target[first, labels[first]].item()
    one_hot = F.one_hot(labels, 10).float()
    assert torch.allclose(target, lam * one_hot + (1 - lam) * one_hot.roll(1, 0))
    rolled = images.roll(1, 0)
    assert ((mixed == images) | (mixed == rolled)).all()  # every pixel is one of the two images'
    pasted = (mixed != images).any(dim=(0, 1)).sum().item()  # pixels where some image shows its predecessor's
    assert 0 < pasted <= round((1 - lam) * 64)


def test_mixing_is_seeded_per_batch_and_leaves_the_global_random_state_alone():
    _, _, (a, target_a) = first_batch_mixed(5, mixup_alpha=0.2, cutmix_alpha=1.0)
    state = torch.get_rng_state()
    torch.manual_seed(123)
    _, _, (b, target_b) = first_batch_mixed(5, mixup_alpha=0.2, cutmix_alpha=1.0)
    assert torch.equal(a, b) and torch.equal(target_a, target_b)
    torch.set_rng_state(state)
    images, _, _ = first_batch_mixed(0)
    kinds = set()
    for number in range(20):  # both alphas: MixUp or CutMix, chosen per batch
        _, _, (mixed, _) = first_batch_mixed(number, mixup_alpha=0.2, cutmix_alpha=1.0)
        blended = ~((mixed == images) | (mixed == images.roll(1, 0)))
        kinds.add("mixup" if blended.any() else "cutmix")
    assert kinds == {"mixup", "cutmix"}
    before = torch.get_rng_state()
    first_batch_mixed(7, mixup_alpha=0.2)
    assert torch.equal(before, torch.get_rng_state())


def test_mixing_reseeds_no_device_generator(monkeypatch):
    # CUDA's and MPS's generators (dropout on the GPU, seeded per process) are not the mix's to touch.
    seeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: seeded.append(seed))
    monkeypatch.setattr(torch.mps, "manual_seed", lambda seed: seeded.append(seed))
    first_batch_mixed(3, mixup_alpha=0.2, cutmix_alpha=1.0)
    assert seeded == []


def test_mixing_on_the_device_loader(tmp_path):
    source = {"type": "CsvImageDataLoader", "args": {**DIGITS, "batch_transform": {"cutmix_alpha": 1.0}}}
    data = DeviceDataLoader(source)
    loader = data.train_loader(CPU)
    loader.sampler.set_epoch(1)
    _, target = training_batch(next(iter(loader)), data.batch_transform, loader.sampler, 0, CPU, False)
    assert target.shape == (32, 10) and torch.allclose(target.sum(dim=1), torch.ones(32))
    config = ("data_loader={type: DeviceDataLoader, args: {source: {type: CsvImageDataLoader, args: {data_dir: "
              "data/digits, num_classes: 10, batch_transform: {mixup_alpha: 0.2, cutmix_alpha: 1.0}, eval_transform: "
              "[{type: ToDtype, args: {dtype: float32, scale: true}}]}}, augment: {crop_padding: 1}}}")
    assert train.main(fast_args(tmp_path, config, "trainer.epochs=1")) == 0
    assert 0 < load_checkpoint(only_run(tmp_path) / "checkpoint-latest.pth")["history"][0]["loss"] < 3


def test_batch_transform_needs_the_number_of_classes_and_known_keys():
    digits = {**DIGITS, "num_classes": None}
    with pytest.raises(ValueError, match=r"^batch_transform needs the data loader's num_classes"):
        CsvImageDataLoader(**digits, batch_transform={"mixup_alpha": 0.2})
    with pytest.raises(ValueError, match=r"^batch_transform must be a mapping of mixup_alpha and cutmix_alpha"):
        CsvImageDataLoader(**DIGITS, batch_transform={"mixup": 0.2})
    # Built from a config, the message names the whole key and who set it.
    config = Config.load(REPO / "configs" / "config.yaml", [*FAST, "data_loader.args.num_classes=10",
                                                            "data_loader.args.batch_transform={cutmix_alpha: -1}"])
    with pytest.raises(ConfigError, match=r"^command line \(data_loader\.args\.batch_transform=\{cutmix_alpha: -1\}\): "
                                          r"'data_loader\.args\.batch_transform\.cutmix_alpha' must be a number >= 0"):
        build_data_loader(config["data_loader"], 0, source=config.source)


def cosine_after_warmup(base: float, warmup: int, t_max: int, start: float, linear: bool):
    """The learning rate of step (or epoch) t: the reference's warmup, then CosineAnnealingLR from its start."""
    def lr(t: int) -> float:
        if t < warmup:
            return base * (start + (1 - start) * t / warmup if linear else start)
        return base * (1 + math.cos(math.pi * (t - warmup) / t_max)) / 2
    return lr


def test_step_warmup_lr_follows_the_formula_at_every_step(tmp_path, monkeypatch):
    used = []
    step = Trainer.optimizer_step

    def recording_step(self):
        used.append(self.optimizer.param_groups[0]["lr"])  # the rate this step uses
        step(self)

    monkeypatch.setattr(Trainer, "optimizer_step", recording_step)
    assert train.main(fast_args(tmp_path, "lr_scheduler.interval=step", "lr_scheduler.args.T_max=32",
                                "lr_scheduler.warmup={steps: 8, decay: 0.1}")) == 0
    expected = cosine_after_warmup(3e-3, 8, 32, 0.1, linear=True)
    assert len(used) == 40
    for t, lr in enumerate(used):
        assert lr == pytest.approx(expected(t), rel=1e-9, abs=1e-12), t


def test_epoch_warmup_constant_then_the_scheduler():
    warmup = "lr_scheduler.warmup={epochs: 3, method: constant, decay: 0.25}"
    config = Config.load(REPO / "configs" / "config.yaml", ["lr_scheduler.args.T_max=7", warmup])
    optimizer = build_optimizer(config, build_model(config))
    scheduler = build_lr_scheduler(config, optimizer)
    expected = cosine_after_warmup(3e-3, 3, 7, 0.25, linear=False)
    for epoch in range(10):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected(epoch), rel=1e-9), epoch
        optimizer.step()  # no gradients: changes nothing, but keeps the order torch expects
        scheduler.step()
    plateau = Config.load(REPO / "configs" / "config.yaml",
                          ["lr_scheduler={type: ReduceLROnPlateau, warmup: {epochs: 2}}"])
    with pytest.raises(ConfigError, match="lr_scheduler.warmup cannot come before ReduceLROnPlateau"):
        build_lr_scheduler(plateau, optimizer)
    with pytest.raises(ConfigError, match="'lr_scheduler.warmup.steps' does not fit 'lr_scheduler.interval: epoch'"):
        Config.load(REPO / "configs" / "config.yaml", ["lr_scheduler.warmup={steps: 100}"])


def decay_of(config_overrides: list[str]) -> dict[str, tuple[float, float]]:
    """(weight_decay, lr) of each DigitsCNN parameter in the optimizer the config builds."""
    config = Config.load(REPO / "configs" / "config.yaml", config_overrides)
    model = build_model(config)
    optimizer = build_optimizer(config, model)
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    return {name: (group_of[id(p)]["weight_decay"], group_of[id(p)]["lr"]) for name, p in model.named_parameters()}


def test_no_decay_leaves_norm_layers_and_biases_without_weight_decay():
    plain = decay_of([])
    assert {wd for wd, _ in plain.values()} == {1e-4}
    decays = decay_of(["optimizer.no_decay=true"])
    norm = {f"features.{i}.{p}" for i in (1, 4, 8) for p in ("weight", "bias")}  # the BatchNorm layers
    for name, (wd, lr) in decays.items():
        assert wd == (0.0 if name in norm or name.endswith("bias") else 1e-4), name
        assert lr == 3e-3
    # With parameter groups: each group is split, keeping its own settings.
    grouped = decay_of(["optimizer.no_decay=[bias]", "optimizer.param_groups=[{modules: [classifier], lr: 0.1}]"])
    assert grouped["classifier.2.weight"] == (1e-4, 0.1) and grouped["classifier.2.bias"] == (0.0, 0.1)
    assert grouped["features.1.weight"] == (1e-4, 3e-3) and grouped["features.1.bias"] == (0.0, 3e-3)
    assert decay_of(["optimizer.no_decay=[classifier.2.weight]"])["classifier.2.weight"] == (0.0, 3e-3)
    with pytest.raises(ConfigError, match=r"names 'clasifier.2.weight', which is neither.*'classifier.2.weight'"):
        decay_of(["optimizer.no_decay=[clasifier.2.weight]"])


def test_repeated_augmentation_shows_each_sample_reps_times_per_epoch():
    digits = {**DIGITS, "validation_split": 0.15, "transform": EVAL}
    loader = CsvImageDataLoader(**digits, repeated_augmentations=3).train_loader()
    sampler = loader.sampler
    assert len(sampler) == 1221 and len(loader) == len(CsvImageDataLoader(**digits).train_loader())  # as many steps
    seen = []
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert len(order) == 1221
        counts = torch.bincount(torch.tensor(order))
        assert set(counts[counts > 0].tolist()) == {3} and (counts > 0).sum() == 407
        assert all(order[i] == order[i + 1] == order[i + 2] for i in range(0, 1221, 3))  # in a row
        seen.append(set(order))
    assert seen[0] != seen[1]  # another third of the data each epoch
    sampler.set_epoch(2)
    sampler.skip(100)
    assert list(sampler) == order[100:]  # resumable mid-epoch
    with pytest.raises(ValueError, match="repeated_augmentations must be a whole number >= 1"):
        CsvImageDataLoader(**DIGITS, repeated_augmentations=0)
    source = {"type": "CsvImageDataLoader", "args": {**DIGITS, "repeated_augmentations": 2}}
    assert DeviceDataLoader(source).train_loader(CPU).sampler.repeats == 2


def test_repeated_copies_go_to_different_processes_with_their_own_augmentation():
    def share(rank: int) -> list[tuple[int, int]]:
        sampler = ResumableSampler(range(60), seed=3, with_seeds=True, num_replicas=3, rank=rank, repeats=3)
        sampler.set_epoch(1)
        return list(sampler)

    shares = [share(rank) for rank in range(3)]
    assert all(len(s) == 20 for s in shares)
    ranks_of: dict[int, set[int]] = {}
    for rank, items in enumerate(shares):
        for index, _ in items:
            ranks_of.setdefault(index, set()).add(rank)
    assert len(ranks_of) == 20 and all(ranks == {0, 1, 2} for ranks in ranks_of.values())
    seeds = {}
    for items in shares:
        for index, seed in items:
            seeds.setdefault(index, set()).add(seed)
    assert all(len(s) == 3 for s in seeds.values())  # each copy its own augmentation (worker processes)


@pytest.mark.parametrize("step, kind", [
    ({"type": "AutoAugment", "args": {"policy": "imagenet"}}, "AutoAugment"),
    ({"type": "AutoAugment", "args": {"policy": "CIFAR10", "interpolation": "bilinear"}}, "AutoAugment"),
    ({"type": "AutoAugment", "args": {"policy": "svhn"}}, "AutoAugment"),
    ({"type": "RandAugment", "args": {"num_ops": 2, "magnitude": 9}}, "RandAugment"),  # the reference's ra
    ({"type": "TrivialAugmentWide", "args": {"interpolation": "bilinear"}}, "TrivialAugmentWide"),  # ta_wide
    ({"type": "AugMix", "args": {"severity": 3}}, "AugMix"),
])
def test_auto_augment_policies_by_name(step, kind):
    from torchvision.transforms import v2

    transform = build_transforms([step], "data_loader.args.transform")
    assert type(transform).__name__ == kind
    if "policy" in step["args"]:
        assert transform.policy is v2.AutoAugmentPolicy(step["args"]["policy"].lower())
    if "interpolation" in step["args"]:
        assert transform.interpolation is v2.InterpolationMode.BILINEAR
    image = CsvImageDataLoader(**DIGITS).make_dataset(True, transform)[0][0]  # a uint8 digit, augmented
    assert image.shape == (1, 8, 8) and image.dtype == torch.uint8


def test_unknown_policy_names_the_key_and_the_choices():
    with pytest.raises(ValueError, match=r"^transform\[0\]\.args\.policy must be one of imagenet, cifar10, svhn; got "
                                         r"'imagenet1k'"):
        build_transforms([{"type": "AutoAugment", "args": {"policy": "imagenet1k"}}], "transform")


def test_recipe_config_trains_with_every_switch(tmp_path, monkeypatch):
    patch_cifar10_sums(monkeypatch, write_cifar10(tmp_path / "data"))
    assert train_example("cifar10_resnet18_recipe.yaml", tmp_path, "data_loader.args.batch_size=32",
                         "data_loader.args.pin_memory=false", "trainer.channels_last=false") == 0
    state = load_checkpoint(only_run(tmp_path / "saved") / "model_best.pth")
    assert "val_accuracy_ema" in state["history"][0] and state["ema"] is not None
    assert state["lr_scheduler"]["_milestones"] == [5]
    assert {group["weight_decay"] for group in state["optimizer"]["param_groups"]} == {5e-4, 0.0}
    config = state["config"]
    assert config["data_loader"]["args"]["repeated_augmentations"] == 4
    assert config["data_loader"]["args"]["batch_transform"] == {"mixup_alpha": 0.2, "cutmix_alpha": 1.0}
