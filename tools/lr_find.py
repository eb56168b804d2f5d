"""The LR range test (L. Smith, "Cyclical Learning Rates for Training Neural Networks", 2017; fastai's lr_find,
Lightning's Tuner.lr_find): train a few hundred steps with a learning rate rising exponentially, watch the loss,
and suggest the rate at which it falls fastest. `python tune.py --lr-find -c CONFIG` (tune.py builds the run as
train.py does and calls `range_test`); the steps, their files and the suggestion are described in docs/search.md.
"""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from data_loader.batch_transforms import training_batch
from trainer.trainer import Trainer
from utils.device import autocast
from utils.errors import ConfigError

DIVERGED = 4.0  # stop once the loss, averaged over the last steps, exceeds this many times its lowest average
WINDOW = 0.25  # the smoothed loss of a step averages the steps within this many decades of rate either side
SKIP_START = 10  # steps left out of the suggestion: the loss has not started to move there


@dataclass
class RangeTest:
    lrs: list[float]  # the rate of each step that ran
    losses: list[float]  # the training loss of each step (before its update)
    smoothed: list[float]  # the mean loss of the steps within WINDOW decades of rate (centred: no lag)
    suggestion: float | None  # the rate of steepest descent of the smoothed loss; None if too few steps ran
    diverged: bool  # stopped early, at a non-finite loss or a rising loss (see range_test)

    def csv_bytes(self) -> bytes:
        """lr_find.csv: step, lr, loss, smoothed_loss."""
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(["step", "lr", "loss", "smoothed_loss"])
        writer.writerows([step, lr, loss, smoothed] for step, (lr, loss, smoothed)
                         in enumerate(zip(self.lrs, self.losses, self.smoothed), start=1))
        return text.getvalue().encode()


def schedule(start: float, end: float, steps: int) -> list[float]:
    """`steps` rates from `start` to `end`, each the previous one times the same factor."""
    return [start * (end / start) ** (i / max(steps - 1, 1)) for i in range(steps)]


def _batches(loader: Iterable) -> Iterator[Any]:
    """The training batches, epoch after epoch (each in its seeded order), for as long as they are asked for."""
    epoch = 1
    while True:
        loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def range_test(trainer: Trainer, lrs: list[float]) -> RangeTest:
    """One optimizer step per rate of `lrs`, as the trainer trains (its training_step, AMP, gradient accumulation
    and clipping), on the trainer's model, which it changes: pass a model that is not needed afterwards. The
    config's scheduler is not stepped; parameter groups keep their ratio to the first group's rate. Stops when
    the loss is not finite, or its mean over the last steps (a window as wide as the smoothing's) exceeds
    DIVERGED times the lowest such mean."""
    if trainer.manual or trainer.closure:
        raise ConfigError("The LR range test steps one optimizer the way the loop does; a run whose training step steps "
                          "several optimizers itself, or whose optimizer takes a closure (LBFGS), cannot be tested "
                          "this way. Pick the learning rates by a short search instead (docs/search.md).")
    optimizer = trainer.optimizer
    base = [group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]  # before a scheduler's start
    trainer.lr_schedulers = {}
    trainer.model.train()
    half = max(1, round(WINDOW * (len(lrs) - 1) / math.log10(lrs[-1] / lrs[0])))
    batches = _batches(trainer.train_loader)
    losses: list[float] = []
    lowest, diverged = math.inf, False
    for lr in tqdm(lrs, desc="LR range test", leave=False, dynamic_ncols=True):
        for group, rate in zip(optimizer.param_groups, base):
            group["lr"] = lr * rate / base[0]
        optimizer.zero_grad(set_to_none=True)
        loss = 0.0
        for _ in range(trainer.accumulate):
            batch = training_batch(next(batches), trainer.data.batch_transform, trainer.train_loader.sampler,
                                   len(losses), trainer.device, trainer.cfg["channels_last"])
            with autocast(trainer.device, trainer.amp_dtype):
                step = trainer.training_step(trainer.train_model, batch)
            trainer.scaler.scale(step.loss / trainer.accumulate).backward()
            loss += step.loss.item() / trainer.accumulate
        trainer.optimizer_step()
        losses.append(loss)
        recent = _mean(losses[-(2 * half + 1):])
        lowest = min(lowest, recent)
        if not math.isfinite(loss) or recent > DIVERGED * lowest:
            diverged = True
            break
    ran = lrs[:len(losses)]
    smoothed = [_mean(losses[max(0, i - half):i + half + 1]) for i in range(len(losses))]
    return RangeTest(ran, losses, smoothed, suggest(ran, smoothed), diverged)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def suggest(lrs: list[float], smoothed: list[float]) -> float | None:
    """The rate where the smoothed loss falls fastest against log(lr) (the most negative central difference),
    between step SKIP_START and the lowest smoothed loss; None if fewer than 3 steps are in between."""
    finite = [i for i, value in enumerate(smoothed) if math.isfinite(value)]
    if not finite:
        return None
    low = min(finite, key=smoothed.__getitem__)
    slopes = {i: (smoothed[i + 1] - smoothed[i - 1]) / math.log(lrs[i + 1] / lrs[i - 1])
              for i in range(SKIP_START + 1, low)}
    return lrs[min(slopes, key=slopes.get)] if len(slopes) >= 3 else None
