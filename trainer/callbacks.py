"""Lifecycle events of a run, for code that watches or steers training without rewriting the loop.

A callback is an object with some of the methods of `Callback`, listed in the config's `callbacks: [{type,
args}]` and found in trainer/custom.py like a Trainer subclass. A Trainer subclass can define the same methods
for itself, without the `trainer` argument (`def on_train_epoch_start(self): ...`). At each event the built-in
callbacks (the EMA of the weights, trainer/ema.py) run first, then the subclass's method, then each callback's in
the config's order. A callback that keeps state returns it from
`state_dict()` (tensors and plain values) and takes it back in `load_state_dict(state)`: it goes into every
checkpoint, so `--resume` continues it exactly.
"""
from __future__ import annotations

from typing import Any

import torch

from utils.errors import suggest


class Callback:
    """A base class for callbacks: every event does nothing until overridden, and there is no state. The
    trainer's attributes (`epoch`, `batch_idx`, `global_step`, `model`, `optimizer`, ...) say where the run is."""

    def on_fit_start(self, trainer: Any) -> None:
        """Before the first epoch of `fit`, on a resume too."""

    def on_fit_end(self, trainer: Any, values: dict[str, float]) -> None:
        """After the last epoch (or early stopping), with the last epoch's values."""

    def on_train_epoch_start(self, trainer: Any) -> None:
        """Before an epoch's first training batch (not when a resume continues an epoch midway)."""

    def on_train_epoch_end(self, trainer: Any, values: dict[str, float]) -> None:
        """After an epoch's last training batch, with its training values (validation follows)."""

    def on_train_batch_start(self, trainer: Any, batch: Any) -> None:
        """Before the training step of a batch (on the device, after any batch transform)."""

    def on_train_batch_end(self, trainer: Any, batch: Any, step: Any) -> None:
        """After a batch's backward (and the optimizer step that ends its window); `step` is what the training
        step returned, or None when `on_nan: skip_batch` skipped the batch."""

    def on_validation_start(self, trainer: Any) -> None:
        """Before the validation of an epoch."""

    def on_validation_end(self, trainer: Any, values: dict[str, float]) -> None:
        """After the validation of an epoch, with its `val_*` values."""

    def on_before_optimizer_step(self, trainer: Any, optimizer: Any) -> None:
        """Before `optimizer.step()`: the gradients are final (averaged over processes, unscaled, clipped)."""

    def on_after_optimizer_step(self, trainer: Any, optimizer: Any) -> None:
        """After `optimizer.step()` and the scheduler's step; `global_step` counts it already."""

    def on_save_checkpoint(self, trainer: Any, checkpoint: dict[str, Any]) -> None:
        """When a checkpoint is made: add entries to `checkpoint` (tensors and plain values only)."""

    def on_load_checkpoint(self, trainer: Any, checkpoint: dict[str, Any]) -> None:
        """When `--resume` has restored the trainer from `checkpoint`."""

    def on_exception(self, trainer: Any, exception: BaseException) -> None:
        """When `fit` ends by an exception, a stop signal (StopRequested) included, before it propagates."""

    def state_dict(self) -> dict[str, Any]:
        """The callback's state for checkpoints: tensors and plain values."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what `state_dict` returned."""


EVENTS = [name for name in vars(Callback) if name.startswith("on_")]


class Events:
    """The Trainer's side of the events (`call`) and of the values user code logs (`log`)."""

    def log(self, name: str, value: float | torch.Tensor) -> None:
        """Log one number from a training or validation step, or from an event between an epoch's start and its
        last batch: its mean over the epoch's calls (over every process under DDP) appears in the progress line,
        history.jsonl and TensorBoard as `name` in training and `val_<name>` in validation, and `trainer.monitor`
        can name it. Log the same names on every process."""
        if self.logging_to is None:
            raise ValueError(f"log('{name}') was called outside an epoch's training or validation; call it from a "
                             "step, or from an event between on_train_epoch_start and the last on_train_batch_end")
        self.logging_to.log(name, value)

    def call(self, event: str, *args: Any) -> None:
        """The event on the built-in callbacks (the EMA), then on this trainer when a subclass defines it, then on
        each callback of the config."""
        for builtin in self.builtins:
            getattr(builtin, event)(self, *args)
        own = getattr(self, event, None)
        if own is not None:
            own(*args)
        for callback in self.callbacks:
            hook = getattr(callback, event, None)
            if hook is not None:
                hook(self, *args)


def misspelt_event(obj: Any) -> str | None:
    """What is wrong when `obj` has a method that looks like an event but is none (it would never run), else
    None."""
    for name in dir(type(obj)):
        if name.startswith("on_") and name not in EVENTS and callable(getattr(obj, name)):
            return (f"defines {name}, which is no event of trainer/callbacks.py, so it would never run."
                    f"{suggest(name, EVENTS)} The events are listed in docs/callbacks.md.")
    return None
