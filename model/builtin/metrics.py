"""The template's metrics, named in `metrics` (yours go in model/metric.py and are found first). Each returns the
batch mean as a tensor on the batch's device; the trainer weights it by the batch size and reads it back only
when it logs (no `.item()` per step).

The trainer's figure for an epoch is the mean of the batch values weighted by batch size. For `accuracy`,
`top_k_acc` and `mae` that is the exact figure over the epoch; for `rmse` and `r2`, which are not means of
per-sample values, it is not (see their docstrings): the exact RMSE is the square root of the logged loss under
`mse_loss`, and an exact R² needs a batch as large as the split."""
import torch

from utils.errors import ConfigError

__all__ = ["accuracy", "top_k_acc", "mae", "rmse", "r2"]  # the names a config may give; not ConfigError


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


def _columns(output: torch.Tensor, target: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Output and target as (B, K) columns. Shapes that differ would broadcast ((B, 1) against (B,) gives
    (B, B)) into a plausible but wrong figure, so they stop with an error instead."""
    shapes = tuple(output.shape), tuple(target.shape)
    output, target = output.reshape(len(output), -1), target.reshape(len(target), -1)
    if output.shape != target.shape:
        raise ConfigError(f"{name}: the model's outputs have the shape {shapes[0]} and the targets {shapes[1]}; "
                          "they must match. Set the model's number of outputs (arch.args.out_features) to the "
                          "number of target columns.")
    return output, target


def mae(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error, in the targets' units."""
    with torch.no_grad():
        output, target = _columns(output, target, "mae")
        return (output - target).abs().mean()


def rmse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Root mean squared error of the batch, in the targets' units. The trainer averages it over batches, which is
    not the epoch's RMSE: the mean of square roots is at most the square root of the mean, so the logged figure
    is low unless the batch holds the whole split. The exact figure is sqrt(loss) under `mse_loss`."""
    with torch.no_grad():
        output, target = _columns(output, target, "rmse")
        return (output - target).square().mean().sqrt()


def r2(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Coefficient of determination of the batch, 1 - SSE / SST, with SST about the batch's own target mean
    (averaged over target columns). 1 is perfect, 0 is as good as predicting that mean. A batch whose targets
    are all equal gives 1 if predicted exactly, else 0 (scikit-learn's convention) instead of a division by zero.
    Averaged over batches by the trainer it differs from the R² of the whole split (each batch is measured
    against its own mean, and small batches are noisy); it is exact when the batch holds the whole split."""
    with torch.no_grad():
        output, target = _columns(output, target, "r2")
        sse = (target - output).square().sum(dim=0)
        sst = (target - target.mean(dim=0)).square().sum(dim=0)
        constant = (sse == 0).to(sse.dtype)
        return torch.where(sst > 0, 1 - sse / sst, constant).mean()
