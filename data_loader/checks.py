"""Checks between a dataset and its DataLoader: every sample is readable and has the expected number of
channels, and the samples of a batch fit together. With `skip_bad`, a bad sample is left out of its batch and
counted (the trainer reports the count at the end of the epoch) instead of stopping the run."""
from __future__ import annotations

import logging
import multiprocessing
from typing import Any

import torch
from torch.utils.data import Dataset, Subset, default_collate

from data_loader.datasets import SKIP_HINT
from utils import distributed
from utils.errors import DataError, plural, reason

log = logging.getLogger(__name__)


class BadSamples:
    """How many samples were skipped, shared with the DataLoader's worker processes."""

    def __init__(self):
        self._count = multiprocessing.Value("q", 0)
        self._ever = multiprocessing.Value("q", 0)  # in the whole run: the first one's reason is logged once

    def add(self) -> int:
        """Count one; the number skipped in the whole run so far."""
        with self._count.get_lock():
            self._count.value += 1
        with self._ever.get_lock():
            self._ever.value += 1
            return self._ever.value

    def take(self) -> int:
        """The count since the last call."""
        with self._count.get_lock():
            count, self._count.value = self._count.value, 0
            return count


def describe(dataset: Dataset, index: int) -> str:
    """A sample's name for messages: its file when the dataset can tell (`describe`), else its index."""
    if isinstance(dataset, Subset):
        return describe(dataset.dataset, dataset.indices[index])
    if isinstance(dataset, CheckedDataset):
        return describe(dataset.dataset, index)
    if hasattr(dataset, "describe"):
        return dataset.describe(index)
    return f"sample {index} of {type(dataset).__name__}"


def sample_names(loader: Any) -> list[str] | None:
    """Each sample's name (its file) in the order an evaluation loader gives them, for a report; None when its
    dataset cannot name them. A device-resident loader names them through the dataset its tensors came from
    (`origin`, None when bad samples were left out of them)."""
    dataset = getattr(loader, "origin", None) or getattr(loader, "dataset", None)
    inner = dataset
    while isinstance(inner, (Subset, CheckedDataset)):
        inner = inner.dataset
    if not hasattr(inner, "describe") or getattr(loader, "sampler", None) is None:
        return None
    return [describe(dataset, int(index)) for index in loader.sampler]


class CheckedDataset(Dataset):
    """`dataset` with its samples checked; a bad one raises DataError, or is None when `bad` counts them."""

    def __init__(self, dataset: Dataset, channels: int | None = None, bad: BadSamples | None = None):
        self.dataset = dataset
        self.channels = channels
        self.bad = bad

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        """The sample (of any structure; for `(image, target)` pairs the image's channels are checked)."""
        try:
            sample = self.dataset[index]
            image = sample[0] if isinstance(sample, tuple) else None
            if (self.channels is not None and isinstance(image, torch.Tensor) and image.dim() >= 3
                    and image.shape[-3] != self.channels):
                raise DataError(f"{describe(self.dataset, index)} has {plural(image.shape[-3], 'channel')}, but "
                                f"the data loader's channels is {self.channels}. Convert images when reading "
                                "(image_mode: gray or rgb), or set channels to match the data and the model.")
        except DataError as e:
            if self.bad is None:
                raise
            if self.bad.add() == 1:  # the advice to set skip_bad is left out: it is set
                log.warning("Skipping bad samples (skip_bad: true); the first: %s The others are skipped without a "
                            "message of their own (in training, each epoch's line counts them).",
                            str(e).replace(SKIP_HINT, ""))
            return None
        return sample


def collate(batch: list[Any]) -> Any:
    """`default_collate` without the skipped samples, and a clear message when samples do not fit together."""
    good = [sample for sample in batch if sample is not None]
    if not good:
        raise DataError(f"All {len(batch)} samples of a batch were bad and skipped: the data is mostly unreadable. "
                        "Check the data folder.")
    try:
        return default_collate(good)
    except RuntimeError as e:
        raise misfit(e) from None


def collate_or_none(batch: list[Any]) -> Any:
    """`collate`, or None for a batch whose samples were all skipped (the device loader gathers the others)."""
    return collate(batch) if any(sample is not None for sample in batch) else None


def misfit(e: Exception) -> DataError:
    """The message for samples of different shapes, which cannot be stacked into one batch."""
    return DataError(f"The samples of a batch do not fit together ({reason(e)}). Make every image the same size and "
                     "channel count: add a Resize or CenterCrop transform, and set the data loader's image_mode to gray "
                     "or rgb.")


def take_bad_samples(counter: BadSamples | None, device: torch.device) -> int:
    """Samples skipped since the last call (with `skip_bad`), summed over all processes (a collective call under
    DDP when there is a counter)."""
    if counter is None:
        return 0
    return int(distributed.all_reduce(torch.tensor([counter.take()], device=device)).item())
