"""A text as parallel streams of characters, in order, for a language model that carries its state from batch to
batch (as pytorch/examples' word_language_model batchifies its corpus).

The text is cut into `batch_size` streams of equal length, and each stream into windows of `length` characters.
Item i of the dataset is window i // batch_size of stream i % batch_size, so that with `shuffle: false` batch t
holds window t of every stream: row b of one batch goes on where row b of the batch before ended. The first 85% of
the text trains, the next 10% validates (its own data: no `validation_split`) and the last 5% is the test data.
"""
import glob

import torch
from torch.utils.data import Dataset

from data_loader.base import BaseDataLoader


class TextStreams(Dataset):
    def __init__(self, codes: torch.Tensor, streams: int, length: int):
        self.streams, self.length = streams, length
        self.windows = (len(codes) // streams - 1) // length
        self.data = codes[:streams * (len(codes) // streams)].view(streams, -1)

    def __len__(self):
        return self.streams * self.windows

    def __getitem__(self, index):
        stream, start = index % self.streams, index // self.streams * self.length
        text = self.data[stream, start:start + self.length + 1]
        return text[:-1], text[1:]  # each character's target is the next one


class TextStreamDataLoader(BaseDataLoader):
    def __init__(self, files: str = "docs/*.md", length: int = 64, **kwargs):
        kwargs.setdefault("validation_split", 0)
        super().__init__(**kwargs)
        paths = sorted(glob.glob(files))
        if not paths:
            raise ValueError(f"files: no file matches {files!r}; give a glob pattern of text files, e.g. docs/*.md")
        self.text = "".join(open(path, encoding="utf-8").read() for path in paths)
        self.vocabulary = "".join(sorted(set(self.text)))
        codes = torch.tensor([self.vocabulary.index(c) for c in self.text])
        cut = [int(len(codes) * share) for share in (0.85, 0.95)]
        self.parts = {"train": codes[:cut[0]], "val": codes[cut[0]:cut[1]], "test": codes[cut[1]:]}
        self.length = length

    def streams(self, part: str) -> TextStreams:
        return TextStreams(self.parts[part], self.batch_size, self.length)

    def make_dataset(self, train, transform):
        return self.streams("train" if train else "test")

    def make_val_dataset(self, transform):
        return self.streams("val")

    def model_args(self):
        return {"vocabulary": self.vocabulary}  # the model's size and its decoding, saved in the run's config
