"""Datasets: a folder of images listed in a CSV file (file name, label, split) - the layout users bring."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image, read_file

from utils.errors import DataError

_MODES = {"unchanged": ImageReadMode.UNCHANGED, "gray": ImageReadMode.GRAY, "rgb": ImageReadMode.RGB}


class CsvImageDataset(Dataset):
    """Images under `root`, listed in `root/csv_file` with columns `file`, `label` and (optionally) `split`.

    Images are decoded with `torchvision.io` into uint8 tensors (C, H, W); `transform` gets that tensor,
    `target_transform` the integer label. `cache: true` keeps decoded images in memory (for small data sets).
    """

    def __init__(self, root: str | Path, csv_file: str = "labels.csv", split: str | None = None,
                 transform: Callable | None = None, target_transform: Callable | None = None,
                 image_mode: str = "unchanged", num_classes: int | None = None, cache: bool = False):
        self.root = Path(root)
        self.cache: dict[int, torch.Tensor] | None = {} if cache else None
        self.transform = transform
        self.target_transform = target_transform
        if image_mode not in _MODES:
            raise DataError(f"data_loader.args.image_mode must be one of {', '.join(_MODES)}, got {image_mode!r}.")
        self.mode = _MODES[image_mode]
        csv_path = self.root / csv_file
        if not self.root.is_dir():
            raise DataError(f"Data folder '{self.root}' not found (data_loader.args.data_dir). Run from the project's "
                            "top folder, or set data_loader.args.data_dir to the folder that holds your images.")
        if not csv_path.is_file():
            raise DataError(f"Label file '{csv_path}' not found. Put a CSV with the columns file,label[,split] there, "
                            "or set data_loader.args.csv_file.")
        self.samples = self._read_rows(csv_path, split, num_classes)
        if not self.samples:
            raise DataError(f"'{csv_path}' lists no rows for split '{split}'. Check the 'split' column "
                            "(expected values: train, test).")

    @staticmethod
    def _read_rows(csv_path: Path, split: str | None, num_classes: int | None) -> list[tuple[str, int]]:
        with open(csv_path, newline="") as f:
            reader = csv.DictReader(f)
            missing = {"file", "label"} - set(reader.fieldnames or [])
            if missing:
                raise DataError(f"'{csv_path}' lacks the column(s) {', '.join(sorted(missing))}; its header must be "
                                f"file,label[,split] (found: {','.join(reader.fieldnames or [])}).")
            has_split = "split" in (reader.fieldnames or [])
            if split == "test" and not has_split:
                raise DataError(f"'{csv_path}' has no 'split' column, so there is no test split. "
                                "Add a split column with values train/test.")
            rows = []
            for line, row in enumerate(reader, start=2):
                if split is not None and has_split and row["split"] != split:
                    continue
                try:
                    label = int(row["label"])
                except (TypeError, ValueError):
                    raise DataError(f"'{csv_path}', line {line}: label {row['label']!r} is not a whole number.") from None
                if label < 0 or (num_classes is not None and label >= num_classes):
                    raise DataError(f"'{csv_path}', line {line}: label {label} is outside 0..{(num_classes or 1) - 1}.")
                rows.append((row["file"], label))
            return rows

    def __len__(self) -> int:
        return len(self.samples)

    def _decode(self, name: str) -> torch.Tensor:
        path = self.root / name
        try:
            return decode_image(read_file(str(path)), mode=self.mode)
        except (RuntimeError, OSError) as e:
            raise DataError(f"Cannot read image '{path}' (listed in the CSV as '{name}'): {e}. "
                            "Replace the file or remove its row.") from None

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        name, label = self.samples[index]
        if self.cache is None:
            image = self._decode(name)
        else:
            image = self.cache.get(index)
            if image is None:
                image = self.cache[index] = self._decode(name)
        if self.transform is not None:
            image = self.transform(image)
        target = self.target_transform(label) if self.target_transform is not None else label
        return image, target
