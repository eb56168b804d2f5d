"""Turns a dataset into the train, validation and test DataLoaders, with a seeded validation split."""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from data_loader.checks import BadSamples, CheckedDataset, collate, describe
from data_loader.sampling import ResumableSampler, SeededDataset
from data_loader.transforms import build_transforms
from utils import distributed
from utils.errors import DataError


def process_share(pad: bool) -> dict[str, Any]:
    """Sampler arguments for this process's share of the data under DDP (all of it in a single process)."""
    if not distributed.active():
        return {"pad": pad}
    return {"num_replicas": dist.get_world_size(), "rank": dist.get_rank(), "pad": pad}


class BaseDataLoader:
    """Subclasses say how to build the dataset (`make_dataset`); this class does the split and the loaders.

    `validation_split` is a fraction (0.1) or a number of samples (500) of the training files held out for
    validation, chosen by `seed`, so the trainer and `test.py --split val` see the same samples.
    `num_classes` bounds the labels and `channels` the images' channel count (both checked when given);
    `skip_bad` leaves unreadable or wrong samples out and counts them instead of stopping.
    """

    def __init__(self, batch_size: int = 64, shuffle: bool = True, validation_split: float | int = 0.1,
                 num_workers: int = 0, pin_memory: bool = False, persistent_workers: bool = False,
                 drop_last: bool = False, transform: list | None = None, eval_transform: list | None = None,
                 target_transform: list | None = None, num_classes: int | None = None, channels: int | None = None,
                 skip_bad: bool = False, seed: int = 0):
        for key, value, minimum in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise DataError(f"data_loader.args.{key} must be a whole number >= {minimum}, got {value!r}.")
        share = validation_split
        if isinstance(share, bool) or not isinstance(share, (int, float)) or share < 0 \
                or (isinstance(share, float) and share >= 1):
            raise DataError(f"data_loader.args.validation_split must be a fraction of the training samples from 0 to "
                            f"below 1 (0.1) or a number of them (500), got {validation_split!r}.")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.validation_split = validation_split
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.drop_last = drop_last
        self.seed = seed
        self.transform = build_transforms(transform, "data_loader.args.transform")
        self.eval_transform = (build_transforms(eval_transform, "data_loader.args.eval_transform")
                               if eval_transform is not None else self.transform)
        self.target_transform = build_transforms(target_transform, "data_loader.args.target_transform")
        self.num_classes = num_classes
        self.channels = channels
        self.skip_bad = skip_bad
        self.bad_samples = BadSamples() if skip_bad else None
        self._split: tuple[list[int], list[int]] | None = None

    def make_dataset(self, train: bool, transform: Callable | None) -> Dataset:
        """The training files (`train=True`) or the test files, decoded with `transform`."""
        raise NotImplementedError

    def split(self) -> tuple[list[int], list[int]]:
        """Indices of the training files used for training and for validation."""
        if self._split is None:
            n = len(self.make_dataset(True, None))
            share = self.validation_split
            n_val = share if isinstance(share, int) else round(n * share)
            if n_val >= n:
                raise DataError(f"data_loader.args.validation_split={share!r} leaves no training samples out of {n}; "
                                "use a fraction below 1 (e.g. 0.1) or a count below the number of samples.")
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)).tolist()
            self._split = (sorted(order[n_val:]), sorted(order[:n_val]))
        return self._split

    def _loader(self, dataset: Dataset, sampler: Any = None, drop_last: bool = False,
                with_seeds: bool = False) -> DataLoader:
        dataset = CheckedDataset(dataset, self.channels, self.bad_samples)
        loader = DataLoader(SeededDataset(dataset) if with_seeds else dataset, batch_size=self.batch_size,
                            sampler=sampler, drop_last=drop_last, collate_fn=collate, num_workers=self.num_workers,
                            pin_memory=self.pin_memory, persistent_workers=self.persistent_workers,
                            generator=torch.Generator().manual_seed(self.seed))
        loader.bad_samples = self.bad_samples  # read by the trainer at the end of each epoch
        return loader

    def train_loader(self, device: torch.device | None = None) -> DataLoader:
        """Batches on the host; `device` (where the trainer will use them) matters to device-resident loaders.
        Under DDP, each process gets its share of every epoch."""
        with_seeds = self.num_workers > 0
        sampler = ResumableSampler(self.split()[0], shuffle=self.shuffle, seed=self.seed, with_seeds=with_seeds,
                                   **process_share(pad=True))
        return self._loader(self.make_dataset(True, self.transform), sampler, self.drop_last, with_seeds)

    def val_loader(self, device: torch.device | None = None) -> DataLoader | None:
        val_indices = self.split()[1]
        if not val_indices:
            return None
        sampler = ResumableSampler(val_indices, shuffle=False, **process_share(pad=False))
        return self._loader(self.make_dataset(True, self.eval_transform), sampler)

    def test_loader(self, device: torch.device | None = None) -> DataLoader:
        return self._loader(self.make_dataset(False, self.eval_transform))

    def check_labels(self, dataset: Dataset, targets: Any) -> None:
        """Refuse labels outside 0..num_classes-1 (when `num_classes` is given), naming the first such sample."""
        if self.num_classes is None:
            return
        targets = torch.as_tensor(targets)
        outside = ((targets < 0) | (targets >= self.num_classes)).nonzero().flatten()
        if len(outside):
            index = int(outside[0])
            raise DataError(f"{describe(dataset, index)} has label {int(targets[index])}, outside "
                            f"0..{self.num_classes - 1} (data_loader.args.num_classes: {self.num_classes}); "
                            f"{len(outside)} sample(s) in all. Set num_classes (and the model's) to the number of "
                            "classes in the data.")
