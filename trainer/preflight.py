"""Check before writing: one batch of the training data goes through the training step (model and loss), the
metrics and backward, one batch of the validation data through the validation step, and the LR scheduler takes one
step, before the run folder is created, so that a model that does not fit its data, a label outside the model's
classes, a metric of the wrong kind, a scheduler that cannot step or a callback state no checkpoint can hold stops
with one message and writes nothing. No event runs during the check.

The check leaves no trace, whatever the training step does: the parameters, buffers, gradients, the optimizer's,
scheduler's and scaler's state, learning rates, the random state, the trainer's own attributes and the data order
are as they were, so a run with it is bit-identical to one without it.
"""
from __future__ import annotations

import collections
import contextlib
import copy
import inspect
import itertools
import re
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torch.utils.data import DataLoader

from data_loader.batch_transforms import training_batch
from data_loader.transforms import TRANSFORM_ORDER
from trainer.callbacks import EVENTS
from trainer.metric_tracker import MetricTracker, as_scalar
from trainer.state import unreadable_callback_state, unreadable_data_state
from trainer.trainer import Trainer
from utils.device import autocast, to_device
from utils.errors import ConfigError, TemplateError, blame, reason
from utils.rng import get_rng_state, set_rng_state


def check_one_batch(trainer: Any, num_classes: int | None = None) -> None:
    """Run `trainer.training_step` on one training batch with the unwrapped model, then put everything back.
    `num_classes` is the data's number of classes when the loader knows it (its `num_classes`)."""
    model, loader = trainer.model, trainer.train_loader
    with _leaves_no_trace(trainer):
        # step_optimizer runs no event and no collective then: a process whose check fails first must not leave the
        # others waiting, and the check's step is undone anyway.
        trainer.preflight = True
        try:
            batch = training_batch(first_batch(loader), trainer.data.batch_transform, loader.sampler, 0,
                                   trainer.device, trainer.cfg["channels_last"])
        except TemplateError:
            raise
        except Exception as e:  # a transform that cannot take the data (the usual cause), or the dataset's own code
            raise ConfigError(f"The training data's first batch cannot be made ({type(e).__name__}: "
                              f"{reason(e)}). When a transform is the cause, check the data loader's "
                              f"transform (or augment, batch_transform): each step's args, and their order "
                              f"({TRANSFORM_ORDER}). Nothing was written.") from None
        model.train()
        trainer.logging_to = trainer.tracker
        _check_extra_elements(trainer, batch)
        _check_labels(trainer, batch, num_classes)
        try:
            with autocast(trainer.device, trainer.amp_dtype), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                step = trainer.training_step(model, batch)
        except TemplateError:
            raise
        except Exception as e:
            raise ConfigError(f"One batch of the training data (inputs {describe(batch)}) does not go through the "
                              f"model and the loss: {reason(e)}. {_hint(reason(e))} Nothing was written.") from None
        _check_warnings(caught, step)
        _check_loss(step.loss, needs_grad=not trainer.manual)
        output = step.output.float() if isinstance(step.output, torch.Tensor) and step.output.is_floating_point() \
            else step.output
        for name, fn in trainer.metrics.items():
            try:
                as_scalar(fn(output, step.target, *step.extra), name, trainer.device)
            except TemplateError:
                raise
            except Exception as e:
                raise ConfigError(f"The metric '{name}' fails on a batch of the model's output {describe(output)} and "
                                  f"target {describe(step.target)}: {reason(e)}. Fix the function or remove it from "
                                  "the config's metrics.") from None
        if not trainer.manual:  # with several optimizers, the step back-propagates itself
            step.loss.backward()
        check_scheduler(trainer)
        val_logged = _check_validation_step(trainer)
        names = ["loss", *trainer.metrics, *trainer.tracker.logged]
        names += [f"val_{name}{suffix}" for suffix in trainer.validated for name in ["loss", *trainer.metrics,
                                                                                    *val_logged]]
        if not (trainer.callbacks or any(hasattr(trainer, event) for event in EVENTS)):
            trainer.monitor.check(names)  # else events may log more; the first epoch's end checks it
        problem = unreadable_callback_state(trainer.callbacks, [c.state_dict() if hasattr(c, "state_dict") else None
                                                                for c in trainer.callbacks])
        problem = problem or unreadable_data_state(trainer.data.state)
        if problem is not None:
            raise ConfigError(f"{problem} Nothing was written.")


