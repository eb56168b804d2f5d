"""What predict.py runs a model on: image files (named, found in folders, or listed in a file) or the rows of
CSV tables, each prepared as evaluation prepared the training data (decoding, standardisation, eval_transform)."""
from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode

from data_loader.datasets import read_image
from data_loader.table import Standardize, read_features
from utils.errors import DataError, plural, printable, reason

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp")  # what torchvision.io decodes
LIST_SUFFIXES = (".csv", ".txt")


def folder_images(folder: Path) -> list[Path]:
    """The images under `folder`, searched recursively in sorted order; hidden files and folders (`.DS_Store`,
    `.ipynb_checkpoints`) are left out, as are files that are not images by their suffix."""
    return sorted(path for path in folder.rglob("*")
                  if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
                  and not any(part.startswith(".") for part in path.relative_to(folder).parts))


def read_list(path: Path) -> list[Path]:
    """The files a list names: a CSV with a `file` column (such as a labels.csv), or one path per line. Relative
    paths are relative to the list's folder, so that a list travels with its images."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"Cannot read the list '{path}': {reason(e)}. Give a text file with one image path per line, "
                        "or a CSV with a 'file' column.") from None
    header = next(csv.reader(lines[:1]), [])
    names = [row["file"] for row in csv.DictReader(lines)] if "file" in header else lines
    return [path.parent / name.strip() for name in names if name and name.strip()]


def find_images(paths: Sequence[str]) -> list[Path]:
    """Every image that `paths` give, in order: a file as it is, a folder's images (folder_images), the files of
    a .csv or .txt list (read_list). A path that does not exist, or gives no images, stops with its name."""
    found = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            images, what = folder_images(path), f"holds no images ({', '.join(IMAGE_SUFFIXES)})"
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            images, what = read_list(path), "lists no files"
        elif path.is_file():
            images, what = [path], ""
        else:
            raise DataError(f"'{given}' not found. Give image files, folders of images, or .csv/.txt lists of image "
                            "files.")
        if not images:
            raise DataError(f"'{given}' {what}. Give image files, folders of images, or .csv/.txt lists of image "
                            "files.")
        found += images
    return found


class Inputs(Dataset):
    """Sample i is `(i, tensor)`, prepared as in evaluation, or `(i, message)` when it cannot be read or prepared,
    so that the caller reports and skips it, or stops. `keys[i]` names it in the output, in `columns`."""

    columns: tuple[str, ...] = ("file",)

    def __init__(self, keys: list[tuple], transform: Callable | None):
        self.keys = keys
        self.transform = transform

    def load(self, index: int) -> torch.Tensor:
        """The sample before `transform`; a DataError says why it cannot be had."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | str]:
        try:
            sample = self.load(index)
            return index, self.check(index, self.transform(sample) if self.transform is not None else sample)
        except DataError as e:
            return index, str(e)
        except (RuntimeError, ValueError, TypeError) as e:  # eval_transform cannot take this sample
            return index, f"Cannot prepare {', '.join(map(str, self.keys[index]))} with eval_transform: {reason(e)}"

    def check(self, index: int, sample: torch.Tensor) -> torch.Tensor:
        """The prepared sample, or a DataError when it cannot be the model's input."""
        return sample


class ImageInputs(Inputs):
    """Image files decoded with `mode` (the training loader's image_mode) into uint8 (C, H, W) tensors; with
    `channels` (the training images', after eval_transform), an image with another channel count cannot be used."""

    def __init__(self, files: list[Path], mode: ImageReadMode, transform: Callable | None,
                 channels: int | None = None):
        super().__init__([(printable(file),) for file in files], transform)
        self.files = files
        self.mode = mode
        self.channels = channels

    def load(self, index: int) -> torch.Tensor:
        return read_image(self.files[index], self.mode, hint="")

    def check(self, index: int, sample: torch.Tensor) -> torch.Tensor:
        if self.channels is not None and sample.dim() == 3 and sample.shape[0] != self.channels:
            raise DataError(f"'{printable(self.files[index])}' has {plural(sample.shape[0], 'channel')} after eval_transform, but "
                            f"the model was trained on images of {self.channels}: convert it (the training config's "
                            "image_mode converts the training images)")
        return sample


class TableInputs(Inputs):
    """The rows of CSV tables with the model's feature columns (a target or split column may be there or not),
    standardised with the training rows' statistics; a row with a cell that is not a number cannot be read."""

    columns = ("file", "line")

    def __init__(self, paths: Sequence[str], features: list[str], standardize: Standardize,
                 transform: Callable | None):
        for path in paths:
            if Path(path).suffix.lower() in IMAGE_SUFFIXES:
                raise DataError(f"'{path}' is an image, but this model was trained on a table (TableDataLoader): give "
                                f"CSV files of rows with its feature columns ({', '.join(features)}).")
        rows = [(path, line, values) for path in paths for line, values in read_features(Path(path), features)]
        super().__init__([(path, line) for path, line, _ in rows], transform)
        self.values = [values for _, _, values in rows]
        self.standardize = standardize

    def load(self, index: int) -> torch.Tensor:
        values = self.values[index]
        if isinstance(values, str):
            raise DataError(values)
        return self.standardize(torch.tensor(values, dtype=torch.float32))
