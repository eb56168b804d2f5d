"""The classic template's `BaseDataLoader`: built from a dataset, it is the training DataLoader itself, and
`split_validation()` gives the validation one. Here its order is this template's resumable one, so a classic
loader resumes mid-epoch exactly (and takes its share under DDP) like the template's own loaders."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from data_loader.base import ClassNames, dataset_classes, loader_args, process_share, split_indices
from data_loader.sampling import ResumableSampler


class BaseDataLoader(ClassNames, DataLoader):
    """`BaseDataLoader(dataset, batch_size, shuffle, validation_split, num_workers, collate_fn)`, as in the
    classic template: `validation_split` is a fraction (0.1) or a number of samples (500) held out for
    validation; `n_samples` is the number of training samples.

    The split and the order are seeded by the run's seed, read from `torch.initial_seed()`: train.py and test.py
    seed torch with the config's `seed` before they build the data. For the test split, test.py builds a loader
    whose constructor takes `training` with `training=False`, `validation_split=0.0` and `shuffle=False`.
    """

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool, validation_split: float | int,
                 num_workers: int, collate_fn: Callable = default_collate):
        self.shuffle = shuffle
        self.validation_split = validation_split
        self.seed = torch.initial_seed()
        self.classes = dataset_classes(dataset)  # kept in checkpoints (torchvision's datasets name their classes)
        train, self.valid_indices = split_indices(len(dataset), validation_split, self.seed)
        self.n_samples = len(train)
        with_seeds = num_workers > 0
        sampler = ResumableSampler(train, shuffle=shuffle, seed=self.seed, with_seeds=with_seeds,
                                   **process_share(pad=True))
        self.init_kwargs = {"dataset": dataset, "batch_size": batch_size, "num_workers": num_workers,
                            "collate_fn": None if collate_fn is default_collate else collate_fn}
        super().__init__(**self._args(sampler, with_seeds))

    def _args(self, sampler: ResumableSampler, with_seeds: bool) -> dict[str, Any]:
        kw = self.init_kwargs
        args = loader_args(kw["dataset"], kw["batch_size"], sampler, with_seeds, self.seed,
                           num_workers=kw["num_workers"])
        if kw["collate_fn"] is not None:
            args["collate_fn"] = kw["collate_fn"]
        return args

    def split_validation(self) -> DataLoader | None:
        """The validation DataLoader (None without a validation split), in a fixed order."""
        if not self.valid_indices:
            return None
        return DataLoader(**self._args(ResumableSampler(self.valid_indices, shuffle=False,
                                                        **process_share(pad=False)), with_seeds=False))

    # The template's loader protocol (data_loader/base.py): the loaders for training, validation and test.
    def train_loader(self, device: torch.device | None = None) -> DataLoader:
        return self

    def val_loader(self, device: torch.device | None = None) -> DataLoader | None:
        return self.split_validation()

    def test_loader(self, device: torch.device | None = None) -> DataLoader:
        return self
