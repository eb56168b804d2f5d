"""The device-resident fast path: the whole decoded, preprocessed data set lives on the training device as
two tensors, and batches are taken by indexing, with random crop and flip done on the device per batch.

For data sets that fit in memory (MNIST, CIFAR-10, the digits), this removes the per-sample Python work and
the host-to-device copies that bound small models. The data order is the ordinary loader's (same seed, same
order) and resumes mid-epoch the same way.
"""
from __future__ import annotations

import os
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from data_loader.base import BaseDataLoader, process_share
from data_loader.factory import build_data_loader, data_state
from data_loader.sampling import ResumableSampler
from utils.errors import ConfigError, DataError


class DeviceBatches:
    """Batches of `images`/`targets` (already on the device) in the order of a ResumableSampler."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, batch_size: int, sampler: ResumableSampler,
                 drop_last: bool = False, crop_padding: int = 0, hflip: bool = False):
        self.images, self.targets = images, targets
        self.dataset = TensorDataset(images, targets)
        self.batch_size = batch_size
        self.sampler = sampler
        self.drop_last = drop_last
        self.crop_padding = crop_padding
        self.hflip = hflip

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        device = self.images.device
        first = self.sampler.start // self.batch_size
        order = self.sampler.order().to(device, non_blocking=True)
        for number in range(first, len(self)):
            index = order[(number - first) * self.batch_size:(number - first + 1) * self.batch_size]
            images = self.images[index]
            if self.crop_padding or self.hflip:
                generator = torch.Generator(device=device).manual_seed(self.sampler.draw_seed(100_003, number))
                images = self._augment(images, generator)
            yield images, self.targets[index]

    def _augment(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random crop after zero padding, and horizontal flip, drawn per sample."""
        n, _, height, width = images.shape
        device = images.device
        if self.crop_padding:
            pad = self.crop_padding
            padded = F.pad(images, (pad, pad, pad, pad))
            dy = torch.randint(0, 2 * pad + 1, (n, 1), device=device, generator=generator)
            dx = torch.randint(0, 2 * pad + 1, (n, 1), device=device, generator=generator)
            rows = (dy + torch.arange(height, device=device))[:, :, None]
            cols = (dx + torch.arange(width, device=device))[:, None, :]
            images = padded[torch.arange(n, device=device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
        if self.hflip:
            flip = torch.rand(n, device=device, generator=generator) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(3), images)
        return images.contiguous()


class DeviceDataLoader:
    """Wraps another loader of `data_loader/` (`source`), keeping its data on the training device.

    The source's `eval_transform` preprocesses every image once (decode, scale, normalise); random
    augmentation is `augment: {crop_padding: 4, hflip: true}`, done per batch on the device. Batch size,
    shuffling, drop_last and the validation split are the source's. `memory_fraction` is the share of the
    device's free memory the data may take; more is refused with a clear message.
    """

    def __init__(self, source: dict[str, Any], augment: dict[str, Any] | None = None, memory_fraction: float = 0.5,
                 seed: int = 0):
        if not isinstance(source, dict) or "type" not in source:
            raise ConfigError("data_loader.args.source must be {type: <a loader such as CsvImageDataLoader>, "
                              f"args: {{...}}}}, got {source!r}.")
        self.source: BaseDataLoader = build_data_loader(source, seed, key="data_loader.args.source")
        augment = dict(augment or {})
        unknown = set(augment) - {"crop_padding", "hflip"}
        if unknown:
            raise ConfigError(f"data_loader.args.augment takes crop_padding and hflip, not {', '.join(sorted(unknown))}.")
        self.crop_padding = int(augment.get("crop_padding", 0))
        self.hflip = bool(augment.get("hflip", False))
        self.memory_fraction = memory_fraction
        self.seed = seed

    def _to_device(self, dataset: Dataset, device: torch.device | None, what: str) -> tuple[torch.Tensor, torch.Tensor]:
        device = device or torch.device("cpu")
        image, target = dataset[0]
        image, target = torch.as_tensor(image), torch.as_tensor(target)
        needed = len(dataset) * (image.numel() * image.element_size() + target.numel() * target.element_size())
        free = _free_memory(device)
        if free is not None and needed > self.memory_fraction * free:
            raise DataError(f"The {what} data needs {needed / 2**30:.2f} GiB on {device}, more than "
                            f"memory_fraction={self.memory_fraction} of the {free / 2**30:.2f} GiB free there. Use the "
                            f"ordinary loader (data_loader.type: {type(self.source).__name__}) for this data set.")
        loader = DataLoader(dataset, batch_size=512, num_workers=self.source.num_workers)
        images, targets = zip(*loader)
        return torch.cat(images).to(device), torch.cat(targets).to(device)

    def _batches(self, dataset: Dataset, indices, device, what: str, train: bool) -> DeviceBatches:
        images, targets = self._to_device(dataset, device, what)
        sampler = ResumableSampler(indices, shuffle=train and self.source.shuffle, seed=self.seed,
                                   repeats=self.source.repeated_augmentations if train else 1,
                                   **process_share(pad=train))
        return DeviceBatches(images, targets, self.source.batch_size, sampler,
                             drop_last=train and self.source.drop_last,
                             crop_padding=self.crop_padding if train else 0, hflip=train and self.hflip)

    def train_loader(self, device: torch.device | None = None) -> DeviceBatches:
        train_indices = self.source.split()[0]
        dataset = Subset(self.source.make_dataset(True, self.source.eval_transform), train_indices)
        batches = self._batches(dataset, range(len(train_indices)), device, "training", train=True)
        batches.batch_transform = self.source.batch_transform  # the source's MixUp / CutMix, applied by the trainer
        return batches

    def val_loader(self, device: torch.device | None = None) -> DeviceBatches | None:
        val_indices = self.source.split()[1]
        if not val_indices:
            return None
        dataset = Subset(self.source.make_dataset(True, self.source.eval_transform), val_indices)
        return self._batches(dataset, range(len(val_indices)), device, "validation", train=False)

    def test_loader(self, device: torch.device | None = None) -> DeviceBatches:
        dataset = self.source.make_dataset(False, self.source.eval_transform)
        return self._batches(dataset, range(len(dataset)), device, "test", train=False)

    def state_dict(self) -> dict[str, Any]:
        """The source loader's own state (class names, fitted statistics), which checkpoints keep."""
        return data_state(self.source)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if callable(getattr(self.source, "load_state_dict", None)):
            self.source.load_state_dict(state)


def _free_memory(device: torch.device) -> int | None:
    """Free bytes on `device`, or None where it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu" and hasattr(os, "sysconf") and "SC_AVPHYS_PAGES" in os.sysconf_names:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None
