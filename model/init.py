"""Weight initialisation from the config: `arch.init: {type: kaiming_normal, args: {nonlinearity: relu}}`.

The `torch.nn.init` function is applied to the weight of every convolution and linear layer (biases are set
to zero; normalisation layers keep their defaults), except layers whose weights the model's constructor loaded
(pretrained weights, found by model/factory.py) and frozen layers. The log names every layer initialised.
"""
from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
from torch import nn

from utils.errors import ConfigError, blame
from utils.registry import lookup

log = logging.getLogger(__name__)

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def init_weights(model: nn.Module, spec: dict[str, Any] | str, source: str, keep: set[int] = frozenset()) -> None:
    """Apply the `arch.init` function to the conv and linear layers of `model`, except those whose weight is in
    `keep` (ids of loaded tensors) or frozen."""
    spec = {"type": spec} if isinstance(spec, str) else spec
    if not isinstance(spec, dict) or "type" not in spec or set(spec) - {"type", "args"}:
        raise ConfigError(f"{blame(source, 'arch.init')}: 'arch.init' must be {{type: kaiming_normal, args: {{...}}}}, got {spec!r}.")
    name = spec["type"] if str(spec["type"]).endswith("_") else f"{spec['type']}_"
    fn = lookup(name, "arch.init", "arch.init", source)
    args = spec.get("args") or {}
    try:
        inspect.signature(fn).bind(torch.empty(2, 2), **args)
    except TypeError as e:
        raise ConfigError(f"{blame(source, 'arch.init')}: wrong args for arch.init '{name}': {e}.") from None
    initialised, kept = [], []
    for layer_name, module in model.named_modules():
        if not isinstance(module, _LAYERS):
            continue
        if id(module.weight) in keep or not module.weight.requires_grad:
            kept.append(layer_name)
            continue
        with torch.no_grad():
            fn(module.weight, **args)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        initialised.append(layer_name)
    log.info("arch.init: initialised %d layer(s) with torch.nn.init.%s: %s.", len(initialised), name,
             ", ".join(initialised) or "none")
    if kept:
        log.info("arch.init: left %d loaded or frozen layer(s) as they were: %s.", len(kept), ", ".join(kept))
