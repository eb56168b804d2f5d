"""An exponential moving average (EMA) of the model's weights (`trainer.ema`), as torchvision's classification
reference keeps one (`--model-ema`): a copy of the model, parameters and buffers, pulled towards the trained
weights every `every_steps` optimizer steps. It is validated beside the raw model each epoch (`val_*_ema`), saved
in every checkpoint, and the weights test.py, export.py and predict.py use by default (tools/restore.py).

It is a built-in callback (trainer/callbacks.py): the loop's events update it after each optimizer step, copy the
weights into it before its first update, and save and load it, under the checkpoint's own `ema` entry."""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from trainer.callbacks import Callback
from utils import distributed
from utils.device import maybe_compile
from utils.errors import CheckpointError, reason

log = logging.getLogger(__name__)


def update_decay(decay: float, every_steps: int, samples_per_step: int, epochs: int) -> float:
    """The decay of one update, from the config's `decay` as the reference adjusts it (after pycls): the share
    `1 - decay` is scaled by the samples between two updates over the epochs, so that the average spans the same
    share of the run whatever the batch size, the number of processes and `every_steps`."""
    return 1.0 - min(1.0, (1.0 - decay) * samples_per_step * every_steps / epochs)


def _lerp(decay: float):
    """AveragedModel's update: `average += (1 - decay) * (weights - average)` for floating tensors; integer
    buffers (BatchNorm's num_batches_tracked) are copied."""
    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], _: Any) -> None:
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, 1.0 - decay)
        else:
            torch._foreach_copy_(averaged, current)
    return update


class ModelEMA(Callback):
    """The averaged copy of `model` (an AveragedModel over parameters and buffers), and when to update it.

    During the first `warmup` epochs the copy follows the weights exactly (the reference does so during its
    learning-rate warmup). Under DDP each process keeps its own copy; the parameters agree by construction, and
    the buffers (BatchNorm statistics, which differ per process) are taken from rank 0 at each update, so every
    copy is the same. With `compile`, the copy is compiled for evaluation with the same options.
    """

    def __init__(self, model: nn.Module, decay: float, every_steps: int, warmup: int, compile: Any = False):
        self.decay, self.every_steps, self.warmup = decay, every_steps, warmup
        self.averaged = AveragedModel(model, multi_avg_fn=_lerp(decay), use_buffers=True)
        self.module = self.averaged.module.requires_grad_(False)
        self.eval_model = maybe_compile(self.module, compile)
        self.started = False  # whether an update has averaged the weights yet
        self.counted = 0  # the optimizer steps the events have shown it

    def on_fit_start(self, trainer: Any) -> None:
        self.counted = trainer.global_step

    def on_train_batch_end(self, trainer: Any, batch: Any, step: Any) -> None:
        """After a batch that ended with an optimizer step: the update that step may bring."""
        if trainer.global_step != self.counted:
            self.counted = trainer.global_step
            self.update(trainer.model, trainer.epoch, trainer.global_step)

    def on_validation_start(self, trainer: Any) -> None:
        self.follow(trainer.model)

    def on_save_checkpoint(self, trainer: Any, checkpoint: dict[str, Any]) -> None:
        checkpoint["ema"] = self.state_dict()

    def on_load_checkpoint(self, trainer: Any, checkpoint: dict[str, Any]) -> None:
        try:
            self.load_state_dict(checkpoint.get("ema"), trainer.model)
        except (RuntimeError, KeyError) as e:
            raise CheckpointError(f"The checkpoint's EMA of the weights does not fit the model built from the "
                                  f"config: {reason(e)}. Resume with the checkpoint's own config (omit -c), or start "
                                  "a new run.") from None

    def update(self, model: nn.Module, epoch: int, global_step: int) -> None:
        """After optimizer step `global_step` of `epoch`: average every `every_steps` steps."""
        if global_step % self.every_steps:
            return
        self.averaged.update_parameters(model)
        self.started = True
        if epoch <= self.warmup:
            self.averaged.n_averaged.zero_()  # the next update copies the weights again
        distributed.broadcast_buffers(self.module)

    def follow(self, model: nn.Module) -> None:
        """Before its first update, the average is the weights themselves: copy them (before validating it)."""
        if not self.started:
            self.module.load_state_dict(model.state_dict())

    def state_dict(self) -> dict[str, Any]:
        """The averaged weights under the model's own names (what tools/restore.py loads), the count, and
        whether an update has averaged them yet (else test.py and the others use the trained weights)."""
        return {"model": self.module.state_dict(), "n_averaged": self.averaged.n_averaged, "started": self.started}

    def load_state_dict(self, state: dict[str, Any] | None, model: nn.Module) -> None:
        """The saved average; without one (`trainer.ema` added on resume), a fresh start from `model`'s weights."""
        if state is None:
            self.module.load_state_dict(model.state_dict())
            self.averaged.n_averaged.zero_()
            self.started = False
            return
        self.module.load_state_dict(state["model"])
        self.averaged.n_averaged.copy_(state["n_averaged"])
        self.started = bool(state.get("started", int(state["n_averaged"]) > 0))


def build_ema(cfg: dict[str, Any], model: nn.Module, samples_per_step: int, steps_per_epoch: int) -> ModelEMA | None:
    """The EMA of the config's `trainer.ema` (None when it is off), its decay adjusted as the reference does."""
    spec = cfg["ema"]
    if spec is None:
        return None
    if spec["every_steps"] > steps_per_epoch * cfg["epochs"]:
        log.warning("trainer.ema.every_steps is %d, but the run takes %d optimizer steps: the average is never "
                    "updated, and the *_ema figures are those of the trained weights. Lower every_steps.",
                    spec["every_steps"], steps_per_epoch * cfg["epochs"])
    decay = update_decay(spec["decay"], spec["every_steps"], samples_per_step, cfg["epochs"])
    log.info("EMA of the weights every %d optimizer step(s), decay %.6g per update (trainer.ema.decay %g adjusted "
             "for %d samples per step over %d epochs)%s.", spec["every_steps"], decay, spec["decay"],
             samples_per_step, cfg["epochs"], f", copying the weights for {spec['warmup']} epoch(s)"
             if spec["warmup"] else "")
    return ModelEMA(model, decay, spec["every_steps"], spec["warmup"], cfg["compile"])
