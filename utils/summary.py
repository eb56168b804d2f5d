"""A model summary printed at start: parameters (trainable and frozen) and buffers, by module."""
from __future__ import annotations

from torch import nn


def _count(module: nn.Module) -> tuple[int, int, int]:
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    buffers = sum(b.numel() for b in module.buffers())
    return trainable, frozen, buffers


def model_summary(model: nn.Module) -> str:
    """One row per top-level child module (of the wrapped model, for a wrapper) and a total. Buffers (e.g.
    BatchNorm running statistics) are not trained but are saved in checkpoints, so they are counted too."""
    top, prefix = model, ""
    while len(list(top.children())) == 1 and not any(True for _ in top.parameters(recurse=False)):
        name, top = next(top.named_children())  # a wrapper such as TorchvisionClassifier.net: show its parts
        prefix += f"{name}."
    rows = [(prefix + name, type(child).__name__, *_count(child)) for name, child in top.named_children()]
    own = (sum(p.numel() for p in model.parameters(recurse=False) if p.requires_grad),
           sum(p.numel() for p in model.parameters(recurse=False) if not p.requires_grad),
           sum(b.numel() for b in model.buffers(recurse=False)))
    if any(own):
        rows.append(("(own)", type(model).__name__, *own))
    rows.append(("total", type(model).__name__, *_count(model)))
    header = ("module", "type", "trainable", "frozen", "buffers")
    table = [header] + [(r[0], r[1], f"{r[2]:,}", f"{r[3]:,}", f"{r[4]:,}") for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(5)]
    lines = ["  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in table]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return "\n".join(lines)
