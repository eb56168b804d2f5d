"""Turns a dataset into the train, validation and test DataLoaders, with a seeded validation split."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from data_loader.batch_transforms import build_batch_transform
from data_loader.checks import BadSamples, CheckedDataset, collate, describe
from data_loader.sampling import ResumableSampler, SeededDataset
from data_loader.transforms import build_transforms
from utils import distributed
from utils.errors import CheckpointError, DataError
from utils.signals import STOP_SIGNALS

log = logging.getLogger(__name__)


def process_share(pad: bool) -> dict[str, Any]:
    """Sampler arguments for this process's share of the data under DDP (all of it in a single process)."""
    if not distributed.active():
        return {"pad": pad}
    return {"num_replicas": dist.get_world_size(), "rank": dist.get_rank(), "pad": pad}


def split_indices(n: int, share: float | int, seed: int, labels: Sequence[int] | None = None,
                  name: str = "validation_split") -> tuple[list[int], list[int]]:
    """Indices 0..n-1 split into the kept ones and the held-out ones: `share` is a fraction (0.1) or a count (500)
    of held-out samples, chosen by `seed`. With `labels`, each class gives its share (largest remainders first),
    so that a small class is held out in proportion too."""
    count = int(share) if isinstance(share, int) and not isinstance(share, bool) else round(n * float(share))
    if count < 0 or count >= n or (isinstance(share, float) and not 0.0 <= share < 1.0):
        raise DataError(f"{name}={share!r} leaves no training samples out of {n}; "
                        "use a fraction below 1 (e.g. 0.1) or a count below the number of samples.")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    if labels is None:
        return sorted(order[count:]), sorted(order[:count])
    classes: dict[int, list[int]] = {}
    for i in order:
        classes.setdefault(labels[i], []).append(i)
    quota = {c: len(members) * count / n for c, members in classes.items()}
    take = {c: int(q) for c, q in quota.items()}
    for c in sorted(classes, key=lambda c: (take[c] - quota[c], c))[:count - sum(take.values())]:
        take[c] += 1
    held = {i for c, members in classes.items() for i in members[:take[c]]}
    return [i for i in range(n) if i not in held], sorted(held)


def class_labels(dataset: Dataset) -> list[int] | None:
    """Each sample's class label, read without decoding a sample (`targets`, as ImageFolder's and torchvision's
    datasets have it); None when the dataset does not list one whole number per sample (a regression table,
    multi-label targets)."""
    targets = getattr(dataset, "targets", None)
    if targets is None or len(targets) != len(dataset):
        return None
    try:
        targets = torch.as_tensor(targets)
    except (TypeError, ValueError, RuntimeError):  # names, or rows of several labels
        return None
    return targets.tolist() if targets.dim() == 1 and not targets.is_floating_point() else None


def loader_args(dataset: Dataset, batch_size: int, sampler: Any, with_seeds: bool, seed: int,
                **options: Any) -> dict[str, Any]:
    """DataLoader arguments for a resumable `sampler`: with worker processes (`with_seeds`), each sample draws its
    augmentation from its own seed; a bad sample is left out of its batch or explained (data_loader/checks.py)."""
    workers = options.get("num_workers", 0) > 0
    return {"dataset": SeededDataset(dataset) if with_seeds else dataset, "batch_size": batch_size,
            "sampler": sampler, "collate_fn": collate, "generator": torch.Generator().manual_seed(seed),
            "worker_init_fn": leave_stop_signals_to_the_trainer if workers else None, **options}


def batches_of(loader: Iterable) -> Iterator[Any]:
    """The batches of `loader`, whose worker processes end as soon as an error in loading stops the loop (in a
    notebook or a test process, the error's traceback would otherwise keep them alive long after)."""
    iterator = iter(loader)
    try:
        yield from iterator
    finally:
        getattr(iterator, "_shutdown_workers", lambda: None)()


def leave_stop_signals_to_the_trainer(worker_id: int) -> None:
    """In a DataLoader worker: a process group of its own, so that a stop signal sent to the training's group (a
    terminal's Ctrl+C or `kill -- -PGID`, a job scheduler) reaches the trainer alone; a worker that died of it
    first would take the run down with a DataLoader error before the trainer could save. SIGINT and SIGUSR1
    (which SLURM may send to every process of a job) are ignored too. SIGTERM keeps its default, since it is how
    the DataLoader and multiprocessing end a worker that does not stop by itself."""
    os.setpgrp()
    for signum in STOP_SIGNALS:
        if signum != signal.SIGTERM:
            signal.signal(signum, signal.SIG_IGN)


def dataset_classes(dataset: Dataset) -> list[str] | None:
    """A dataset's class names in label order (`classes`, as ImageFolder's and torchvision's datasets have it), or
    None when its labels are bare numbers."""
    classes = getattr(dataset, "classes", None)
    return [str(name) for name in classes] if classes else None


