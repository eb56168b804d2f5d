"""Datasets for the layouts users bring: a folder of images listed in a CSV file (file name, label, split), and
a tree with one folder per class (`ImageFolder`). Both decode images with `torchvision.io` into uint8 tensors."""
from __future__ import annotations

import csv
import functools
import io
import logging
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.io import ImageReadMode, decode_image

from utils.errors import DataError, not_utf8, printable, reason

log = logging.getLogger(__name__)

_MODES = {"unchanged": ImageReadMode.UNCHANGED, "gray": ImageReadMode.GRAY, "rgb": ImageReadMode.RGB}


def read_mode(image_mode: str) -> ImageReadMode:
    if image_mode not in _MODES:
        raise ValueError(f"image_mode must be one of {', '.join(_MODES)}, got {image_mode!r}.")
    return _MODES[image_mode]


SKIP_HINT = (" Replace the file or remove it from the data (or set the data loader's skip_bad: true to skip such "
             "files).")


def read_image(path: str | Path, mode: ImageReadMode = ImageReadMode.UNCHANGED, hint: str = SKIP_HINT) -> torch.Tensor:
    """Decode an image file into a uint8 (C, H, W) tensor; an unreadable file, or one too large (check_size),
    raises DataError naming it, followed by `hint` (what to do about it: the training data's advice unless the
    caller has its own). Any file name is read, UTF-8 or not."""
    try:
        raw = Path(path).read_bytes()
        check_size(raw)
        return decode_image(torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw
                            else torch.empty(0, dtype=torch.uint8), mode=mode)
    except (RuntimeError, OSError, ValueError) as e:
        raise DataError(f"Cannot read image '{printable(path)}': {reason(e)}.{hint}") from None


def check_size(raw: bytes) -> None:
    """Refuse an image whose header gives more pixels than Pillow's limit against decompression bombs
    (PIL.Image.MAX_IMAGE_PIXELS: 89 million, a quarter GiB of RGB), before decoding it takes gigabytes. A file
    Pillow cannot read is left to torchvision's decoder."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None:
        return
    fix = "; shrink it, or raise PIL.Image.MAX_IMAGE_PIXELS"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit below says it
            with Image.open(io.BytesIO(raw)) as image:
                width, height = image.size
    except Image.DecompressionBombError:
        raise ValueError(f"it has over {2 * limit:,} pixels, more than the limit of {limit:,}{fix}") from None
    except (OSError, ValueError, SyntaxError):
        return
    if width * height > limit:
        raise ValueError(f"it is {width} x {height} pixels, more than the limit of {limit:,}{fix}")


def read_csv(path: Path) -> csv.DictReader:
    """The rows of a CSV file with a header, read as UTF-8 with or without the byte-order mark Excel writes (which
    would otherwise become part of the first column's name); another encoding, or a column named twice, stops with
    the file and what to fix."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{not_utf8(path, raw, e)}, as in a file saved as Latin-1 or Windows-1252 (Excel's plain "
                        "'CSV' format). Save it as UTF-8 (Excel: 'CSV UTF-8').") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = reader.fieldnames or []
    twice = [name for name in columns if name and columns.count(name) > 1]  # unnamed: a trailing comma
    if twice:
        raise DataError(f"'{path}': the column {twice[0]!r} appears twice in the header, and the second would silently "
                        "replace the first. Rename or remove one of them.")
    return reader


def _is_whole_number(label: str) -> bool:
    try:
        int(label)
    except ValueError:
        return False
    return "_" not in label  # Python reads 1_0 as 10; a label file does not