def _check_validation_step(trainer: Any) -> list[str]:
    """One batch of the validation data through `validation_step`; the names it logs."""
    if not trainer.validated:
        return []
    try:
        return run_validation_step(trainer, first_batch(trainer.val_loader))
    except TemplateError:
        raise
    except Exception as e:
        raise ConfigError(f"One batch of the validation data does not go through the validation step: {reason(e)}. "
                          "Nothing was written.") from None


@torch.no_grad()
def run_validation_step(trainer: Any, batch: Any) -> list[str]:
    """`validation_step` on `batch` (moved to the device) in eval mode, as validation runs it; the names it logs,
    into a tracker of its own, so that nothing is counted."""
    was_training = trainer.model.training
    trainer.model.eval()
    trainer.logging_to = MetricTracker(trainer.metrics, trainer.device)
    try:
        with autocast(trainer.device, trainer.amp_dtype):
            trainer.validation_step(trainer.model, to_device(batch, trainer.device, trainer.cfg["channels_last"]))
        return list(trainer.logging_to.logged)
    finally:
        trainer.model.train(was_training)
        trainer.logging_to = None


@contextlib.contextmanager
def _leaves_no_trace(trainer: Any) -> Iterator[None]:
    """Whatever the step inside does, put back afterwards: the parameters and buffers (copied to the CPU, so the
    check takes no device memory of its own), gradients, the optimizer's, scheduler's, scaler's and EMA's state,
    the random state, the trainer's own attributes (tensors, numbers, lists and dicts by value, so a subclass's
    running state is put back too), the running sums, the callbacks' state and the samples the check skipped;
    the model goes back to its mode."""
    model = trainer.model
    tensors = [(t, t.detach().to("cpu", copy=True)) for t in [*model.parameters(), *model.buffers()]]
    grads, was_training, rng = [(p, p.grad) for p in model.parameters()], model.training, get_rng_state()
    optimizers = [(o, _saved_groups(o), {p: _by_value(s) for p, s in o.state.items()})
                  for o in trainer.optimizers.values()]
    states = [(part, copy.deepcopy(part.state_dict())) for part in [*trainer.lr_schedulers.values(), trainer.scaler]]
    ema = copy.deepcopy(trainer.ema.state_dict()) if trainer.ema is not None else None
    attributes = {name: _by_value(value) for name, value in vars(trainer).items()}
    generators = [(g, g.get_state()) for g in vars(trainer).values() if isinstance(g, torch.Generator)]
    tracker = _by_value(trainer.tracker.state_dict())
    callbacks = [(c, _by_value(c.state_dict())) for c in trainer.callbacks if hasattr(c, "load_state_dict")]
    try:
        yield
    finally:
        with torch.no_grad():
            for tensor, saved in tensors:
                tensor.copy_(saved)
        for param, grad in grads:
            param.grad = grad
        model.train(was_training)
        for optimizer, groups, optimizer_state in optimizers:
            _restore_groups(optimizer, groups)
            optimizer.state.clear()
            optimizer.state.update(optimizer_state)
        for part, state in states:
            part.load_state_dict(state)
        if ema is not None:
            trainer.ema.load_state_dict(ema, model)
        for name in set(vars(trainer)) - set(attributes):
            delattr(trainer, name)
        vars(trainer).update(attributes)
        for generator, state in generators:
            generator.set_state(state)
        trainer.tracker.load_state_dict(tracker)
        for callback, state in callbacks:
            callback.load_state_dict(state)
        set_rng_state(rng)
        if trainer.data.bad_samples is not None:
            trainer.data.bad_samples.take()  # samples the check skipped are counted again in the epoch


