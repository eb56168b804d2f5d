"""Datasets for the layouts users bring: a folder of images listed in a CSV file (file name, label, split), and
a tree with one folder per class (`ImageFolder`). Both decode images with `torchvision.io` into uint8 tensors."""
from __future__ import annotations

import csv
import functools
import io
import logging
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.io import ImageReadMode, decode_image, read_file

from utils.errors import DataError, not_utf8, reason

log = logging.getLogger(__name__)

_MODES = {"unchanged": ImageReadMode.UNCHANGED, "gray": ImageReadMode.GRAY, "rgb": ImageReadMode.RGB}


def read_mode(image_mode: str) -> ImageReadMode:
    if image_mode not in _MODES:
        raise DataError(f"data_loader.args.image_mode must be one of {', '.join(_MODES)}, got {image_mode!r}.")
    return _MODES[image_mode]


def read_image(path: str | Path, mode: ImageReadMode = ImageReadMode.UNCHANGED) -> torch.Tensor:
    """Decode an image file into a uint8 (C, H, W) tensor; an unreadable file raises DataError naming it."""
    try:
        return decode_image(read_file(str(path)), mode=mode)
    except (RuntimeError, OSError) as e:
        raise DataError(f"Cannot read image '{path}': {reason(e)} Replace the file or remove it from the data "
                        "(or set data_loader.args.skip_bad: true to skip such files).") from None