class CsvImageDataset(Dataset):
    """Images under `root`, listed in `root/csv_file` with columns `file`, `label` and (optionally) `split`.

    Labels are whole numbers 0..N-1, or class names (`cat`, `dog`) numbered in sorted order (`classes`; None for
    numbers). Images are decoded with `torchvision.io` into uint8 tensors (C, H, W); `transform` gets that tensor,
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
            raise DataError(f"Data folder '{self.root}' not found (the data loader's data_dir). Run from the "
                            "project's top folder, or set data_dir to the folder that holds your images.")
        if not csv_path.is_file():
            raise DataError(f"Label file '{csv_path}' not found. Put a CSV with the columns file,label[,split] there, "
                            "or set the data loader's csv_file.")
        self.samples, bad, self.classes, rows = self._read_rows(csv_path, split, num_classes)
        if self.classes is not None and num_classes is not None and len(self.classes) != num_classes:
            raise DataError(f"'{csv_path}' names {len(self.classes)} classes ({', '.join(self.classes)}), but "
                            f"the data loader's num_classes is {num_classes}. Set num_classes (and the model's) to "
                            f"{len(self.classes)}.")
        if bad and not skip_bad:
            raise DataError(f"{bad[0]}. Fix the row or remove it (or set the data loader's skip_bad: true).")
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
        self._check_paths(csv_path)

    def _check_paths(self, csv_path: Path) -> None:
        """Stop at once when none of the first listed files is under `root` (the usual cause: paths written from
        the project's folder, not from data_dir), rather than at the first batch with a missing file's advice."""
        names = [name for name, _, _ in self.samples[:5]]
        if any((self.root / name).is_file() for name in names):
            return
        first = Path(names[0])
        found = f", while '{first}' exists from the current folder" if first.is_file() else ""
        raise DataError(f"None of the first {len(names)} files that '{csv_path}' lists exist under data_dir "
                        f"'{self.root}' (the first would be '{self.root / first}'{found}). The file column is "
                        f"relative to data_dir (e.g. images/001.png for '{self.root}/images/001.png'): fix the paths "
                        "or the data loader's data_dir.")

    @staticmethod
    def _read_rows(csv_path: Path, split: str | None,
                   num_classes: int | None) -> tuple[list[tuple], list[str], list[str] | None, int]:
        """The rows of `split` as (file, label, line), a description of each bad row (a bad label or split
        value), the class names when the labels are names, and the number of rows in the file. Names are
        numbered in sorted order over the whole file, so that every split numbers them alike; a file mixing names
        and numbers has its odd rows (the fewer kind) described."""
        reader = read_csv(csv_path)
        missing = {"file", "label"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(f"'{csv_path}' lacks the column(s) {', '.join(sorted(missing))}; its header must be "
                            f"file,label[,split] (found: {','.join(reader.fieldnames or [])}).")
        has_split = "split" in (reader.fieldnames or [])
        if split == "test" and not has_split:
            raise DataError(f"'{csv_path}' has no 'split' column, so there is no test split. "
                            "Add a split column with values train/test.")
        table = [(reader.line_num, row["file"], (row["label"] or "").strip(), row.get("split")) for row in reader]
        numbers = {line for line, _, label, _ in table if _is_whole_number(label)}
        names = [label for line, _, label, _ in table if label and line not in numbers]
        classes = sorted(set(names)) if len(names) > len(numbers) else None
        index = {name: i for i, name in enumerate(classes or [])}
        rows, bad = [], []
        for line, file, label, row_split in table:
            if has_split:
                value = (row_split or "").strip().lower()
                if value not in ("train", "test"):
                    bad.append(f"'{csv_path}', line {line}: the split is {row_split!r}, not train or test"
                               if (row_split or "").strip() else f"'{csv_path}', line {line}: the split is empty")
                    continue
                if split is not None and value != split:
                    continue
            if not label:
                bad.append(f"'{csv_path}', line {line}: the label is empty")
            elif (line in numbers) == (classes is not None):
                kind, others, count = (("a number", "class names", len(names)) if classes is not None
                                       else ("not a whole number", "whole numbers", len(numbers)))
                bad.append(f"'{csv_path}', line {line}: label {label!r} is {kind}, but the other labels ({count}) "
                           f"are {others}; give every label as a class name, or every one as a number 0..N-1")
            elif classes is not None:
                rows.append((file, index[label], line))
            elif int(label) < 0 or (num_classes is not None and int(label) >= num_classes):
                bad.append(f"'{csv_path}', line {line}: label {int(label)} is outside 0..{(num_classes or 1) - 1} "
                           f"(the data loader's num_classes: {num_classes})")
            else:
                rows.append((file, int(label), line))
        return rows, bad, classes, len(table)

    @property
    def targets(self) -> list[int]:
        """Each row's label, for a split stratified by class."""
        return [label for _, label, _ in self.samples]

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
            given = Path(root).parent  # data_dir
            inside = (f" data_dir '{given}' looks like that folder itself: set data_dir to '{given.parent}', the "
                      f"folder that holds {Path(root).name}/.") if given.name == Path(root).name else ""
            raise DataError(f"Image folder '{root}' not found (the data loader's data_dir). It must hold one folder "
                            f"per class, e.g. train/cat/001.png, train/dog/002.png.{inside}")
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
