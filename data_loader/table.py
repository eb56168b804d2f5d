"""Tables for regression: numeric feature columns and a target column of one CSV file, read into tensors once,
and the per-feature standardisation that TableDataLoader fits on the training rows."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset

from data_loader.datasets import read_csv
from utils.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "test")


@dataclass
class Table:
    """The rows of one split: features (N, F) and targets (N, 1) as float32, and each row's CSV line."""

    features: torch.Tensor
    targets: torch.Tensor
    lines: list[int]


def numbers(row: dict[str, str], columns: list[str], path: Path, line: int) -> list[float] | str:
    """The row's values in `columns`, or what is wrong with its first cell that is not a finite number."""
    values = []
    for column in columns:
        try:
            value = math.nan if "_" in row[column] else float(row[column])  # Python reads 1_000; a table does not
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value):
            return f"'{path}', line {line}, column '{column}': {row[column]!r} is not a finite number"
        values.append(value)
    return values


def read_features(path: Path, features: list[str]) -> list[tuple[int, list[float] | str]]:
    """Each row of `path` as (line, its `features` values or what is wrong with them), for predictions: the target
    and split columns may be absent, and every row counts."""
    if not path.is_file():
        raise DataError(f"Table file '{path}' not found. Give a CSV file with a header and the feature columns "
                        f"{', '.join(features)}.")
    reader = read_csv(path)
    missing = [c for c in features if c not in (reader.fieldnames or [])]
    if missing:
        raise DataError(f"'{path}' lacks the feature column(s) {', '.join(missing)} that the model was trained on "
                        f"(its columns: {', '.join(reader.fieldnames or []) or 'none'}). Give a CSV with a header "
                        f"and the columns {', '.join(features)}.")
    return [(line, numbers(row, features, path, line)) for line, row in enumerate(reader, start=2)]


def read_table(path: Path, target: str, features: list[str] | None,
               skip_bad: bool) -> tuple[dict[str, Table], list[str], bool]:
    """The rows of `path` by split (all rows are `train` without a `split` column), the feature column names, and
    whether the file has a split column. A non-numeric cell stops with its file, line and column, or with
    `skip_bad` leaves its row out."""
    if not path.is_file():
        raise DataError(f"Table file '{path}' not found (the data loader's csv_file). Run from the project's top "
                        "folder, or set csv_file to your CSV file (a header, numeric columns, a target column and "
                        "an optional split column of train/test).")
    reader = read_csv(path)
    columns = list(reader.fieldnames or [])
    chosen = features if features is not None else [c for c in columns if c not in (target, "split")]
    missing = [c for c in [target, *chosen] if c not in columns]
    if missing:
        raise DataError(f"'{path}' lacks the column(s) {', '.join(missing)} named by the data loader's target or "
                        f"features (its columns: {', '.join(columns) or 'none'}). Name columns of the file there.")
    if target in chosen or not chosen:
        raise DataError(f"The data loader's features must name at least one column of '{path}' other than the "
                        f"target '{target}'; got {chosen}.")
    has_split = "split" in columns
    rows: dict[str, list[tuple[list[float], float, int]]] = {split: [] for split in SPLITS}
    bad = []
    for line, row in enumerate(reader, start=2):
        split = (row["split"] or "").strip().lower() if has_split else "train"  # as in labels.csv: `Train ` is train
        if split not in SPLITS:
            bad.append(f"'{path}', line {line}, column 'split': {split!r} is neither train nor test")
            continue
        values = numbers(row, [*chosen, target], path, line)
        if isinstance(values, str):
            bad.append(values)
        else:
            rows[split].append((values[:-1], values[-1], line))
    if bad and not skip_bad:
        hint = "" if features is not None else (" To leave a non-numeric column out, list the feature columns in "
                                                "the data loader's features (default: every column but the target "
                                                "and split).")
        raise DataError(f"{bad[0]}. Fix the cell or remove the row (or set the data loader's skip_bad: true to "
                        f"leave such rows out).{hint}")
    if bad:
        log.warning("Left out %d row(s) of '%s' with a bad cell (skip_bad: true); the first: %s.", len(bad), path,
                    bad[0])
    tables = {split: Table(torch.tensor([r[0] for r in split_rows], dtype=torch.float32).reshape(-1, len(chosen)),
                           torch.tensor([[r[1]] for r in split_rows], dtype=torch.float32).reshape(-1, 1),
                           [r[2] for r in split_rows])
              for split, split_rows in rows.items()}
    return tables, chosen, has_split


class Standardize:
    """`(x - mean) / std` per feature column. The loader fits it on its training rows only, so that no statistic
    of the validation or test rows leaks into training, and saves it with the model; a column that is constant
    over those rows gets std 1 (it becomes 0) instead of a division by zero."""

    def __init__(self):
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None

    def fit(self, features: torch.Tensor) -> None:
        std = features.std(dim=0, correction=0)
        self.mean, self.std = features.mean(dim=0), torch.where(std > 0, std, torch.ones_like(std))

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) / self.std


class TableDataset(Dataset):
    """The rows of one `Table`: (features (F,), target (1,)), both float32, the features standardised by
    `standardize` when a row is read (so statistics loaded from a checkpoint apply to datasets built before)."""

    def __init__(self, table: Table, path: Path, standardize: Standardize, transform: Callable | None = None,
                 target_transform: Callable | None = None):
        self.table = table
        self.path = path
        self.standardize = standardize
        self.transform = transform
        self.target_transform = target_transform

    def describe(self, index: int) -> str:
        return f"row at line {self.table.lines[index]} of '{self.path}'"

    def __len__(self) -> int:
        return len(self.table.lines)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.standardize(self.table.features[index])
        if self.transform is not None:
            features = self.transform(features)
        target = self.table.targets[index]
        return features, self.target_transform(target) if self.target_transform is not None else target
