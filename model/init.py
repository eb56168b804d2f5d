"""Weight initialisation from the config: `arch.init: {type: kaiming_normal, args: {nonlinearity: relu}}`.

The `torch.nn.init` function is applied with `Module.apply` to the weights of every convolution and linear
layer (biases are set to zero; normalisation layers keep their defaults), except in parts that were loaded
from pretrained weights: a model lists the parts it created fresh in `fresh_modules` (default: all of it).
"""
from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
from torch import nn

from utils.config import lookup
from utils.errors import ConfigError

log = logging.getLogger(__name__)

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def init_weights(model: nn.Module, spec: dict[str, Any] | str, source: str) -> None:
    spec = {"type": spec} if isinstance(spec, str) else spec
    if not isinstance(spec, dict) or "type" not in spec or set(spec) - {"type", "args"}:
        raise ConfigError(f"{source}: 'arch.init' must be {{type: kaiming_normal, args: {{...}}}}, got {spec!r}.")
    name = spec["type"] if spec["type"].endswith("_") else spec["type"] + "_"
    fn = lookup(name, (nn.init,), "arch.init", source)
    args = spec.get("args") or {}
    try:
        inspect.signature(fn).bind(torch.empty(2, 2), **args)
    except TypeError as e:
        raise ConfigError(f"{source}: wrong args for arch.init '{name}': {e}.") from None
    layers = 0

    def initialise(module: nn.Module) -> None:
        nonlocal layers
        if isinstance(module, _LAYERS):
            fn(module.weight, **args)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
            layers += 1

    for part in getattr(model, "fresh_modules", [""]):
        model.get_submodule(part).apply(initialise)
    log.info("Initialised the weights of %d layers with torch.nn.init.%s.", layers, name)
