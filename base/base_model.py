"""The classic template's `BaseModel`: an `nn.Module` whose printout ends with its trainable parameter count."""
from __future__ import annotations

from typing import Any

from torch import nn


class BaseModel(nn.Module):
    """Subclass it and write `forward`, as with any `nn.Module`."""

    def forward(self, *inputs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define forward().")

    def __str__(self) -> str:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return f"{super().__str__()}\nTrainable parameters: {trainable}"
