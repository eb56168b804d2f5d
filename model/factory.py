"""Build the model, the loss, the metrics and the optimizer that a config names."""
from __future__ import annotations

import functools
import inspect
from typing import Callable

import torch
from torch import nn

import model.loss as module_loss
import model.metric as module_metric
import model.model as module_arch
from model.init import init_weights
from utils.config import Config, lookup, suggest
from utils.errors import ConfigError


def build_model(config: Config, pretrained: bool = True) -> nn.Module:
    """The model of `arch`, initialised by `arch.init`. With `pretrained=False` (the weights will come from a
    checkpoint) neither pretrained weights (`arch.args.weights`) nor the initialisation are applied, so that
    loading a checkpoint never needs a download."""
    if pretrained or "weights" not in config["arch"]["args"]:
        model = config.init_obj("arch", module_arch)
    else:
        model = config.init_obj("arch", module_arch, spec={**config["arch"], "args": {**config["arch"]["args"],
                                                                                       "weights": None}})
    if pretrained and config["arch"].get("init") is not None:
        init_weights(model, config["arch"]["init"], config.source)
    return model


def build_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer of `optimizer` over the trainable parameters (frozen ones are left out), with optional
    parameter groups: `param_groups: [{modules: [layer4], lr: 1e-4}, ...]` gives the parameters of those
    modules their own settings (`modules: backbone` where the model has `backbone_parameters()`, as
    TorchvisionClassifier does); every other parameter is in the first group, with `optimizer.args`. A
    parameter listed in two groups stays in the first."""
    spec = config["optimizer"]
    groups, taken = [], set()
    for i, group in enumerate(spec.get("param_groups") or []):
        key = f"optimizer.param_groups[{i}]"
        if not isinstance(group, dict) or "modules" not in group:
            raise ConfigError(f"{config.source}: '{key}' must be a mapping with 'modules' and the settings of that "
                              f"group, e.g. {{modules: [layer4], lr: 1.0e-4}}; got {group!r}.")
        names = group["modules"]
        if names == "backbone":
            if not hasattr(model, "backbone_parameters"):
                raise ConfigError(f"{config.source}: '{key}.modules: backbone' needs a model that names its backbone "
                                  f"({type(model).__name__} does not); list module names instead.")
            candidates = model.backbone_parameters()
        else:
            candidates = []
            for name in [names] if isinstance(names, str) else names:
                try:
                    candidates += list(model.get_submodule(name).parameters())
                except AttributeError:
                    known = [n for n, _ in model.named_modules() if n]
                    raise ConfigError(f"{config.source}: '{key}.modules' names '{name}', which is not a module of "
                                      f"{type(model).__name__}.{suggest(name, known)}") from None
        params = [p for p in candidates if p.requires_grad and id(p) not in taken]
        taken |= {id(p) for p in candidates}
        groups.append({**{k: v for k, v in group.items() if k != "modules"}, "params": params})
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]
    params = [{"params": rest}, *groups] if groups else rest
    return config.init_obj("optimizer", torch.optim, params=params)


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
