"""Metric bookkeeping on the device, and the evaluation loop shared by validation and `test.py`
(one implementation, so both report the same figures for the same weights)."""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from utils import distributed


class MetricTracker:
    """Sample-weighted sums of the loss and metrics, kept as one tensor on the device.

    Each batch adds `value * batch_size`, so a short last batch weighs what it holds. Reading the result
    (`result()`) is the only host synchronisation.
    """

    def __init__(self, metrics: dict[str, Callable], device: torch.device):
        self.metrics = metrics
        self.names = ["loss", *metrics]
        # float64 keeps long epochs' sums exact (MPS has no float64).
        self.sums = torch.zeros(len(self.names), device=device,
                                dtype=torch.float32 if device.type == "mps" else torch.float64)
        self.count = 0

    def update(self, loss: torch.Tensor, output: torch.Tensor, target: torch.Tensor) -> None:
        n = target.size(0)
        values = [loss.detach().float()] + [fn(output, target).float() for fn in self.metrics.values()]
        self.sums += torch.stack(values) * n
        self.count += n

    def result(self, prefix: str = "") -> dict[str, float]:
        """Means over every sample seen, by all processes under DDP (sums and counts are all-reduced, so the
        figures are exact, not an average of per-process averages). A collective call under DDP."""
        totals = torch.cat([self.sums, self.sums.new_tensor([self.count])])
        *sums, count = distributed.all_reduce(totals).tolist()
        return {prefix + name: total / max(count, 1) for name, total in zip(self.names, sums)}

    def state_dict(self) -> dict:
        return {"sums": self.sums.cpu(), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.sums = state["sums"].to(self.sums.device)
        self.count = state["count"]


def to_device(data: torch.Tensor, target: torch.Tensor, device: torch.device,
              channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Asynchronous host-to-device copy (fast when the loader pins memory)."""
    data = data.to(device, non_blocking=True)
    if channels_last and data.dim() == 4:
        data = data.contiguous(memory_format=torch.channels_last)
    return data, target.to(device, non_blocking=True)


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass when `trainer.amp` asks for it, a no-op otherwise."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(model: nn.Module, loader, criterion: Callable, metrics: dict[str, Callable], device: torch.device,
             amp_dtype: torch.dtype | None = None, channels_last: bool = False, desc: str = "valid",
             should_stop: Callable[[], bool] = lambda: False, progress: bool = True) -> dict[str, float] | None:
    """Loss and metrics over the whole `loader` in eval mode (each process its share under DDP, then the
    exact totals); None if `should_stop()` interrupted it."""
    was_training = model.training
    model.eval()
    tracker = MetricTracker(metrics, device)
    try:
        for data, target in tqdm(loader, desc=desc, leave=False, disable=None if progress else True,
                                 dynamic_ncols=True):
            if should_stop():
                return None
            data, target = to_device(data, target, device, channels_last)
            with autocast(device, amp_dtype):
                output = model(data)
                loss = criterion(output, target)
            tracker.update(loss, output.float(), target)
    finally:
        model.train(was_training)
    return tracker.result()
