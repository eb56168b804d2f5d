"""How the optimizers step, as a part of the Trainer (`OptimizerSteps`): the loop's own step (unscale, clip, step,
count), the batch of an optimizer whose step takes a closure (LBFGS), the helpers of a training step that steps the
config's several `optimizers` itself (`manual_backward`, `step_optimizer`), and the schedulers' steps."""
from __future__ import annotations

import inspect
import warnings
from typing import Any, Callable

import torch
from torch import nn

from trainer.metric_tracker import MetricTracker
from utils import distributed
from utils.device import autocast


def needs_closure(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `optimizer.step` requires a closure that re-evaluates the loss (LBFGS does)."""
    closure = inspect.signature(optimizer.step).parameters.get("closure")
    return closure is not None and closure.default is inspect.Parameter.empty


class OptimizerSteps:
    """The optimizer side of the Trainer; trainer/trainer.py's loop calls it."""

    def closure_batch(self, batch: Any) -> None:
        """One batch for an optimizer whose step re-evaluates the loss (LBFGS): the training step, backward and
        clipping run inside `optimizer.step(closure)`, as often as it calls the closure; the metrics and the logged
        values are the first evaluation's. trainer/setup.py refuses the settings this cannot honour (fp16,
        accumulation, skip_batch)."""
        self.call("on_train_batch_start", batch)
        evaluations: list[Any] = []  # the Steps of each evaluation
        discarded = MetricTracker({}, self.device)  # what the later evaluations log is left out

        def closure() -> torch.Tensor:
            self.optimizer.zero_grad(set_to_none=True)
            self.logging_to = discarded if evaluations else self.tracker
            try:
                with autocast(self.device, self.amp_dtype):
                    step = self.training_step(self.train_model, batch)
            finally:
                self.logging_to = self.tracker
            step.loss.backward()
            self.clip_gradients()
            if not evaluations:
                self.tracker.update(*step)
            evaluations.append(step)
            return step.loss

        with self.progress.watch(batch, self.epoch, self.global_step, True):
            self.optimizer_step(closure)
        self.batch_idx += 1
        self.call("on_train_batch_end", batch, evaluations[0])
        self.after_step()

    def clip_gradients(self, params: Any = None) -> None:
        """`trainer.grad_clip_norm` on `params` (default: all the model's)."""
        if self.cfg["grad_clip_norm"]:
            nn.utils.clip_grad_norm_(self.model.parameters() if params is None else params, self.cfg["grad_clip_norm"])

    def optimizer_step(self, closure: Callable[[], torch.Tensor] | None = None) -> None:
        """Unscale (fp16), clip, step, count (and the step-level schedulers). With a `closure`, the optimizer calls
        it for the gradients (it clips them itself)."""
        if closure is None:
            self.scaler.unscale_(self.optimizer)  # what scaler.step does anyway: events and clipping see true values
            self.clip_gradients()
        self.call("on_before_optimizer_step", self.optimizer)
        if closure is None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step(closure)
        self.count_step()
        self.call("on_after_optimizer_step", self.optimizer)

    def count_step(self) -> None:
        """An optimizer step done (with several optimizers: a window of the training step's own steps): count it,
        and step the step-level schedulers (the EMA follows at the batch's end, trainer/ema.py)."""
        self.global_step += 1
        self.stepped_here = True
        for name, scheduler in self.lr_schedulers.items():
            if self.intervals[name] == "step":
                self.step_scheduler(scheduler)

    def manual_backward(self, loss: torch.Tensor) -> None:
        """With `optimizers`: back-propagate `loss` as the loop does its own, as its share of the accumulation
        window (`trainer.accumulate_grad_batches`)."""
        (loss / self.window if self.window > 1 else loss).backward()

    def step_optimizer(self, name: str, closure: Callable[[], torch.Tensor] | None = None) -> bool:
        """With `optimizers`: step the optimizer `name` as the loop steps its own, on the last batch of an
        accumulation window (on the others it does nothing and returns False): the gradients of its parameters
        averaged over the processes under DDP and clipped to `trainer.grad_clip_norm`, the step (with `closure`
        for an optimizer that takes one, which clipping then follows inside; not under DDP, where the processes would
        evaluate it a different number of times), then its gradients zeroed; the optimizer events before and after."""
        if name not in self.optimizers:
            raise ValueError(f"step_optimizer('{name}'): the config's optimizers are {', '.join(self.optimizers)}")
        if closure is not None and self.dist.enabled:
            raise ValueError(f"step_optimizer('{name}', closure): an optimizer that evaluates a closure as often as "
                             "its own loss values decide cannot keep several processes in step; train in one process")
        if not self.window_last:
            return False
        optimizer = self.optimizers[name]
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if self.dist.enabled and not self.preflight:
            self._average_gradients(params)
        self.clip_gradients(params)
        if not self.preflight:
            self.call("on_before_optimizer_step", optimizer)
        if closure is None:
            optimizer.step()
        else:
            def clipped() -> torch.Tensor:
                loss = closure()
                self.clip_gradients(params)
                return loss
            optimizer.step(clipped)
        optimizer.zero_grad(set_to_none=True)
        if not self.preflight:
            self.call("on_after_optimizer_step", optimizer)
        return True

    def step_scheduler(self, scheduler: Any, *value: float) -> None:
        """A LR scheduler's step. PyTorch warns when a scheduler's first step in a process comes before any
        optimizer step; here that is harmless in two cases, silenced there alone: under fp16 the scaler skips a step
        whose gradients overflow (often the first; the schedule moves on by that step), and a run resumed at an
        epoch's end (stopped during its validation) steps the epoch's schedule before a step of its own."""
        if not ((self.scaler.is_enabled() and scheduler.last_epoch == 0) or not self.stepped_here):
            return scheduler.step(*value)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)` before", UserWarning)
            scheduler.step(*value)

    def learning_rates(self) -> list[float]:
        """Every parameter group's learning rate, of every optimizer."""
        return [group["lr"] for optimizer in self.optimizers.values() for group in optimizer.param_groups]

    def _average_gradients(self, params: list[nn.Parameter] | None = None) -> None:
        """What DDP's backward does: every gradient (of `params`, default all) becomes its mean over the processes. A
        parameter without a gradient here but with one elsewhere (find_unused_parameters) counts zeros; one
        without any stays None."""
        params = [p for p in (self.model.parameters() if params is None else params) if p.requires_grad]
        present = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=self.device)
        for param, used in zip(params, distributed.all_reduce(present, op="max").tolist()):
            if used:
                if param.grad is None:
                    param.grad = torch.zeros_like(param)
                distributed.all_reduce(param.grad).div_(self.dist.world_size)
