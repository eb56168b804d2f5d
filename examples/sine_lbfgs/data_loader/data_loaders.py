"""The sine waves of pytorch/examples' time_sequence_prediction (its generate_sine_wave.py), made from the seed
instead of a file: each wave is sin(t / 20) from a random shift; a sample is the wave but its last value, and the
target the wave shifted by one (the next value at every step)."""

import torch
from torch.utils.data import TensorDataset

from data_loader.base import BaseDataLoader


class SineWaveDataLoader(BaseDataLoader):
    def __init__(self, waves: int = 100, length: int = 200, **kwargs):
        super().__init__(**kwargs)
        self.waves, self.length = waves, length

    def make_dataset(self, train, transform):
        generator = torch.Generator().manual_seed(self.seed + (0 if train else 1))  # the test waves are others
        shifts = torch.randint(-80, 80, (self.waves, 1), generator=generator)
        values = torch.sin((torch.arange(self.length) + shifts) / 20.0).float()
        return TensorDataset(values[:, :-1], values[:, 1:])
