"""The template's data loaders, named in `data_loader.type` (yours go in data_loaders.py and are found first)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.transforms import v2

from data_loader.base import BaseDataLoader, dataset_classes
from data_loader.datasets import CsvImageDataset, ImageFolderDataset
from data_loader.table import Standardize, TableDataset, read_table
from utils.errors import CheckpointError, DataError, reason

log = logging.getLogger(__name__)


class CsvImageDataLoader(BaseDataLoader):
    """Images in a folder plus a CSV of file,label,split - the bundled digits and most users' own data. Labels
    that are class names are numbered in sorted order (logged at start)."""

    def __init__(self, data_dir: str = "data/digits", csv_file: str = "labels.csv", image_mode: str = "unchanged",
                 cache: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.data_dir = Path(data_dir)
        self.csv_file = csv_file
        self.image_mode = image_mode
        self.cache = cache
        self.classes = dataset_classes(self.make_dataset(True, None))
        if self.classes:
            log.info("Classes (name: label): %s", ", ".join(f"{name}: {i}" for i, name in enumerate(self.classes)))

    def make_dataset(self, train: bool, transform: Callable | None) -> Dataset:
        return CsvImageDataset(self.data_dir, self.csv_file, "train" if train else "test", transform,
                               self.target_transform, self.image_mode, self.num_classes, self.cache, self.skip_bad)


class ImageFolderDataLoader(BaseDataLoader):
    """One folder per class: `data_dir/<class>/<image>`, with `test_split` holding out the test images, or
    `data_dir/train/<class>/<image>` and `data_dir/test/<class>/<image>`. `train_dir` defaults to `train` when
    data_dir holds that folder and no others but `test` (`test_dir`), else to data_dir itself (a class may be
    named `train`). Classes are numbered in sorted order of their folder names; a test tree must have the same
    class folders."""

    def __init__(self, data_dir: str, train_dir: str | None = None, test_dir: str = "test",
                 image_mode: str = "unchanged", **kwargs):
        super().__init__(**kwargs)
        if train_dir is None:  # train/ (and test/) of a split tree, unless they are among the class folders
            folders = {p.name for p in Path(data_dir).iterdir() if p.is_dir() and not p.name.startswith(".")} \
                if Path(data_dir).is_dir() else set()
            train_dir = "train" if "train" in folders and folders <= {"train", "test", test_dir} else "."
        self.folders = {True: Path(data_dir) / train_dir, False: Path(data_dir) / test_dir}
        self.image_mode = image_mode
        train = self.make_dataset(True, None)
        self.check_labels(train, train.targets)
        self.classes = dataset_classes(train)
        log.info("Classes (folder: label): %s", ", ".join(f"{name}: {i}" for i, name in enumerate(self.classes)))

    def make_dataset(self, train: bool, transform: Callable | None) -> Dataset:
        if not train and not self.folders[False].is_dir():
            raise DataError(f"There is no test folder '{self.folders[False]}'. Hold out test images from the class "
                            f"folders of '{self.folders[True]}' with the data loader's test_split (e.g. 0.2, set "
                            "before training, so that the model never sees them), or give the test images a tree of "
                            "their own with the same class folders (test_dir).")
        dataset = ImageFolderDataset(self.folders[train], transform, self.target_transform, self.image_mode)
        if not train and dataset.classes != self.classes:
            differ = sorted(set(dataset.classes) ^ set(self.classes))
            raise DataError(f"The class folders of '{self.folders[False]}' differ from those of '{self.folders[True]}' "
                            f"({', '.join(differ)}), so their labels would not match. Give both trees the same "
                            "class folders.")
        return dataset


class TableDataLoader(BaseDataLoader):
    """Regression on a table: the numeric `features` columns and the `target` column of one CSV file, whose
    optional `split` column (train/test) says which rows are held out for testing; without it, every row is
    a training row. Each sample is (features (F,), target (1,)), both float32: the target keeps a dimension
    of its own so that it has the shape of a model output with `out_features: 1` (an output (B, 1) against
    targets (B,) would broadcast to (B, B) in a loss).

    The features are standardised with the mean and standard deviation of the rows that train the model
    (the training split after the validation rows are carved out), applied to every split; `state_dict()`
    holds those statistics for the checkpoint, and `load_state_dict()` puts them back, so a model is evaluated
    with the statistics it was trained with. Targets are left as they are.
    """

    def __init__(self, csv_file: str = "data/diabetes/diabetes.csv", target: str = "target",
                 features: list[str] | None = None, **kwargs):
        if features is not None and (not isinstance(features, list) or not all(isinstance(c, str) for c in features)):
            raise ValueError(f"features must be a list of column names, got {features!r}.")
        super().__init__(**kwargs)
        self.csv_file = Path(csv_file)
        self.target = target
        self.tables, self.features, self.has_split = read_table(self.csv_file, target, features, self.skip_bad)
        if not self.tables["train"].lines:
            raise DataError(f"'{self.csv_file}' has no training rows (split: train). Check its 'split' column "
                            "(expected values: train, test).")
        self.standardize = Standardize()
        self.standardize.fit(self.tables["train"].features[self.split()[0]])
        log.info("Table %s: target '%s', features %s", self.csv_file, target, ", ".join(self.features))

    def make_dataset(self, train: bool, transform: Callable | None) -> Dataset:
        table = self.tables["train" if train else "test"]
        if not train and not table.lines:
            cause = "lists no rows for split 'test'" if self.has_split else "has no 'split' column"
            raise DataError(f"'{self.csv_file}' {cause}, so there is no test split. Mark the test rows with "
                            "'test' in a split column (the others 'train').")
        return TableDataset(table, self.csv_file, self.standardize, transform, self.target_transform)

    def state_dict(self) -> dict[str, Any]:
        """The standardisation fitted on the training rows, with the columns it belongs to."""
        return {**super().state_dict(), "features": list(self.features), "target": self.target,
                "mean": self.standardize.mean.clone(), "std": self.standardize.std.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Use the statistics a model was trained with instead of those fitted here; a state without them (a
        checkpoint of a run that saved none) keeps these. Columns other than the training run's are refused."""
        super().load_state_dict(state)
        if "mean" not in state:
            log.warning("The checkpoint holds no standardisation statistics; using those fitted on the training "
                        "rows of '%s'.", self.csv_file)
            return
        if state["features"] != self.features or state["target"] != self.target:
            raise CheckpointError(f"The model was trained on the features {', '.join(state['features'])} and the "
                                  f"target '{state['target']}', but '{self.csv_file}' gives the features "
                                  f"{', '.join(self.features)} and the target '{self.target}'. Set the data "
                                  "loader's features and target to the training run's columns.")
        self.standardize.mean = torch.as_tensor(state["mean"], dtype=torch.float32)
        self.standardize.std = torch.as_tensor(state["std"], dtype=torch.float32)


