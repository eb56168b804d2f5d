"""Build the model, the loss and the metrics that a config names."""
from __future__ import annotations

import functools
import inspect
from typing import Callable

import torch
from torch import nn

import model.loss as module_loss
import model.metric as module_metric
import model.model as module_arch
from utils.config import Config, lookup
from utils.errors import ConfigError


def build_model(config: Config) -> nn.Module:
    return config.init_obj("arch", module_arch)


def build_criterion(config: Config) -> Callable:
    """`loss: nll_loss` (a function in model/loss.py) or `loss: {type: CrossEntropyLoss, args: {...}}` (torch.nn)."""
    spec = config["loss"]
    spec = {"type": spec} if isinstance(spec, str) else spec
    factory = lookup(spec["type"], (module_loss, torch.nn), "loss", config.source)
    if inspect.isclass(factory):
        return config.init_obj("loss", torch.nn, spec=spec)
    return _bind(factory, spec.get("args") or {}, "loss", config.source)


def build_metrics(config: Config) -> dict[str, Callable]:
    """Metric functions by the name they are logged under (`accuracy`, or `top_k_acc_k5` when given args)."""
    metrics = {}
    for i, spec in enumerate(config["metrics"]):
        spec = {"type": spec} if isinstance(spec, str) else spec
        args = spec.get("args") or {}
        fn = lookup(spec["type"], (module_metric,), f"metrics[{i}]", config.source)
        name = spec["type"] + "".join(f"_{k}{v}" for k, v in args.items())
        if name in metrics or name == "loss":
            raise ConfigError(f"{config.source}: the metric '{name}' is listed twice; remove one.")
        metrics[name] = _bind(fn, args, f"metrics[{i}]", config.source)
    return metrics


def _bind(fn: Callable, args: dict, key: str, source: str) -> Callable:
    """`fn(output, target, **args)` as a two-argument function, checking `args` against its signature now."""
    try:
        inspect.signature(fn).bind(None, None, **args)
    except TypeError as e:
        raise ConfigError(f"{source}: wrong args for {key} '{fn.__name__}': {e}.") from None
    return functools.partial(fn, **args) if args else fn
