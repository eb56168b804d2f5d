"""The template's metrics, named in `metrics` (yours go in model/metric.py and are found first). Each returns the
batch mean as a tensor on the batch's device; the trainer weights it by the batch size and reads it back only
when it logs (no `.item()` per step)."""
import logging

import torch

log = logging.getLogger(__name__)
_warned_top_k: set[tuple[int, int]] = set()  # (k, number of classes) already reported


def _labels(target: torch.Tensor) -> torch.Tensor:
    """Class indices, also when the targets are one-hot or soft labels."""
    return target.argmax(dim=1) if target.dim() > 1 else target


def accuracy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Share of samples whose highest-scoring class is the target."""
    with torch.no_grad():
        return (output.argmax(dim=1) == _labels(target)).float().mean()


def top_k_acc(output: torch.Tensor, target: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Share of samples whose target is among the `k` highest-scoring classes. With `k` at or above the number of
    classes every target is, so the value is always 1.0: said once in the log, since it looks like a perfect model."""
    classes = output.size(1)
    if k >= classes and (k, classes) not in _warned_top_k:
        _warned_top_k.add((k, classes))
        log.warning("top_k_acc: k=%d, but the model scores %d classes, so every target is among the top %d and the "
                    "metric is always 1.0. Give it a smaller k (metrics: [{type: top_k_acc, args: {k: %d}}]) or "
                    "leave it out.", k, classes, k, max(1, classes - 1))
    with torch.no_grad():
        top = output.topk(min(k, classes), dim=1).indices
        return (top == _labels(target).unsqueeze(1)).any(dim=1).float().mean()
