"""Build the data loader a config names: the template's, yours, or a classic template's."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from data_loader.checks import BadSamples
from utils.construct import accepted_args, call_with_args
from utils.errors import ConfigError, blame
from utils.registry import lookup


def build_data_loader(spec: dict[str, Any], seed: int, training: bool = True, key: str = "data_loader",
                      source: str | None = "config") -> Any:
    """The loader of `spec` ({type, args}), given the run's `seed` if its constructor takes one.

    With `training=False` (test.py's test split), a loader whose constructor takes `training`, as the classic
    template's do, is built with `training=False`, no validation split and no shuffling. With `source` None (a
    loader that another builds from its own args), errors are plain ValueErrors that begin with `key`'s args.
    """
    factory = lookup(spec["type"], "data_loader", key, source)
    args = dict(spec.get("args") or {})
    accepted = accepted_args(factory)
    takes = (lambda name: True) if accepted is None else (lambda name: name in accepted)
    if "seed" in args and takes("seed"):
        if source is None:
            raise ValueError("seed: it is set from the config's top-level `seed`; remove it here.")
        raise ConfigError(f"{blame(source, key + '.args.seed')}: '{key}.args.seed' is set from the config's top-level "
                          "`seed`; remove it there.")
    code = {"seed": seed} if takes("seed") else {}
    if not training and accepted is not None and "training" in accepted:
        code.update({"training": False}, **{k: v for k, v in (("validation_split", 0.0), ("shuffle", False))
                                            if k in accepted})
    return call_with_args(factory, {**args, **code}, key, source, supplied=("seed", "training"))


@dataclass
class TrainingData:
    """What a data loader hands the trainer: the training batches (whose sampler resumes mid-epoch, see
    `check_training_loader`), the validation batches (None without a validation split), the transform that mixes
    training batches on the device (MixUp, CutMix; None: none), the counter of bad samples that were skipped (None
    without skip_bad), and the loader's own state that checkpoints keep (class names, fitted statistics)."""

    train: Any
    val: Any = None
    batch_transform: Callable | None = None
    bad_samples: BadSamples | None = None
    state: dict[str, Any] = field(default_factory=dict)


def training_data(data: Any, device: torch.device, name: str) -> TrainingData:
    """The TrainingData of the loader `data` (the config's `data_loader.type` `name`), for training on `device`:
    its `batch_transform` (a callable of a training batch, its sampler and its number) and `bad_samples` (a
    BadSamples counter) when it has them, as BaseDataLoader builds them from its args of the same names."""
    train = data.train_loader(device)
    check_training_loader(train, name)
    return TrainingData(train, data.val_loader(device), getattr(data, "batch_transform", None),
                        getattr(data, "bad_samples", None), data_state(data))


def data_state(data: Any) -> dict[str, Any]:
    """The loader's own state, kept in checkpoints (fitted statistics, class names): its `state_dict()`, if any."""
    return data.state_dict() if callable(getattr(data, "state_dict", None)) else {}


def load_data_state(data: Any, checkpoint: dict[str, Any]) -> None:
    """Give a rebuilt loader the state its checkpoint kept, so that it prepares data as in training."""
    state = checkpoint.get("data_loader") or {}
    if state and callable(getattr(data, "load_state_dict", None)):
        data.load_state_dict(state)


def check_training_loader(loader: Any, name: str) -> None:
    """The trainer resumes mid-epoch through its loader's sampler: refuse, before anything is written, a training
    loader without a `batch_size` or whose sampler lacks `set_epoch`, `skip` and `state_dict` (ResumableSampler's)."""
    sampler = getattr(loader, "sampler", None)
    missing = [m for m in ("set_epoch", "skip", "state_dict") if not callable(getattr(sampler, m, None))]
    if missing or not isinstance(getattr(loader, "batch_size", None), int):
        raise ConfigError(f"data_loader.type '{name}': its train_loader() gives a {type(loader).__name__} with a "
                          f"{type(sampler).__name__} sampler, which cannot resume mid-epoch (no "
                          f"{', '.join(missing) or 'batch_size'}). Subclass BaseDataLoader (data_loader/base.py; "
                          "base.BaseDataLoader for a classic loader) and let it build the DataLoader, with its "
                          "ResumableSampler (data_loader/sampling.py).")