class CsvImageDataset(Dataset):
    """Images under `root`, listed in `root/csv_file` with columns `file`, `label` and (optionally) `split`.

    Images are decoded with `torchvision.io` into uint8 tensors (C, H, W); `transform` gets that tensor,
    `target_transform` the integer label. `cache: true` keeps decoded images in memory (for small data sets).
    The file is UTF-8, with or without the byte-order mark Excel writes. `split` values are read without case or
    surrounding spaces (`Train ` is train); every row is used or named: a row with a bad label, or a split value
    that is empty or neither train nor test, stops with an error naming the line, or with `skip_bad` is left out
    with a warning.
    """

    def __init__(self, root: str | Path, csv_file: str = "labels.csv", split: str | None = None,
                 transform: Callable | None = None, target_transform: Callable | None = None,
                 image_mode: str = "unchanged", num_classes: int | None = None, cache: bool = False,
                 skip_bad: bool = False):
        self.root = Path(root)
        self.csv_file = csv_file
        self.cache: dict[int, torch.Tensor] | None = {} if cache else None
        self.transform = transform
        self.target_transform = target_transform
        self.mode = read_mode(image_mode)
        csv_path = self.root / csv_file
        if not self.root.is_dir():
            raise DataError(f"Data folder '{self.root}' not found (data_loader.args.data_dir). Run from the project's "
                            "top folder, or set data_loader.args.data_dir to the folder that holds your images.")
        if not csv_path.is_file():
            raise DataError(f"Label file '{csv_path}' not found. Put a CSV with the columns file,label[,split] there, "
                            "or set data_loader.args.csv_file.")
        self.samples, bad, rows = self._read_rows(csv_path, split, num_classes)
        if bad and not skip_bad:
            raise DataError(f"{bad[0]}. Fix the row or remove it (or set data_loader.args.skip_bad: true).")
        if bad and not self.samples:
            skipped = f"all {rows} rows" if len(bad) == rows else f"{len(bad)} of its {rows} rows"
            raise DataError(f"'{csv_path}' lists no usable rows for split '{split}': {skipped} were skipped as bad "
                            f"(skip_bad: true). The first: {bad[0]}.")
        if bad:
            log.warning("Skipped %d row(s) of '%s' with a bad label or split (skip_bad: true); the first: %s.",
                        len(bad), csv_path, bad[0])
        if not self.samples:
            raise DataError(f"'{csv_path}' lists no rows for split '{split}'. Check the 'split' column "
                            "(expected values: train, test).")

    @staticmethod
    def _read_rows(csv_path: Path, split: str | None,
                   num_classes: int | None) -> tuple[list[tuple], list[str], int]:
        """The rows of `split` as (file, label, line), a description of each bad row (a bad label or split
        value), and the number of rows in the file."""
        raw = csv_path.read_bytes()
        try:
            text = raw.decode("utf-8-sig")  # Excel starts its "CSV UTF-8" files with a byte-order mark
        except UnicodeDecodeError as e:
            raise DataError(f"{not_utf8(csv_path, raw, e)}, as in a file saved as Latin-1 or Windows-1252 (Excel's "
                            "plain 'CSV' format). Save it as UTF-8 (Excel: 'CSV UTF-8').") from None
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = {"file", "label"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"'{csv_path}' lacks the column(s) {', '.join(sorted(missing))}; its header must be "
                            f"file,label[,split] (found: {','.join(reader.fieldnames or [])}).")
        has_split = "split" in (reader.fieldnames or [])
        if split == "test" and not has_split:
            raise DataError(f"'{csv_path}' has no 'split' column, so there is no test split. "
                            "Add a split column with values train/test.")
        rows, bad, count = [], [], 0
        for row in reader:
            count, line = count + 1, reader.line_num
            if has_split:
                value = (row["split"] or "").strip().lower()
                if value not in ("train", "test"):
                    bad.append(f"'{csv_path}', line {line}: the split is {row['split']!r}, not train or test"
                               if (row["split"] or "").strip() else f"'{csv_path}', line {line}: the split is empty")
                    continue
                if split is not None and value != split:
                    continue
            try:
                label = int(row["label"])
            except (TypeError, ValueError):
                bad.append(f"'{csv_path}', line {line}: label {row['label']!r} is not a whole number")
                continue
            if label < 0 or (num_classes is not None and label >= num_classes):
                bad.append(f"'{csv_path}', line {line}: label {label} is outside 0..{(num_classes or 1) - 1} "
                           f"(data_loader.args.num_classes: {num_classes})")
                continue
            rows.append((row["file"], label, line))
        return rows, bad, count

    def describe(self, index: int) -> str:
        name, _, line = self.samples[index]
        return f"image '{self.root / name}' (line {line} of {self.csv_file})"

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        name, label, _ = self.samples[index]
        if self.cache is None:
            image = read_image(self.root / name, self.mode)
        else:
            image = self.cache.get(index)
            if image is None:
                image = self.cache[index] = read_image(self.root / name, self.mode)
        if self.transform is not None:
            image = self.transform(image)
        target = self.target_transform(label) if self.target_transform is not None else label
        return image, target


class ImageFolderDataset(datasets.ImageFolder):
    """torchvision's `ImageFolder` (`root/<class name>/<image>`, classes numbered in sorted order), decoding
    with `torchvision.io` like CsvImageDataset, so the same transforms apply to both."""

    def __init__(self, root: str | Path, transform: Callable | None = None,
                 target_transform: Callable | None = None, image_mode: str = "unchanged"):
        mode = read_mode(image_mode)
        if not Path(root).is_dir():
            raise DataError(f"Image folder '{root}' not found (data_loader.args.data_dir). It must hold one folder "
                            "per class, e.g. train/cat/001.png, train/dog/002.png.")
        try:
            super().__init__(str(root), transform=transform, target_transform=target_transform,
                             loader=functools.partial(read_image, mode=mode))
        except FileNotFoundError as e:
            raise DataError(f"No images found in '{root}' ({e}). It must hold one folder per class with image files "
                            "in them (.png, .jpg, ...).") from None

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        """Class folders, leaving out hidden ones (`.ipynb_checkpoints`, `.DS_Store`) that would shift labels."""
        classes = sorted(e.name for e in Path(directory).iterdir() if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise FileNotFoundError(f"no class folders in '{directory}'")
        return classes, {name: i for i, name in enumerate(classes)}

    def describe(self, index: int) -> str:
        return f"image '{self.samples[index][0]}'"
