"""The device-resident fast path: the whole decoded, preprocessed data set lives on the training device as
two tensors, and batches are taken by indexing, with random crop, flip and affine (rotation, translation)
done on the device per batch, drawn per sample.

For data sets that fit in memory (MNIST, CIFAR-10, the digits), this removes the per-sample Python work and
the host-to-device copies that bound small models. The data order is the ordinary loader's (same seed, same
order) and resumes mid-epoch the same way.
"""
from __future__ import annotations

import logging
import math
import os
from numbers import Real
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from data_loader.base import BaseDataLoader, batches_of, process_share
from data_loader.checks import CheckedDataset, collate_or_none, misfit
from data_loader.factory import build_data_loader, data_state
from data_loader.sampling import ResumableSampler
from data_loader.transforms import TRANSFORM_ORDER
from utils.construct import arg_path
from utils.errors import ConfigError, DataError, TemplateError, reason

log = logging.getLogger(__name__)


class DeviceBatches:
    """Batches of `images`/`targets` (already on the device) in the order of a ResumableSampler."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, batch_size: int, sampler: ResumableSampler,
                 drop_last: bool = False, crop_padding: int = 0, hflip: bool = False, degrees: float = 0.0,
                 translate: tuple[float, float] = (0.0, 0.0), origin: Dataset | None = None):
        self.images, self.targets = images, targets
        self.dataset = TensorDataset(images, targets)
        self.origin = origin  # the dataset sample i came from, for naming it in a report (data_loader/checks.py)
        self.batch_size = batch_size
        self.sampler = sampler
        self.drop_last = drop_last
        self.crop_padding = crop_padding
        self.hflip = hflip
        self.degrees = float(degrees)
        self.translate = (float(translate[0]), float(translate[1]))
        self.affine = bool(self.degrees or any(self.translate))
        if (crop_padding or hflip or self.affine) and images.dim() != 4:
            raise DataError(f"augment works on images (N, C, H, W); this data set's samples have the "
                            f"shape {tuple(images.shape[1:])}. Remove augment.")
        if self.affine and not images.is_floating_point():
            raise DataError("augment's degrees and translate need float images; end the source's "
                            "eval_transform with {type: ToDtype, args: {dtype: float32, scale: true}}.")
        # Uncovered pixels get each channel's smallest value: black, as torchvision's fill=0 before Normalize.
        self.fill = images.amin(dim=(0, 2, 3)).view(1, -1, 1, 1) if self.affine and len(images) else None

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
            if self.crop_padding or self.hflip or self.affine:
                generator = torch.Generator(device=device).manual_seed(self.sampler.draw_seed(100_003, number))
                images = self._augment(images, generator)
            yield images, self.targets[index]

    def _augment(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random crop after zero padding, horizontal flip, then rotation and translation, drawn per sample."""
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
        if self.affine:
            images = self._affine(images, generator)
        return images.contiguous()

    def _affine(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, device = len(images), images.device
        angle = (torch.rand(n, device=device, generator=generator) * 2 - 1) * self.degrees
        shift = (torch.rand(n, 2, device=device, generator=generator) * 2 - 1) * torch.tensor(self.translate,
                                                                                            device=device)
        return affine(images, angle, shift, self.fill)


def affine(images: torch.Tensor, degrees: torch.Tensor, shift: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Rotate each image of `images` (N, C, H, W) about its centre by `degrees[i]` (clockwise on screen, as
    torchvision's `affine`) and shift it by `shift[i]` = (share of its width to the right, share of its height
    down); bilinear, with `fill` (per channel) where no input pixel lands."""
    height, width = images.shape[-2:]
    angle = torch.deg2rad(degrees)
    cos, sin = angle.cos(), angle.sin()
    fx, fy = shift[:, 0], shift[:, 1]
    # affine_grid maps each output pixel (in -1..1 coordinates) to the input pixel it is read from: the inverse
    # rotation of the output pixel less the shift, computed in pixels so that non-square images do not shear.
    theta = torch.stack([
        torch.stack([cos, sin * height / width, -2 * (cos * fx + sin * fy * height / width)], 1),
        torch.stack([-sin * width / height, cos, 2 * (sin * fx * width / height - cos * fy)], 1),
    ], 1).to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill


class DeviceDataLoader:
    """Wraps another loader of `data_loader/` (`source`), keeping its data on the training device.

    `source` names the loader (`source: CsvImageDataLoader`) and the other args are its args (`data_dir`,
    `batch_size`, ...), so `--bs` and the config's other data loader args reach it; `source: {type, args}` works too
    (args given beside it win). The source's `eval_transform` preprocesses every image once (decode, scale,
    normalise); random augmentation is `augment: {crop_padding: 4, hflip: true, degrees: 10, translate: [0.1,
    0.1]}`, drawn per sample and done per batch on the device. Batch size, shuffling, drop_last and the
    validation split are the source's. `memory_fraction` is the share of the device's free memory the data may
    take; more is refused with a clear message.
    """

    def __init__(self, source: dict[str, Any] | str | None = None, augment: dict[str, Any] | None = None,
                 memory_fraction: float = 0.5, seed: int = 0, **source_args: Any):

        if isinstance(source, str):
            source = {"type": source}
        if not isinstance(source, dict) or "type" not in source:
            raise ValueError("source must name the loader that reads the data, such as CsvImageDataLoader (its args "
                             f"beside it), or be {{type: <loader>, args: {{...}}}}; got {source!r}.")
        if "transform" in source_args:
            raise ValueError("transform: DeviceDataLoader does not use it: eval_transform prepares each image once, and "
                             "random augmentation is augment (crop_padding, hflip, degrees, translate), done on the "
                             "device. Move the random steps there.")
        nested = source.get("args") or {}
        try:  # errors name the source's args: those beside it as they are, those of `source: {type, args}` below it
            self.source: BaseDataLoader = build_data_loader({"type": source["type"], "args": {**nested, **source_args}},
                                                            seed, key="source", source=None)
        except ValueError as e:
            if arg_path(str(e), nested) and not arg_path(str(e), source_args):
                raise ValueError(f"source.args.{e}") from None
            raise
        self.crop_padding, self.hflip, self.degrees, self.translate = _augment_settings(augment)
        if isinstance(memory_fraction, bool) or not isinstance(memory_fraction, Real) or not 0 < memory_fraction <= 1:
            raise ValueError(f"memory_fraction must be a share of the free memory in (0, 1], e.g. 0.5; got "
                             f"{memory_fraction!r}.")
        self.memory_fraction = memory_fraction
        self.seed = seed

    def _to_device(self, dataset: Dataset, device: torch.device | None, what: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Every sample of `dataset`, checked as the ordinary loader checks them (readable, `channels`, of one
        shape; with `skip_bad`, bad ones left out and counted), stacked on `device`."""
        device = device or torch.device("cpu")
        checked = CheckedDataset(dataset, self.source.channels, self.source.bad_samples)
        try:
            image, target = (torch.as_tensor(part) for part in self._first_good(dataset))
            needed = len(dataset) * (image.numel() * image.element_size() + target.numel() * target.element_size())
            free = _free_memory(device)
            if free is not None and needed > self.memory_fraction * free:
                raise DataError(f"The {what} data needs {needed / 2**30:.2f} GiB on {device}, more than "
                                f"memory_fraction={self.memory_fraction} of the {free / 2**30:.2f} GiB free there. Use "
                                f"the ordinary loader (data_loader.type: {type(self.source).__name__}) for this data "
                                "set.")
            loader = DataLoader(checked, batch_size=512, num_workers=self.source.num_workers,
                                collate_fn=collate_or_none)
            batches = [batch for batch in batches_of(loader) if batch is not None]
        except TemplateError:
            raise
        except Exception as e:  # eval_transform cannot take the images (the usual cause), or the dataset's own code
            raise ConfigError(f"The {what} data cannot be prepared ({type(e).__name__}: {reason(e)}). "
                              "When eval_transform is the cause, check the data loader's eval_transform: each step's "
                              f"args, and their order ({TRANSFORM_ORDER}).") from None
        try:
            images, targets = (torch.cat(parts) for parts in zip(*batches))
        except RuntimeError as e:  # batches of different shapes
            raise misfit(e) from None
        skipped = self.source.bad_samples.take() if self.source.bad_samples is not None else 0
        if skipped:
            log.warning("Left out %d bad sample(s) of the %s data (skip_bad: true).", skipped, what)
        return images.to(device), targets.to(device)

    def _first_good(self, dataset: Dataset) -> Any:
        """The first sample that passes the checks (with `skip_bad`, bad ones before it are passed over here and
        counted in the full pass), for the memory estimate."""
        checked = CheckedDataset(dataset, self.source.channels)
        for index in range(len(checked)):
            try:
                return checked[index]
            except DataError:
                if not self.source.skip_bad:
                    raise
        raise DataError("Every sample of the data is bad (skip_bad: true leaves them out). Check the "
                        "data folder.")

    def _batches(self, dataset: Dataset, device, what: str, train: bool) -> DeviceBatches:
        images, targets = self._to_device(dataset, device, what)
        indices = range(len(images))
        sampler = ResumableSampler(indices, shuffle=train and self.source.shuffle, seed=self.seed,
                                   repeats=self.source.repeated_augmentations if train else 1,
                                   **process_share(pad=train))
        if not train:
            return DeviceBatches(images, targets, self.source.batch_size, sampler,
                                 origin=dataset if len(images) == len(dataset) else None)
        return DeviceBatches(images, targets, self.source.batch_size, sampler, drop_last=self.source.drop_last,
                             crop_padding=self.crop_padding, hflip=self.hflip, degrees=self.degrees,
                             translate=self.translate)

    def train_loader(self, device: torch.device | None = None) -> DeviceBatches:
        train_indices = self.source.split()[0]
        dataset = Subset(self.source.make_dataset(True, self.source.eval_transform), train_indices)
        return self._batches(dataset, device, "training", train=True)

    def val_loader(self, device: torch.device | None = None) -> DeviceBatches | None:
        """The source's validation data of its own (`make_val_dataset`), or the validation split of its training
        data."""
        dataset = self.source.make_val_dataset(self.source.eval_transform)
        if dataset is None:
            val_indices = self.source.split()[1]
            if not val_indices:
                return None
            dataset = Subset(self.source.make_dataset(True, self.source.eval_transform), val_indices)
        return self._batches(dataset, device, "validation", train=False)

    def test_loader(self, device: torch.device | None = None) -> DeviceBatches:
        """The source's test files, or the share of its training files that `test_split` holds out."""
        if self.source.test_split:
            dataset = Subset(self.source.make_dataset(True, self.source.eval_transform), self.source.split()[2])
        else:
            dataset = self.source.make_dataset(False, self.source.eval_transform)
        return self._batches(dataset, device, "test", train=False)

    @property
    def batch_transform(self) -> Any:
        """The source's MixUp / CutMix, which the trainer applies to the training batches."""
        return self.source.batch_transform

    @property
    def bad_samples(self) -> Any:
        return self.source.bad_samples

    def model_args(self) -> dict[str, Any]:
        """The values the source loader learned from the data, for the model's constructor."""
        return self.source.model_args() if callable(getattr(self.source, "model_args", None)) else {}

    def state_dict(self) -> dict[str, Any]:
        """The source loader's own state (class names, fitted statistics), which checkpoints keep."""
        return data_state(self.source)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if callable(getattr(self.source, "load_state_dict", None)):
            self.source.load_state_dict(state)


def _augment_settings(augment: Any) -> tuple[int, bool, float, tuple[float, float]]:
    """`augment` checked: crop_padding, hflip, degrees, translate (each off by default)."""
    where = "augment"
    if augment is None:
        augment = {}
    if not isinstance(augment, dict):
        raise ValueError(f"{where} must be a mapping such as {{degrees: 10, translate: [0.1, 0.1]}}, got {augment!r}.")
    unknown = set(augment) - {"crop_padding", "hflip", "degrees", "translate"}
    if unknown:
        raise ValueError(f"{where} takes crop_padding, hflip, degrees and translate, not {', '.join(sorted(unknown))}.")

    def number(value: Any) -> bool:
        return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)

    crop_padding = augment.get("crop_padding", 0)
    if not isinstance(crop_padding, int) or isinstance(crop_padding, bool) or crop_padding < 0:
        raise ValueError(f"{where}.crop_padding must be a whole number of pixels >= 0, got {crop_padding!r}.")
    hflip = augment.get("hflip", False)
    if not isinstance(hflip, bool):
        raise ValueError(f"{where}.hflip must be true or false, got {hflip!r}.")
    degrees = augment.get("degrees", 0)
    if not number(degrees) or not 0 <= degrees <= 180:
        raise ValueError(f"{where}.degrees must be a number from 0 to 180 (each image is rotated by an angle drawn "
                         f"from -degrees..degrees), got {degrees!r}.")
    translate = augment.get("translate", [0, 0])
    if (not isinstance(translate, (list, tuple)) or len(translate) != 2
            or not all(number(t) and 0 <= t <= 1 for t in translate)):
        raise ValueError(f"{where}.translate must be two fractions from 0 to 1, [width, height]: each image is "
                         f"shifted by up to that share of its width and height; got {translate!r}.")
    return crop_padding, hflip, float(degrees), (float(translate[0]), float(translate[1]))


def _free_memory(device: torch.device) -> int | None:
    """Free bytes on `device`, or None where it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu" and hasattr(os, "sysconf") and "SC_AVPHYS_PAGES" in os.sysconf_names:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None
