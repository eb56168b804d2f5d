"""The template's metrics, named in `metrics` (yours go in model/metric.py and are found first). Each returns the
batch mean as a tensor on the batch's device; the trainer weights it by the batch size and reads it back only
when it logs (no `.item()` per step).

The trainer's figure for an epoch is the mean of the batch values weighted by batch size, which is exact for
means of per-sample values (`accuracy`, `top_k_acc`, `mae`). A metric that is not such a mean (`rmse`, `r2`) is a
`SummedMetric`: the trainer adds its sums over the epoch, so its figure is exact whatever the batch size."""
import logging

import torch

__all__ = ["accuracy", "top_k_acc", "mae", "rmse", "r2"]  # the names a config may give

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
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"top_k_acc's k must be a whole number >= 1 (metrics: [{{type: top_k_acc, args: {{k: 3}}}}]); "
                         f"got {k!r}.")
    classes = output.size(1)
    if k >= classes and (k, classes) not in _warned_top_k:
        _warned_top_k.add((k, classes))
        log.warning("top_k_acc: k=%d, but the model scores %d classes, so every target is among the top %d and the "
                    "metric is always 1.0. Give it a smaller k (metrics: [{type: top_k_acc, args: {k: %d}}]) or "
                    "leave it out.", k, classes, k, max(1, classes - 1))
    with torch.no_grad():
        top = output.topk(min(k, classes), dim=1).indices
        return (top == _labels(target).unsqueeze(1)).any(dim=1).float().mean()


def _columns(output: torch.Tensor, target: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Output and target as (B, K) columns, in float64 where the device has it (sums of squares stay exact).
    Shapes that differ would broadcast ((B, 1) against (B,) gives (B, B)) into a plausible but wrong figure, so
    they stop with an error instead."""
    shapes = tuple(output.shape), tuple(target.shape)
    dtype = torch.float32 if output.device.type == "mps" else torch.float64
    output, target = output.reshape(len(output), -1).to(dtype), target.reshape(len(target), -1).to(dtype)
    if output.shape != target.shape:
        raise ValueError(f"{name}: the model's outputs have the shape {shapes[0]} and the targets {shapes[1]}; "
                         "they must match. Set the model's number of outputs (MLP's out_features) to the number of "
                         "target columns.")
    return output, target


def mae(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error, in the targets' units."""
    with torch.no_grad():
        output, target = _columns(output, target, "mae")
        return (output - target).abs().mean()


class SummedMetric:
    """A metric that is not a mean of per-sample values (RMSE, R²). The trainer adds `sums(output, target)`, a 1-D
    tensor per batch, over the epoch (over all processes under DDP) and makes the figure with `finish(totals)`, so
    that it is exact whatever the batch size. Called on one batch, it gives that batch's figure."""

    def sums(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def finish(self, totals: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.finish(self.sums(output, target))


class RootMeanSquaredError(SummedMetric):
    """Root mean squared error, in the targets' units, exact over the epoch."""

    def sums(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """[sum of squared errors, number of values] of a batch."""
        with torch.no_grad():
            output, target = _columns(output, target, "rmse")
            return torch.stack([(output - target).square().sum(), output.new_tensor(output.numel())])

    def finish(self, totals: torch.Tensor) -> torch.Tensor:
        return (totals[0] / totals[1]).sqrt()


class R2Score(SummedMetric):
    """Coefficient of determination, 1 - SSE / SST with SST about the targets' mean (averaged over target
    columns): 1 is perfect, 0 is as good as predicting the mean; exact over the epoch. Targets that are all equal
    give 1 if predicted exactly, else 0 (scikit-learn's convention), instead of a division by zero."""

    def sums(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per target column: the sum of squared errors, of targets and of squared targets; then the row count."""
        with torch.no_grad():
            output, target = _columns(output, target, "r2")
            return torch.cat([(target - output).square().sum(dim=0), target.sum(dim=0), target.square().sum(dim=0),
                              target.new_tensor([len(target)])])

    def finish(self, totals: torch.Tensor) -> torch.Tensor:
        sse, total, squares = totals[:-1].reshape(3, -1)
        sst = squares - total.square() / totals[-1]
        constant = (sse == 0).to(sse.dtype)
        return torch.where(sst > 0, 1 - sse / sst, constant).mean()


rmse = RootMeanSquaredError()
r2 = R2Score()