class ClassNames:
    """A loader's class names (`classes`, label i's name at index i; None for bare numbers), kept in checkpoints
    through `state_dict()`, so that test.py and predict.py can say what a model's outputs mean."""

    classes: list[str] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"classes": self.classes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take the checkpoint's class names. Data that names other classes is refused: its labels would not mean
        what the model's outputs mean, and the figures would be wrong without a sign."""
        saved = state.get("classes")
        if saved and self.classes and list(saved) != self.classes:
            missing, extra = [c for c in saved if c not in self.classes], [c for c in self.classes if c not in saved]
            detail = (f"the model's classes {', '.join(missing) or '(none)'} are missing here and "
                      f"{', '.join(extra) or '(none)'} are new" if missing or extra else "in another order")
            raise CheckpointError(f"The model was trained on {len(saved)} classes, but this data names other ones "
                                  f"({detail}), so its labels would mean other classes than the model's outputs. "
                                  "Use data with the training run's classes (the same class folders or label "
                                  "names), or train a model on this data.")
        if saved:
            self.classes = list(saved)


class BaseDataLoader(ClassNames):
    """Subclasses say how to build the dataset (`make_dataset`); this class does the split and the loaders.

    `validation_split` is a fraction (0.1) or a number of samples (500) of the training files held out for
    validation, chosen by `seed`, so the trainer and `test.py --split val` see the same samples. `test_split`
    (0: off) holds out the test data the same way, first and stratified by class, for data that has no test part
    of its own (one folder per class); the data's own test part is then not read.
    `num_classes` bounds the labels and `channels` the images' channel count (both checked when given);
    `skip_bad` leaves unreadable or wrong samples out and counts them instead of stopping. A subclass whose data
    names its classes sets `classes` (ClassNames), which checkpoints keep. `batch_transform` mixes training
    batches (MixUp, CutMix: data_loader/batch_transforms.py), and `repeated_augmentations` shows each training
    sample that many times in a row per epoch (ResumableSampler).
    """

    image_mode: str | None = None  # how an image loader reads images (unchanged, gray, rgb); None: not images

    def __init__(self, batch_size: int = 64, shuffle: bool = True, validation_split: float | int = 0.1,
                 num_workers: int = 0, pin_memory: bool = False, persistent_workers: bool = False,
                 drop_last: bool = False, transform: list | None = None, eval_transform: list | None = None,
                 target_transform: list | None = None, num_classes: int | None = None, channels: int | None = None,
                 skip_bad: bool = False, batch_transform: dict | None = None, repeated_augmentations: int = 1,
                 test_split: float | int = 0, seed: int = 0):
        for key, value, minimum in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0),
                                    ("repeated_augmentations", repeated_augmentations, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{key} must be a whole number >= {minimum}, got {value!r}.")
        for key, share in (("validation_split", validation_split), ("test_split", test_split)):
            if isinstance(share, bool) or not isinstance(share, (int, float)) or share < 0 \
                    or (isinstance(share, float) and share >= 1):
                raise ValueError(f"{key} must be a fraction of the training samples from 0 to below 1 (0.1) or a "
                                 f"number of them (500), got {share!r}.")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.validation_split = validation_split
        self.test_split = test_split
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.drop_last = drop_last
        self.seed = seed
        self.transform = build_transforms(transform, "transform")
        self.eval_transform = (build_transforms(eval_transform, "eval_transform")
                               if eval_transform is not None else self.transform)
        # As written in a config (a list of steps), for the checkpoint; a transform object of a subclass is not kept.
        spec = eval_transform if eval_transform is not None else transform
        self.eval_transform_spec = spec if isinstance(spec, list) else None
        self.target_transform = build_transforms(target_transform, "target_transform")
        self.num_classes = num_classes
        self.channels = channels
        self.skip_bad = skip_bad
        self.bad_samples = BadSamples() if skip_bad else None
        self.batch_transform = build_batch_transform(batch_transform, num_classes)
        self.repeated_augmentations = repeated_augmentations
        self._split: tuple[list[int], list[int], list[int]] | None = None
        self._inputs: dict[str, Any] | None = None

    def make_dataset(self, train: bool, transform: Callable | None) -> Dataset:
        """The training files (`train=True`) or the test files, decoded with `transform`."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The class names, and how the model's inputs are prepared (`inputs`)."""
        return {**super().state_dict(), "inputs": self.inputs()}

    def inputs(self) -> dict[str, Any]:
        """How an input is prepared for the model, as evaluation prepares the test data, so that a checkpoint alone
        serves inference on another machine (predict.py, export.py, tools/predictor.py): how images are read
        (`image_mode`; None for data that are not images), the `eval_transform` steps as configured, and the shape
        and dtype of one prepared training sample (None when its input is not one tensor)."""
        if self._inputs is None:
            sample = None
            try:  # the first readable sample; a failure is for the check before writing to explain, not this record
                dataset = CheckedDataset(self.make_dataset(True, self.eval_transform), self.channels)
                for index in range(min(len(dataset), 100)):
                    with contextlib.suppress(DataError):
                        sample = dataset[index]
                        break
            except Exception:
                sample = None
            image = sample[0] if isinstance(sample, (tuple, list)) and sample else None
            form = {"shape": list(image.shape), "dtype": str(image.dtype).removeprefix("torch.")} \
                if isinstance(image, torch.Tensor) else {"shape": None, "dtype": None}
            self._inputs = {"image_mode": self.image_mode, "eval_transform": self.eval_transform_spec, **form}
        return self._inputs

    def make_val_dataset(self, transform: Callable | None) -> Dataset | None:
        """Validation data of its own (a file or a folder apart), decoded with `transform`; None, the default, holds
        `validation_split` of the training data out instead. Override it for data that comes with its split."""
        return None

    def model_args(self) -> dict[str, Any]:
        """Values learned from the data that the model's constructor takes (a vocabulary's size, the number of
        features): each fills the `arch.args` entry of that name when the config leaves it out, and is saved in
        the run's config. None by default; override it."""
        return {}

    def split(self) -> tuple[list[int], list[int], list[int]]:
        """Indices of the training files used for training, for validation (none, with validation data of its
        own) and for testing (none without `test_split`). The test share is held out first, so that the
        validation split does not change it."""
        if self._split is None:
            files = self.make_dataset(True, None)
            rest, test = list(range(len(files))), []
            if self.test_split:
                labels = class_labels(files)
                rest, test = split_indices(len(files), self.test_split, self.seed, labels, "test_split")
                log.info("Held out %d of the %d training files for testing (test_split %s, %s).", len(test),
                         len(files), self.test_split, "stratified by class" if labels else "not stratified")
            train, val = list(range(len(rest))), []
            if self.make_val_dataset(None) is None:
                train, val = split_indices(len(rest), self.validation_split, self.seed)
            self._split = ([rest[i] for i in train], [rest[i] for i in val], test)
        return self._split

    def _loader(self, dataset: Dataset, sampler: Any = None, drop_last: bool = False,
                with_seeds: bool = False) -> DataLoader:
        return DataLoader(**loader_args(CheckedDataset(dataset, self.channels, self.bad_samples), self.batch_size,
                                        sampler, with_seeds, self.seed, drop_last=drop_last,
                                        num_workers=self.num_workers, pin_memory=self.pin_memory,
                                        persistent_workers=self.persistent_workers))

    def train_loader(self, device: torch.device | None = None) -> DataLoader:
        """Batches on the host; `device` (where the trainer will use them) matters to device-resident loaders.
        Under DDP, each process gets its share of every epoch."""
        with_seeds = self.num_workers > 0
        sampler = ResumableSampler(self.split()[0], shuffle=self.shuffle, seed=self.seed, with_seeds=with_seeds,
                                   repeats=self.repeated_augmentations, **process_share(pad=True))
        return self._loader(self.make_dataset(True, self.transform), sampler, self.drop_last, with_seeds)

    def val_loader(self, device: torch.device | None = None) -> DataLoader | None:
        own = self.make_val_dataset(self.eval_transform)
        if own is not None:
            return self._loader(own, ResumableSampler(list(range(len(own))), shuffle=False,
                                                      **process_share(pad=False)))
        return self._held_out(self.split()[1]) if self.split()[1] else None

    def test_loader(self, device: torch.device | None = None) -> DataLoader:
        """The test files, or with `test_split` the share of the training files held out for testing."""
        if not self.test_split:
            return self._loader(self.make_dataset(False, self.eval_transform))
        return self._held_out(self.split()[2])

    def _held_out(self, indices: list[int]) -> DataLoader:
        """The training files of `indices`, prepared for evaluation, in order."""
        sampler = ResumableSampler(indices, shuffle=False, **process_share(pad=False))
        return self._loader(self.make_dataset(True, self.eval_transform), sampler)

    def check_labels(self, dataset: Dataset, targets: Any) -> None:
        """Refuse labels outside 0..num_classes-1 (when `num_classes` is given), naming the first such sample."""
        if self.num_classes is None:
            return
        targets = torch.as_tensor(targets)
        outside = ((targets < 0) | (targets >= self.num_classes)).nonzero().flatten()
        if len(outside):
            index = int(outside[0])
            raise DataError(f"{describe(dataset, index)} has label {int(targets[index])}, outside "
                            f"0..{self.num_classes - 1} (the data loader's num_classes: {self.num_classes}); "
                            f"{len(outside)} sample(s) in all. Set num_classes (and the model's) to the number of "
                            "classes in the data.")
