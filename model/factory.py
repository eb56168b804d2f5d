"""Build the model, the loss, the metrics and the optimizer that a config names."""
from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator
from typing import Any, Callable

import torch
from torch import nn

from model.builtin.metrics import SummedMetric
from model.init import init_weights
from model.weight_decay import split_groups
from utils.config import Config
from utils.construct import call_with_args
from utils.errors import ConfigError, blame, suggest
from utils.registry import lookup


def build_model(config: Config, pretrained: bool = True) -> nn.Module:
    """The model of `arch`, initialised by `arch.init` where its constructor loaded no weights.

    With `pretrained=False` (the weights will come from a checkpoint), nothing is downloaded: the `weights` arg
    is set to null, and a pretrained-weight download inside the model's own constructor (torchvision's
    `weights=...` or `pretrained=True`) loads nothing; `arch.init` is not applied either.
    """
    spec = config["arch"]
    if not pretrained and "weights" in spec["args"]:
        spec = {**spec, "args": {**spec["args"], "weights": None}}
    with _watch_weight_loading(skip_downloads=not pretrained) as loaded:
        model = config.init_obj("arch", spec=spec)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{blame(config.source, 'arch.type')}: arch.type '{spec['type']}' built a {type(model).__name__}, not an "
                          "nn.Module. Name a model class there.")
    if pretrained and spec.get("init") is not None:
        init_weights(model, spec["init"], config.source, keep=loaded)
    return model


class _NotDownloaded(dict):
    """What a pretrained-weight download returns while a model is rebuilt for a checkpoint's weights."""