def _by_value(value: Any) -> Any:
    """A copy of the tensors, lists, tuples, sets, deques and dicts in `value`; any other object is kept as it is."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, collections.deque):
        return collections.deque((_by_value(v) for v in value), maxlen=value.maxlen)
    if isinstance(value, (list, tuple, set)) and not hasattr(value, "_fields"):
        return type(value)(_by_value(v) for v in value)
    if isinstance(value, dict):
        copied = copy.copy(value)  # a defaultdict keeps its factory, an OrderedDict its kind
        copied.update({k: _by_value(v) for k, v in value.items()})
        return copied
    return value


def check_eval_batch(trainer: Any, loader: Any, what: str) -> None:
    """One batch of `loader` through `validation_step` in eval mode, before test.py evaluates other data than the
    training config's (`-c`, or data_loader overrides): data that does not fit the restored model stops with one
    message. Other errors (a bug in a `validation_step`) keep their traceback."""
    batch = None
    try:
        batch = first_batch(loader)
        run_validation_step(trainer, batch)
    except (RuntimeError, ValueError) as e:
        inputs = f" (inputs {describe(batch)})" if batch is not None else ""
        raise ConfigError(f"One batch of the {what}{inputs} does not go through the trained model and the loss: "
                          f"{reason(e)}. The data must have the form of the training data (-c replaces "
                          "only the data_loader section): the same channels, size and transforms for images, the "
                          "same columns for tables.") from None


def check_scheduler(trainer: Any) -> None:
    """Each LR scheduler's next step, then its state and the learning rates put back: args its constructor takes
    but cannot use (`T_max: abc`), or a schedule that ends before the run (OneCycleLR's `total_steps`), fail here,
    not in the middle of training. A finished run (resumed to repair its files) takes no more steps: no check."""
    if trainer.epoch > trainer.epochs:
        return
    for name, scheduler in trainer.lr_schedulers.items():
        key = f"optimizers.{name}.lr_scheduler" if trainer.manual else "lr_scheduler"
        state, groups = copy.deepcopy(scheduler.state_dict()), _saved_groups(scheduler.optimizer)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()": this step is a trial
                scheduler.step(0.0) if isinstance(scheduler, ReduceLROnPlateau) else scheduler.step()
        except Exception as e:
            spec = trainer.config["optimizers"][name]["lr_scheduler"] if trainer.manual else trainer.config[key]
            raise ConfigError(f"{blame(trainer.config.source, key + '.args')}: {key} '{spec['type']}' fails on its "
                              f"next step: {reason(e)}. Check {key}.args: a number written as text, or a schedule "
                              "shorter than the run (e.g. OneCycleLR's total_steps). Nothing was written.") from None
        finally:
            scheduler.load_state_dict(state)
            _restore_groups(scheduler.optimizer, groups)


def _saved_groups(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """A copy of each parameter group's settings (learning rate, momentum, ...), for `_restore_groups`."""
    return [{key: value.clone() if isinstance(value, torch.Tensor) else copy.copy(value)
             for key, value in group.items() if key != "params"} for group in optimizer.param_groups]


def _restore_groups(optimizer: torch.optim.Optimizer, groups: list[dict[str, Any]]) -> None:
    for group, saved in zip(optimizer.param_groups, groups):
        for key, value in saved.items():
            if isinstance(value, torch.Tensor) and isinstance(group[key], torch.Tensor):
                group[key].copy_(value)  # a scheduler steps a tensor learning rate in place
            else:
                group[key] = value


def first_batch(loader: Any) -> Any:
    """The first batch of `loader`. A DataLoader's is assembled from its sampler, dataset and collate function
    directly, so that no worker starts and no generator of the loader draws."""
    if isinstance(loader, DataLoader):
        indices = list(itertools.islice(iter(loader.sampler), loader.batch_size or 1))
        return loader.collate_fn([loader.dataset[i] for i in indices])
    return next(iter(loader))


def describe(value: Any) -> str:
    """Shapes and dtypes of the tensors in a (nested) batch, for messages."""
    if isinstance(value, torch.Tensor):
        return f"{tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {describe(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(describe(v) for v in value) + ")"
    return type(value).__name__


def _check_labels(trainer: Any, batch: Any, num_classes: int | None) -> None:
    """Class-index targets against the model's outputs, before a loss sees them (on CUDA, a label outside the
    outputs is a device-side assert that ends the process). The output comes from `trainer.forward`; a subclass
    whose batches it cannot take is left to its own step."""
    try:
        with torch.no_grad(), autocast(trainer.device, trainer.amp_dtype):
            output, target = trainer.forward(trainer.model, batch)
    except Exception:
        return
    if not (isinstance(output, torch.Tensor) and output.dim() == 2 and isinstance(target, torch.Tensor)
            and target.dim() == 1 and not target.is_floating_point()):
        return
    classes = output.shape[1]
    if num_classes is not None and classes != num_classes:
        raise ConfigError(f"The model gives {classes} outputs per sample, but the data has {num_classes} classes "
                          "(the data loader's num_classes). Set the model's number of classes (its num_classes "
                          f"arg, or your model's equivalent) to {num_classes}. Nothing was written.")
    low, high = int(target.min()), int(target.max())
    if low < 0 or high >= classes:
        raise ConfigError(f"A batch holds label {high if high >= classes else low}, but the model gives {classes} "
                          f"outputs per sample (classes 0..{classes - 1}). Set the model's num_classes (and the "
                          "data loader's) to the number of classes in the data. Nothing was written.")


