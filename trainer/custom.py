"""Trainer subclasses a config can name in `trainer.type`, with their arguments in `trainer.args`: two small
examples of the override points, and the place for yours (any subclass defined here is found). Callbacks
(trainer/callbacks.py) named in the config's `callbacks` are found here too.

    trainer: {type: RegularizedTrainer, args: {l2: 1.0e-4}, epochs: 30, ...}
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from trainer.trainer import Trainer
from utils.errors import ConfigError


class RegularizedTrainer(Trainer):
    """Adds an L1 and an L2 penalty on the model's weights (every trainable parameter with two or more
    dimensions: linear and convolution weights, not biases or norm layers) to the training loss:
    `loss + l1 * sum(|w|) + l2 * sum(w**2)`. The logged training loss includes the penalty; `val_loss` is the
    plain loss, as `validation_step` does not call `compute_loss`."""

    def __init__(self, *args: Any, l1: float = 0.0, l2: float = 0.0, **kwargs: Any):
        for key, value in (("l1", l1), ("l2", l2)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{key} must be a number >= 0, got {value!r}.")
        super().__init__(*args, **kwargs)
        self.l1, self.l2 = l1, l2
        self.weights = [p for p in self.model.parameters() if p.requires_grad and p.dim() > 1]

    def compute_loss(self, output: Any, target: Any) -> torch.Tensor:
        loss = super().compute_loss(output, target)
        if self.l1:
            loss = loss + self.l1 * sum(w.abs().sum() for w in self.weights)
        if self.l2:
            loss = loss + self.l2 * sum(w.pow(2).sum() for w in self.weights)
        return loss


class DictBatchTrainer(Trainer):
    """For batches that are dicts, and models with several inputs: the model is called with the batch entries
    named in `inputs` as keyword arguments, and its output is compared with the entry `target`.

        trainer: {type: DictBatchTrainer, args: {inputs: [image, size], target: label}}
        # -> loss = criterion(model(image=batch["image"], size=batch["size"]), batch["label"])
    """

    def __init__(self, *args: Any, inputs: Sequence[str] = ("input",), target: str = "target", **kwargs: Any):
        if isinstance(inputs, str) or not all(isinstance(name, str) for name in inputs) or not inputs:
            raise ValueError(f"inputs must be a list of batch keys, e.g. [image, size]; got {inputs!r}.")
        super().__init__(*args, **kwargs)
        self.inputs, self.target = list(inputs), target

    def forward(self, model: nn.Module, batch: Any) -> tuple[Any, Any]:
        missing = [key for key in [*self.inputs, self.target] if not isinstance(batch, dict) or key not in batch]
        if missing:
            found = ", ".join(batch) if isinstance(batch, dict) else f"a {type(batch).__name__}, not a dict"
            raise ConfigError(f"DictBatchTrainer: the batch has no {', '.join(repr(k) for k in missing)} (it holds "
                              f"{found}). Set the trainer's inputs and target args to the batch's keys.")
        return model(**{key: batch[key] for key in self.inputs}), batch[self.target]
