"""Transforms built from the config: a list of `{type, args}` steps from this module or
`torchvision.transforms.v2`, composed in order. Arguments that torchvision wants as enums or dtypes are given by
name: `dtype: float32`, `policy: imagenet` (AutoAugment's AutoAugmentPolicy: imagenet, cifar10, svhn) and
`interpolation: bilinear` (InterpolationMode: nearest, bilinear, bicubic, ...)."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torchvision.transforms import v2

from utils.construct import arg_path, call_with_args
from utils.errors import reason
from utils.registry import lookup


class OneHot:
    """Target transform: class index -> one-hot float vector (pair it with a loss that takes probabilities,
    such as CrossEntropyLoss)."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def __call__(self, label: int) -> torch.Tensor:
        return torch.zeros(self.num_classes).scatter_(0, torch.tensor(label), 1.0)


# For messages about a transform that cannot take the data: the order its steps need.
TRANSFORM_ORDER = ("the images are uint8 until {type: ToDtype, args: {dtype: float32, scale: true}}, which comes "
                   "before Normalize")

# Arguments given by name in a config, and the torchvision enum whose members they name.
NAMED_ARGS = {"policy": v2.AutoAugmentPolicy, "interpolation": v2.InterpolationMode}


def _named(name: str, value: Any, where: str) -> Any:
    """`value` of the argument `name`, with a dtype or enum name turned into the object torchvision expects."""
    if not isinstance(value, str) or name not in ("dtype", *NAMED_ARGS):
        return value
    if name == "dtype":
        dtype = getattr(torch, value, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"{where} must name a torch dtype such as float32, got {value!r}.")
        return dtype
    enum = NAMED_ARGS[name]
    try:
        return enum(value.lower())
    except ValueError:
        raise ValueError(f"{where} must be one of {', '.join(m.value for m in enum)}; got {value!r}.") from None


def build_transforms(steps: list[dict[str, Any]] | Callable | None, name: str) -> Callable | None:
    """`[{type: ToDtype, args: {dtype: float32, scale: true}}, ...]`, the value of a loader's argument `name`, as a
    composed transform (None if empty; a callable as it is). A step that cannot be built is a ValueError that
    begins with where it is (`transform[1].args.degrees`), for the config layer to name its key."""
    if not steps or callable(steps):
        return steps or None
    if not isinstance(steps, list):
        raise ValueError(f"{name} must be a list of {{type, args}} steps, got {steps!r}.")
    built = []
    for i, step in enumerate(steps):
        where = f"{name}[{i}]"
        if isinstance(step, str):
            step = {"type": step}
        if not isinstance(step, dict) or "type" not in step or set(step) - {"type", "args"}:
            raise ValueError(f"{where} must be a mapping with 'type' and optional 'args', got {step!r}.")
        args = {arg: _named(arg, value, f"{where}.args.{arg}") for arg, value in (step.get("args") or {}).items()}
        factory = lookup(step["type"], "transform", where, source=None)
        try:
            built.append(call_with_args(factory, args, where, None))
        except (TypeError, ValueError) as e:
            text = reason(e)
            raise ValueError(f"{where}.args.{text}" if arg_path(text, args) else f"{where}: {step['type']} refused "
                             f"its arguments: {text}") from None
    return built[0] if len(built) == 1 else v2.Compose(built)
