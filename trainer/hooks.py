"""Activation and gradient statistics per module, recorded with forward hooks and tensor hooks.

`trainer.activation_stats: N` attaches the hooks for one optimizer step every N steps and removes them right
after, so the other steps run without any hook: with N = 0 (the default) nothing is attached at all. Each
module's output gets its mean, standard deviation and share of exact zeros (dead ReLUs), and so does the
gradient flowing back into it; the trainer writes them to TensorBoard as scalars and histograms.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

_HISTOGRAM_VALUES = 65_536  # values kept per tensor for a histogram (a strided sample of large tensors)


class ActivationStats:
    """Attach to the leaf modules of `model` with `attach()`, run one forward and backward, `detach()`, then
    `write(writer, step)`."""

    def __init__(self, model: nn.Module):
        self.modules = [(name, module) for name, module in model.named_modules()
                        if name and not list(module.children())]
        self.handles: list[RemovableHandle] = []
        self.records: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def attach(self) -> None:
        for name, module in self.modules:
            self.handles.append(module.register_forward_hook(self._forward_hook(name)))

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def _forward_hook(self, name: str):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor) or not output.is_floating_point():
                return
            self._record(f"activations/{name}", output)
            if output.requires_grad:
                output.register_hook(lambda grad: self._record(f"gradients/{name}", grad))
        return hook

    def _record(self, tag: str, tensor: torch.Tensor) -> None:
        flat = tensor.detach().flatten().float()
        sample = flat[:: max(1, flat.numel() // _HISTOGRAM_VALUES)]
        self.records[tag] = (torch.stack([flat.mean(), flat.std() if flat.numel() > 1 else flat.new_zeros(()),
                                          (flat == 0).float().mean()]), sample)

    def write(self, writer: Any, step: int) -> None:
        """Mean, std, zero share and a histogram per recorded tensor, then forget them."""
        for tag, (stats, sample) in self.records.items():
            for name, value in zip(("mean", "std", "zeros"), stats.tolist()):
                writer.add_scalar(f"{tag}/{name}", value, step)
            writer.add_histogram(tag, sample.cpu(), step)
        self.records.clear()
