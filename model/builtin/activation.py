"""A custom autograd Function: Swish (x * sigmoid(x), also called SiLU) with a hand-written backward.

Autograd would keep two tensors per call for the backward pass (x and sigmoid(x)); this Function keeps only
x and recomputes the sigmoid, halving the activation memory of this layer. That is when to write one: to save
memory or time that autograd cannot, or to define a gradient autograd cannot derive (a rounding step, a
straight-through estimator). `tests/unit/test_models.py` checks the backward with `torch.autograd.gradcheck`.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class SwishFunction(torch.autograd.Function):
    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        return grad_output * s * (1 + x * (1 - s))  # d/dx x*s(x) = s + x*s*(1-s)


class Swish(nn.Module):
    """`nn.Module` wrapper, so that the Function can sit in an `nn.Sequential`. While `torch.jit.trace` records
    the model (export.py), it uses the plain formula: TorchScript cannot store a Python autograd Function."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing():
            return x * torch.sigmoid(x)
        return SwishFunction.apply(x)
