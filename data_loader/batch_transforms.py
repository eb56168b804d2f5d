"""MixUp and CutMix on whole training batches (the data loader's `batch_transform`), as torchvision's classification
reference applies them (`--mixup-alpha`, `--cutmix-alpha`): `torchvision.transforms.v2.MixUp` and `CutMix`, one of
the two picked at random for each batch when both are given. Labels become class probabilities, which
`cross_entropy` (and CrossEntropyLoss) and the metrics read (accuracy counts the class of highest probability).

The trainer applies it to each batch once on the device, with the ordinary and the device-resident loader alike.
Each batch draws from its own seed (the run's seed, the epoch and the batch number, through the sampler), not from
the global random state, so a resumed run mixes every batch as the uninterrupted run did.
"""
from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import v2

from data_loader.sampling import ResumableSampler
from utils.device import to_device
from utils.errors import ConfigError

BATCH_SEEDS = 1_000_033  # the stream of ResumableSampler.draw_seed that batch mixing draws from
KEYS = ("mixup_alpha", "cutmix_alpha")


class BatchMix:
    """MixUp (`mixup_alpha` > 0), CutMix (`cutmix_alpha` > 0), or a random choice of the two per batch."""

    def __init__(self, mixup_alpha: float, cutmix_alpha: float, num_classes: int):
        steps = ([v2.MixUp(alpha=mixup_alpha, num_classes=num_classes)] if mixup_alpha > 0 else []) \
            + ([v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes)] if cutmix_alpha > 0 else [])
        self.transform = steps[0] if len(steps) == 1 else v2.RandomChoice(steps)

    def __call__(self, batch: Any, sampler: ResumableSampler, number: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch `number` of the sampler's current epoch, mixed: images (N, C, H, W) and labels (N,) or (N, K)
        give mixed images and (N, K) class probabilities."""
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ConfigError("The data loader's batch_transform (MixUp, CutMix) takes batches of (images, labels); "
                              "this loader's batches are not such pairs.")
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(sampler.draw_seed(BATCH_SEEDS, number))  # not the devices' ones
            data, target = self.transform(*batch)
        return data, target


def training_batch(batch: Any, mix: BatchMix | None, sampler: Any, number: int, device: torch.device,
                   channels_last: bool) -> Any:
    """Training batch `number` of `sampler`'s epoch on the device, mixed by `mix` (MixUp, CutMix) unless None."""
    batch = to_device(batch, device, channels_last)
    return batch if mix is None else mix(batch, sampler, number)


def build_batch_transform(spec: Any, num_classes: int | None) -> BatchMix | None:
    """The BatchMix of a loader's `batch_transform` ({mixup_alpha, cutmix_alpha}); None when off."""
    if spec is None:
        return None
    key = "batch_transform"
    if not isinstance(spec, dict) or set(spec) - set(KEYS):
        raise ValueError(f"{key} must be a mapping of {' and '.join(KEYS)}, e.g. {{mixup_alpha: 0.2, "
                         f"cutmix_alpha: 1.0}}; got {spec!r}.")
    alphas = {name: spec.get(name, 0.0) for name in KEYS}
    for name, alpha in alphas.items():
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha < 0:
            raise ValueError(f"{key}.{name} must be a number >= 0 (0: off); got {alpha!r}.")
    if not any(alphas.values()):
        return None
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"{key} needs the data loader's num_classes (got {num_classes!r}): MixUp and CutMix turn "
                         "labels into probabilities over that many classes.")
    return BatchMix(float(alphas["mixup_alpha"]), float(alphas["cutmix_alpha"]), num_classes)
