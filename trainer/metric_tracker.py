"""Metric bookkeeping on the device: sample-weighted sums of the loss and metrics, exact over all processes."""
from __future__ import annotations

import numbers
from typing import Any, Callable

import torch

from model.builtin.metrics import SummedMetric
from utils import distributed
from utils.errors import ConfigError


def batch_size(target: Any) -> int:
    """Samples in a batch: the length of the target, or of the first tensor in a structured target."""
    if isinstance(target, torch.Tensor):
        return target.size(0) if target.dim() else 1
    values = target.values() if isinstance(target, dict) else target if isinstance(target, (list, tuple)) else []
    for value in values:
        n = batch_size(value)
        if n:
            return n
    return 0


def as_scalar(value: Any, name: str, device: torch.device) -> torch.Tensor:
    """A metric's value as a 0-d float tensor on `device`: a one-element tensor (on any device), a Python number
    or a NumPy scalar."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.detach().reshape(()).float().to(device)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return torch.tensor(float(value), device=device)
    shape = f" of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else ""
    raise ConfigError(f"The metric '{name}' returned a {type(value).__name__}{shape}; a metric returns one number "
                      "per batch (its mean over the batch): a 0-d tensor, a Python number or a NumPy scalar. "
                      f"Fix the function, or remove '{name}' from the config's metrics.")


def summed(fn: Callable) -> tuple[Callable, Callable] | None:
    """`(sums, finish)` of a SummedMetric (model/builtin/metrics.py: rmse, r2), or None for a batch mean."""
    fn = getattr(fn, "func", fn)  # a metric with args is a functools.partial
    return (fn.sums, fn.finish) if isinstance(fn, SummedMetric) else None


class MetricTracker:
    """Sample-weighted sums of the loss and metrics, kept as one tensor on the device.

    Each batch adds `value * batch_size`, so a short last batch weighs what it holds; a metric that is not a
    mean of per-sample values (`summed`) adds its own sums instead, and its figure is made from their totals.
    Reading the result (`result()`) is the only host synchronisation.
    """

    def __init__(self, metrics: dict[str, Callable], device: torch.device):
        self.metrics = metrics
        self.device = device
        self.names = ["loss", *metrics]
        self.summed = {name: parts for name, fn in metrics.items() if (parts := summed(fn)) is not None}
        # float64 keeps long epochs' sums exact (MPS has no float64).
        self.dtype = torch.float32 if device.type == "mps" else torch.float64
        self.sums = torch.zeros(len(self.names), device=device, dtype=self.dtype)
        self.totals: dict[str, torch.Tensor] = {}  # the summed metrics' totals, created on the first batch
        self.count = 0
        self.logged: dict[str, torch.Tensor] = {}  # Trainer.log's values: [sum, calls] by name

    def log(self, name: str, value: Any) -> None:
        """Add one value of `name`; its figure is the mean over the calls."""
        if name in self.names or name.startswith("val_"):
            raise ValueError(f"log('{name}'): that name is taken by the loss, a metric or validation's values; "
                             "log under another name")
        pair = torch.stack([as_scalar(value, name, self.device).to(self.dtype), torch.ones((), dtype=self.dtype,
                                                                                           device=self.device)])
        self.logged[name] = self.logged[name] + pair if name in self.logged else pair

    def update(self, loss: torch.Tensor, output: Any, target: Any, extra: tuple = ()) -> None:
        """Add one batch: `fn(output, target, *extra)` for each metric (`extra`: the batch's elements after the
        target)."""
        n = batch_size(target)
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            output = output.float()  # metrics see float32 outputs under mixed precision too
        values = [loss.detach().float()]
        for name, fn in self.metrics.items():
            if name in self.summed:
                sums = self.summed[name][0](output, target, *extra).detach().to(self.device, self.dtype)
                self.totals[name] = self.totals[name] + sums if name in self.totals else sums
                values.append(values[0].new_zeros(()))
            else:
                values.append(as_scalar(fn(output, target, *extra), name, self.device))
        self.sums += torch.stack(values) * n
        self.count += n

    def result(self, prefix: str = "") -> dict[str, float]:
        """Figures over every sample seen, by all processes under DDP (sums and counts are all-reduced, so the
        figures are exact, not an average of per-process averages). A collective call under DDP."""
        summed = [name for name in self.summed if name in self.totals]
        logged = sorted(self.logged)
        parts = [self.sums, self.sums.new_tensor([self.count]), *(self.totals[name] for name in summed),
                 *(self.logged[name] for name in logged)]
        flat = distributed.all_reduce(torch.cat(parts))
        *sums, count = flat[:len(self.names) + 1].tolist()
        result = {prefix + name: total / max(count, 1) for name, total in zip(self.names, sums)}
        offset = len(self.names) + 1
        for name in summed:
            size = len(self.totals[name])
            result[prefix + name] = float(self.summed[name][1](flat[offset:offset + size]))
            offset += size
        for name in logged:
            total, calls = flat[offset:offset + 2].tolist()
            result[prefix + name] = total / calls
            offset += 2
        return result

    def state_dict(self) -> dict:
        return {"sums": self.sums.cpu(), "count": self.count,
                "totals": {name: total.cpu() for name, total in self.totals.items()},
                "logged": {name: pair.cpu() for name, pair in self.logged.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.sums = state["sums"].to(self.sums.device)
        self.count = state["count"]
        self.totals = {name: total.to(self.device) for name, total in state.get("totals", {}).items()}
        self.logged = {name: pair.to(self.device) for name, pair in state.get("logged", {}).items()}
