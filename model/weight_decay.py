"""No weight decay on normalisation layers and biases (`optimizer.no_decay`), as torchvision's classification
reference offers (`--norm-weight-decay 0`, `--bias-weight-decay 0`, and per-name decay for embeddings): weight decay
pulls scales and offsets towards 0, which only fights the layers' purpose. Each parameter group is split in two,
the excluded parameters going to a copy of the group with `weight_decay: 0`."""
from __future__ import annotations

from typing import Any

from torch import nn

from utils.errors import ConfigError, blame, suggest

NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
               nn.LocalResponseNorm, nn.RMSNorm)


def excluded(model: nn.Module, spec: bool | list[str], source: str) -> set[int]:
    """Ids of the parameters `spec` exempts from weight decay: `true` means `[norm, bias]`; `norm` is every
    parameter of a normalisation layer, `bias` every bias, any other name a parameter's full name (`head.weight`)
    or last part (`pos_embedding`)."""
    names = ["norm", "bias"] if spec is True else list(spec or [])
    named = list(model.named_parameters())
    ids: set[int] = set()
    for name in names:
        if name == "norm":
            found = [p for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)]
        elif name == "bias":
            found = [p for full, p in named if full.rsplit(".", 1)[-1] == "bias"]
        else:
            found = [p for full, p in named if name in (full, full.rsplit(".", 1)[-1])]
            if not found:
                raise ConfigError(f"{blame(source, 'optimizer.no_decay')}: optimizer.no_decay names '{name}', which "
                                  f"is neither norm, bias nor a parameter of {type(model).__name__}."
                                  f"{suggest(name, [n for n, _ in named])}")
        ids |= {id(p) for p in found}
    return ids


def split_groups(groups: list[dict[str, Any]], model: nn.Module, spec: bool | list[str],
                 source: str) -> list[dict[str, Any]]:
    """Each parameter group followed by a copy with `weight_decay: 0` holding its excluded parameters (left out
    when it would be empty)."""
    skip = excluded(model, spec, source)
    split = []
    for group in groups:
        split.append({**group, "params": [p for p in group["params"] if id(p) not in skip]})
        exempt = [p for p in group["params"] if id(p) in skip]
        if exempt:
            split.append({**group, "params": exempt, "weight_decay": 0.0})
    return split