@contextlib.contextmanager
def _watch_weight_loading(skip_downloads: bool) -> Iterator[set[int]]:
    """While a model's constructor runs: collect the ids of the parameters and buffers it loads with
    `load_state_dict` (so that `arch.init` leaves them alone), and with `skip_downloads` turn torch.hub's
    pretrained-weight downloads, which torchvision uses, into an empty state that loading ignores."""
    import torchvision.models._api as torchvision_weights

    loaded: set[int] = set()
    load_state_dict = nn.Module.load_state_dict

    def watched(module: nn.Module, state_dict: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(state_dict, _NotDownloaded):
            return nn.modules.module._IncompatibleKeys([], [])
        result = load_state_dict(module, state_dict, *args, **kwargs)
        loaded.update(id(t) for t in [*module.parameters(), *module.buffers()])
        return result

    patches = [(nn.Module, "load_state_dict", watched)]
    if skip_downloads:
        patches += [(torch.hub, "load_state_dict_from_url", lambda *a, **k: _NotDownloaded()),
                    (torchvision_weights, "load_state_dict_from_url", lambda *a, **k: _NotDownloaded())]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    try:
        for owner, name, replacement in patches:
            setattr(owner, name, replacement)
        yield loaded
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def build_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer of `optimizer` over the trainable parameters (frozen ones are left out), with optional
    parameter groups: `param_groups: [{modules: [layer4], lr: 1e-4}, ...]` gives the parameters of those
    modules their own settings (`modules: backbone` where the model has `backbone_parameters()`, as
    TorchvisionClassifier does); every other parameter is in the first group, with `optimizer.args`. A
    parameter listed in two groups stays in the first. `no_decay` then moves norm layers' parameters and biases
    (or the names it lists) of each group to a copy of it without weight decay (model/weight_decay.py)."""
    spec = config["optimizer"]
    groups, taken = [], set()
    for i, group in enumerate(spec.get("param_groups") or []):
        key = f"optimizer.param_groups[{i}]"
        if not isinstance(group, dict) or "modules" not in group:
            raise ConfigError(f"{blame(config.source, key)}: '{key}' must be a mapping with 'modules' and the settings of that "
                              f"group, e.g. {{modules: [layer4], lr: 1.0e-4}}; got {group!r}.")
        candidates = module_parameters(model, group["modules"], key, config.source)
        params = [p for p in candidates if p.requires_grad and id(p) not in taken]
        taken |= {id(p) for p in candidates}
        groups.append({**{k: v for k, v in group.items() if k != "modules"}, "params": params})
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]
    groups = [{"params": rest}, *groups]
    if spec.get("no_decay"):
        groups = split_groups(groups, model, spec["no_decay"], config.source)
    return config.init_obj("optimizer", params=groups if len(groups) > 1 else rest)


def module_parameters(model: nn.Module, names: str | list[str], key: str, source: Any) -> list[nn.Parameter]:
    """The parameters of the submodules `names` (`backbone`: the model's `backbone_parameters()`), for `key`."""
    if names == "backbone":
        if not hasattr(model, "backbone_parameters"):
            raise ConfigError(f"{blame(source, key)}: '{key}.modules: backbone' needs a model that names its backbone "
                              f"({type(model).__name__} does not); list module names instead.")
        return model.backbone_parameters()
    params = []
    for name in [names] if isinstance(names, str) else names:
        try:
            params += list(model.get_submodule(name).parameters())
        except AttributeError:
            known = [n for n, _ in model.named_modules() if n]
            raise ConfigError(f"{blame(source, key)}: '{key}.modules' names '{name}', which is not a module of "
                              f"{type(model).__name__}.{suggest(name, known)}") from None
    return params


def build_optimizers(config: Config, model: nn.Module) -> dict[str, torch.optim.Optimizer]:
    """The config's `optimizers`, by name: each over the trainable parameters of its `modules` (all of the
    model's without them). A parameter in two optimizers would be stepped twice: refused."""
    optimizers, owner = {}, {}
    for name, spec in config["optimizers"].items():
        key = f"optimizers.{name}"
        params = module_parameters(model, spec["modules"], key, config.source) if spec["modules"] is not None \
            else list(model.parameters())
        params = [p for p in params if p.requires_grad]
        shared = next((owner[id(p)] for p in params if id(p) in owner), None)
        if shared is not None:
            raise ConfigError(f"{blame(config.source, key)}: '{key}.modules' shares parameters with "
                              f"'optimizers.{shared}', so both would step them; give each optimizer its own modules.")
        if not params:
            raise ConfigError(f"{blame(config.source, key)}: '{key}' has no trainable parameters to optimize; check "
                              f"its modules.")
        owner.update({id(p): name for p in params})
        optimizers[name] = config.init_obj(key, section="optimizer", spec=spec, params=params)
    return optimizers


def build_criterion(config: Config) -> Callable:
    """`loss: nll_loss` (a function of model/loss.py or model/builtin/losses.py) or `loss: {type:
    CrossEntropyLoss, args: {...}}` (a class, such as torch.nn's losses; a list for a tensor argument, such as
    `weight: [1.0, 3.0]`, is made a float tensor)."""
    spec = config["loss"]
    spec = {"type": spec} if isinstance(spec, str) else spec
    factory = lookup(spec["type"], "loss", "loss", config.source)
    if inspect.isclass(factory):
        # A list where the class takes a tensor (weight, pos_weight of torch.nn's losses) becomes one.
        params = inspect.signature(factory).parameters
        args = {name: torch.tensor(value, dtype=torch.float32) if isinstance(value, list) and name in params
                and "Tensor" in str(params[name].annotation) else value for name, value in (spec.get("args") or {}).items()}
        return call_with_args(factory, args, "loss", config.source)
    return _bind(factory, spec.get("args") or {}, "loss", config.source)


def build_metrics(config: Config) -> dict[str, Callable]:
    """Metric functions by the name they are logged under (`accuracy`, or `top_k_acc_k5` when given args)."""
    metrics = {}
    for i, spec in enumerate(config["metrics"]):
        spec = {"type": spec} if isinstance(spec, str) else spec
        args = spec.get("args") or {}
        fn = lookup(spec["type"], "metrics", f"metrics[{i}]", config.source)
        if hasattr(fn, "sums") and hasattr(fn, "finish") and not isinstance(fn, SummedMetric):
            raise ConfigError(f"{blame(config.source, f'metrics[{i}]')}: the metric '{spec['type']}' carries sums and "
                              "finish as attributes, which the trainer no longer reads: make it an instance of a "
                              "SummedMetric subclass (model/builtin/metrics.py; docs/models.md shows how).")
        name = spec["type"] + "".join(f"_{k}{v}" for k, v in args.items())
        if name in metrics or name == "loss":
            raise ConfigError(f"{blame(config.source, 'metrics')}: the metric '{name}' is listed twice; remove one.")
        metrics[name] = _bind(fn, args, f"metrics[{i}]", config.source)
    return metrics


def _bind(fn: Callable, args: dict, key: str, source: str) -> Callable:
    """`fn(output, target, **args)` as a function of the output, the target and the batch's further elements (a
    mask), checking `args` against its signature now; parameters after the target without a default are left to
    those elements (trainer/preflight.py checks that the batches have them)."""
    name = getattr(fn, "__name__", type(fn).__name__)
    try:
        signature = inspect.signature(fn)
        signature.bind_partial(None, None, **args)
    except TypeError as e:
        raise ConfigError(f"{blame(source, key)}: wrong args for {key} '{name}': {e}.") from None
    unset = [p.name for p in signature.parameters.values() if p.kind is p.KEYWORD_ONLY and p.default is p.empty
             and p.name not in args]
    if unset:
        raise ConfigError(f"{blame(source, key)}: wrong args for {key} '{name}': missing a required argument: "
                          f"'{unset[0]}'.")
    return functools.partial(fn, **args) if args else fn
