"""The template's metrics, named in `metrics` (yours go in model/metric.py and are found first). Each returns the
batch mean as a tensor on the batch's device; the trainer weights it by the batch size and reads it back only
when it logs (no `.item()` per step)."""
import torch


def _labels(target: torch.Tensor) -> torch.Tensor:
    """Class indices, also when the targets are one-hot or soft labels."""
    return target.argmax(dim=1) if target.dim() > 1 else target


def accuracy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Share of samples whose highest-scoring class is the target."""
    with torch.no_grad():
        return (output.argmax(dim=1) == _labels(target)).float().mean()


def top_k_acc(output: torch.Tensor, target: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Share of samples whose target is among the `k` highest-scoring classes."""
    with torch.no_grad():
        top = output.topk(min(k, output.size(1)), dim=1).indices
        return (top == _labels(target).unsqueeze(1)).any(dim=1).float().mean()
