"""The template's loss functions, named in `loss` (yours go in model/loss.py and are found first). Names found
in neither are looked up in `torch.nn` (e.g. `loss: {type: CrossEntropyLoss, args: {label_smoothing: 0.1}}`)."""
import torch
import torch.nn.functional as F

from model.builtin.metrics import _columns


def nll_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """For models that return log-probabilities (log_softmax)."""
    return F.nll_loss(output, target)


def cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """For models that return logits; `target` may be class indices or class probabilities (one-hot)."""
    return F.cross_entropy(output, target)


def mse_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error, for regression (TableDataLoader's targets are (B, 1), like an MLP's outputs with
    `out_features: 1`); outputs and targets of different shapes stop with an error instead of broadcasting."""
    return F.mse_loss(*_columns(output, target, "mse_loss"))
