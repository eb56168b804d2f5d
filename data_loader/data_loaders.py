"""The data loaders a config can name in `data_loader.type`. Add yours here."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from torch.utils.data import Dataset
from torchvision import datasets

from data_loader.base import BaseDataLoader
from data_loader.datasets import CsvImageDataset
from utils.errors import DataError

_TO_FLOAT = [{"type": "ToImage"}, {"type": "ToDtype", "args": {"dtype": "float32", "scale": True}}]


class CsvImageDataLoader(BaseDataLoader):
    """Images in a folder plus a CSV of file,label,split - the bundled digits and most users' own data."""

    def __init__(self, data_dir: str = "data/digits", csv_file: str = "labels.csv", image_mode: str = "unchanged",
                 num_classes: int | None = None, cache: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.data_dir = Path(data_dir)
        self.csv_file = csv_file
        self.image_mode = image_mode
        self.num_classes = num_classes
        self.cache = cache
        self.make_dataset(True, None)

    def make_dataset(self, train: bool, transform: Callable | None) -> Dataset:
        return CsvImageDataset(self.data_dir, self.csv_file, "train" if train else "test", transform,
                               self.target_transform, self.image_mode, self.num_classes, self.cache)


class MnistDataLoader(BaseDataLoader):
    """torchvision's MNIST under `data_dir` (the classic template's example). Downloads only when the files
    are absent and `download` is true."""

    def __init__(self, data_dir: str = "data/", download: bool = True, **kwargs):
        kwargs.setdefault("transform", _TO_FLOAT + [{"type": "Normalize", "args": {"mean": [0.1307], "std": [0.3081]}}])
        kwargs.setdefault("validation_split", 0.0)
        super().__init__(**kwargs)
        self.data_dir = data_dir
        self.download = download
        self.make_dataset(True, None)

    def make_dataset(self, train: bool, transform: Callable | None) -> Dataset:
        try:
            return datasets.MNIST(self.data_dir, train=train, transform=transform,
                                  target_transform=self.target_transform, download=self.download)
        except (RuntimeError, OSError) as e:
            how = "download is off (data_loader.args.download: false)" if not self.download else f"the download failed ({e})"
            raise DataError(f"MNIST not found under '{Path(self.data_dir) / 'MNIST' / 'raw'}' and {how}. Set "
                            "data_loader.args.download: true on a machine with internet access, or place the four "
                            "files train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
                            "t10k-labels-idx1-ubyte there.") from None
