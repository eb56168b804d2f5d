"""Data order that can be resumed mid-epoch: a seeded permutation per epoch, started at any position.

With worker processes, each sample also gets its own seed (from the run's seed, the epoch and the sample
index), so random augmentations do not depend on which worker loads it or where a run was resumed.
"""
from __future__ import annotations

import random
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

_MASK = 2**63 - 1


class ResumableSampler(Sampler):
    """Yields `indices` in a seeded order per epoch (`set_epoch`), starting after `skip(n)` samples.

    Under DDP each of `num_replicas` processes takes every `num_replicas`-th sample of the same epoch order,
    from position `rank`. With `pad` (training), the order is first padded with its own first samples to a
    multiple of `num_replicas`, so every process runs the same number of steps (as DistributedSampler does);
    without it (evaluation), each sample is seen exactly once.

    With `repeats` > 1 (repeated augmentation, the reference's RASampler), each sample of the epoch order is taken
    `repeats` times in a row and the order is cut back to its usual length: an epoch has as many steps as before
    and shows 1/`repeats` of the samples, each `repeats` times, with its own augmentation each time; under DDP the
    copies go to different processes. Unlike the reference (DeiT's sampler), the epoch is not also rounded down to
    a multiple of 256 samples.
    """

    def __init__(self, indices: Sequence[int], shuffle: bool = True, seed: int = 0, with_seeds: bool = False,
                 num_replicas: int = 1, rank: int = 0, pad: bool = True, repeats: int = 1):
        self.indices = torch.as_tensor(list(indices), dtype=torch.long)
        self.shuffle = shuffle
        self.seed = seed
        self.with_seeds = with_seeds
        self.num_replicas = num_replicas
        self.rank = rank
        self.pad = pad
        self.repeats = repeats
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.start = 0

    def skip(self, samples: int) -> None:
        """Begin the next pass after the first `samples` of this epoch's order (used when resuming)."""
        self.start = samples

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "start": self.start, "num_replicas": self.num_replicas}

    def draw_seed(self, factor: int = 0, number: int = 0) -> int:
        """A seed for random draws of this run seed and epoch; `factor` and `number` pick one of a stream of
        seeds (a sample, a batch). The epoch's shuffle uses the plain epoch seed."""
        return ((self.seed * 1_000_003 + self.epoch) * (factor or 1) + number) & _MASK

    def order(self) -> torch.Tensor:
        """This process's indices of this epoch, from the current position on."""
        order = self.indices
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.draw_seed())
            order = order[torch.randperm(len(order), generator=generator)]
        if self.repeats > 1:
            order = order.repeat_interleave(self.repeats)[:len(order)]
        if self.num_replicas > 1:
            missing = -len(order) % self.num_replicas
            if self.pad and missing:
                order = torch.cat([order, order.repeat(-(-missing // len(order)))[:missing]])
            order = order[self.rank::self.num_replicas]
        return order[self.start:]

    def __iter__(self) -> Iterator:
        for position, index in enumerate(self.order().tolist(), self.start):
            if self.with_seeds:
                # The copy number (repeated augmentation; 0 otherwise) from the sample's place in the epoch order.
                copy = (position * self.num_replicas + self.rank) % self.repeats
                yield index, self.draw_seed(10_000_019, index * self.repeats + copy)
            else:
                yield index

    def __len__(self) -> int:
        """Samples this process sees per epoch."""
        n = len(self.indices)
        if self.num_replicas == 1:
            return n
        if self.pad:
            return -(-n // self.num_replicas)
        return len(range(self.rank, n, self.num_replicas))


class SeededDataset(Dataset):
    """Wraps a dataset so that `dataset[(index, seed)]` draws its random augmentation from `seed`."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        return self.dataset[index]