# torchvision datasets a config can name, with the folder under `data_dir` where they live and their files.
_MNIST_FILES = "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte"
TORCHVISION_DATASETS = {
    "MNIST": ("MNIST/raw", _MNIST_FILES),
    "FashionMNIST": ("FashionMNIST/raw", _MNIST_FILES),
    "KMNIST": ("KMNIST/raw", _MNIST_FILES),
    "CIFAR10": ("cifar-10-batches-py", "data_batch_1 ... data_batch_5, test_batch, batches.meta"),
    "CIFAR100": ("cifar-100-python", "train, test, meta"),
}


class TorchvisionDataLoader(BaseDataLoader):
    """One of torchvision's datasets (`dataset`: MNIST, FashionMNIST, KMNIST, CIFAR10, CIFAR100) under
    `data_dir`. Downloads only when the files are absent and `download` is true. Images are turned into uint8
    (C, H, W) tensors before `transform`, as with the other loaders."""

    def __init__(self, dataset: str = "MNIST", data_dir: str = "data/", download: bool = False, **kwargs):
        if dataset not in TORCHVISION_DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(TORCHVISION_DATASETS)}; got {dataset!r}. For "
                             "another dataset, subclass BaseDataLoader in data_loader/data_loaders.py.")
        super().__init__(**kwargs)
        self.dataset = dataset
        self.data_dir = data_dir
        self.download = download
        self.image_mode = "rgb" if dataset.startswith("CIFAR") else "gray"  # how predict.py reads images for it
        train = self.make_dataset(True, None)
        self.check_labels(train, train.targets)
        self.classes = dataset_classes(train)

    def make_dataset(self, train: bool, transform: Callable | None) -> Dataset:
        to_tensor = v2.Compose([v2.ToImage(), transform]) if transform is not None else v2.ToImage()
        try:
            return getattr(datasets, self.dataset)(self.data_dir, train=train, transform=to_tensor,
                                                   target_transform=self.target_transform, download=self.download)
        except (RuntimeError, OSError) as e:
            folder, files = TORCHVISION_DATASETS[self.dataset]
            where = f"{self.dataset} not found (or incomplete) under '{Path(self.data_dir) / folder}'"
            if not self.download:
                raise DataError(f"{where} and download is off (download: false). Set download: "
                                f"true on a machine with internet access, or place the files {files} there.") from None
            raise DataError(f"{where} and the download failed ({reason(e)}; is this machine offline?). Run once on a "
                            f"machine with internet access and copy the folder here, or place the files {files} "
                            "there.") from None


class MnistDataLoader(TorchvisionDataLoader):
    """The classic template's MNIST loader: torchvision's MNIST, downloaded when absent, no validation split."""

    def __init__(self, data_dir: str = "data/", download: bool = True, **kwargs):
        kwargs.setdefault("transform", [{"type": "ToDtype", "args": {"dtype": "float32", "scale": True}},
                                        {"type": "Normalize", "args": {"mean": [0.1307], "std": [0.3081]}}])
        kwargs.setdefault("validation_split", 0.0)
        super().__init__("MNIST", data_dir, download, **kwargs)