def _check_extra_elements(trainer: Any, batch: Any) -> None:
    """Batches with elements after the target (`(input, target, mask)`) go to the loss and the metrics after the
    target, when the step is the Trainer's own: each must take them."""
    extra = len(batch) - 2 if isinstance(batch, (list, tuple)) else 0
    if extra <= 0 or any(getattr(type(trainer), name) is not getattr(Trainer, name)
                         for name in ("forward", "training_step")):
        return
    parts = [("the loss", "loss", trainer.criterion), *((f"the metric '{name}'", "metrics", fn)
                                                        for name, fn in trainer.metrics.items())]
    for what, key, fn in parts:
        try:
            inspect.signature(fn).bind(None, None, *[None] * extra)
        except TypeError:
            raise ConfigError(f"The batches hold {len(batch)} elements (input, target and {extra} more), and the "
                              f"Trainer passes the ones after the target on: {what} is called as f(output, target, "
                              f"{', '.join(['...'] * extra)}), which it cannot take ({_signature(fn)}). Give it "
                              f"those parameters (e.g. def {key}(output, target, mask)), or make the data loader "
                              "give (input, target) batches. Nothing was written.") from None


def _signature(fn: Any) -> str:
    name = getattr(fn, "__name__", type(fn).__name__)
    try:
        return f"{name}{inspect.signature(fn)}"
    except (TypeError, ValueError):
        return name


def _check_warnings(caught: list[warnings.WarningMessage], step: Any) -> None:
    """torch's warning about a loss target that would be broadcast against the output, as an error; the step's
    other warnings are shown as they were."""
    for warning in caught:
        if "target size" in str(warning.message):
            raise ConfigError(f"The model's output {describe(step.output)} and the target {describe(step.target)} "
                              "have different shapes, so the loss would broadcast them and compare every output with "
                              "every target. Make the model's output shape match the target (e.g. MLP's "
                              "out_features), or reshape the target in the data loader. Nothing was written.")
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


def _check_loss(loss: Any, needs_grad: bool) -> None:
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.is_floating_point():
        raise ConfigError(f"The loss must be one floating-point number per batch (a 0-d tensor); it is "
                          f"{describe(loss)}. Use a reduction such as mean (e.g. loss.args.reduction: mean). Nothing "
                          "was written.")
    if needs_grad and not loss.requires_grad:
        raise ConfigError("The loss does not depend on any trainable parameter of the model (it has no gradient): "
                          "check that the training step computes it from the model's output, and that the model is "
                          "not entirely frozen (TorchvisionClassifier's freeze). Nothing was written.")


def _hint(message: str) -> str:
    """What to change for the usual ways a model and its data fail to fit."""
    if re.search(r"\bByte\b|unsigned char|uint8", message):
        return ("The images reach the model as uint8 (0..255), and a model computes in floats: end the data loader's "
                "transform (and eval_transform, if set) with {type: ToDtype, args: {dtype: float32, scale: true}} "
                "(docs/data.md).")
    if re.search(r"channels", message):
        return ("The images' channel count differs from the model's: set the model's in_channels (or your model's "
                "equivalent) to the data's, or convert the images when reading with the data loader's image_mode "
                "(gray: 1 channel, rgb: 3).")
    if re.search(r"multi-target|target tensor", message):
        return ("The loss takes class indices, but the targets are class probabilities (the data loader's "
                "batch_transform's MixUp and CutMix make them, as OneHot does): use cross_entropy or CrossEntropyLoss.")
    if re.search(r"shapes cannot be multiplied|size mismatch|must match the size", message):
        return ("The data's shape does not fit the model's layer sizes: set the model's input size in its args to "
                "the data's, or resize the data with a transform (the data loader's transform, eval_transform).")
    return "Check that the model's args fit the data (the input shape above) and that the loss fits the model's output."
