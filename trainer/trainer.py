"""The training loop: epochs of zero_grad / forward / loss / backward / step, with validation, best-model
monitoring, early stopping and checkpoints. `fit`, `train_epoch` and `train_batch` read top to bottom; the
bookkeeping sits behind small calls: trainer/state.py (what a checkpoint holds), monitor.py (best value, early
stop), progress.py (log lines, progress bar, TensorBoard), signals.py (stop signals), ema.py (the EMA of the
weights), data_loader/batch_transforms.py (MixUp, CutMix).

To change what a step computes, subclass `Trainer`, override `forward`, `compute_loss`, `training_step` or
`validation_step`, and name the subclass in the config's `trainer.type` (examples: trainer/custom.py). To act at
points of the run (epoch start, before the optimizer step, ...), define the events of trainer/callbacks.py on the
subclass or list callbacks in the config; `self.log(name, value)` logs a value of your own from any of them.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import math
import time
import warnings
from collections.abc import Iterable
from typing import Any, Callable, NamedTuple

import torch
from torch import nn
from tqdm import tqdm

from data_loader.base import batches_of
from data_loader.batch_transforms import training_batch
from data_loader.checks import take_bad_samples
from data_loader.factory import TrainingData
from trainer.checkpoint import LATEST
from trainer.ema import build_ema
from trainer.metric_tracker import MetricTracker
from trainer.monitor import Monitor
from trainer.progress import Progress
from trainer.state import TrainingState
from utils import distributed
from utils.config import Config
from utils.device import autocast, maybe_compile, to_device
from utils.distributed import Dist
from utils.errors import TrainingError
from utils.run import RunPaths
from utils.signals import StopRequested, StopSignals

__all__ = ["Step", "Trainer", "needs_closure"]

log = logging.getLogger(__name__)

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def needs_closure(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `optimizer.step` requires a closure that re-evaluates the loss (LBFGS does)."""
    closure = inspect.signature(optimizer.step).parameters.get("closure")
    return closure is not None and closure.default is inspect.Parameter.empty


class Step(NamedTuple):
    """What a training or validation step returns: the loss (a scalar tensor; training back-propagates it), the
    output and target that the metrics are computed on, and the batch's elements after the target (`extra`: a
    `(input, target, mask)` batch's mask), which the metrics take after the target."""

    loss: torch.Tensor
    output: Any
    target: Any
    extra: tuple = ()


class Trainer(TrainingState):
    """Trains `model` on `data` (data_loader/factory.py's TrainingData) as the config's `trainer` section says.

    `load_state_dict` of a checkpoint's state (trainer/factory.py's build_trainer does it for `--resume`)
    continues exactly where it was saved, mid-epoch included.
    Under DDP (`dist`), every process runs this same loop on its share of the data; rank 0 alone writes.
    Built with `optimizer=None` and no `data`, it only evaluates (test.py), with the same `validation_step`.
    """

    def __init__(self, model: nn.Module, criterion: Callable, metrics: dict[str, Callable],
                 optimizer: torch.optim.Optimizer | None, config: Config, device: torch.device,
                 data: TrainingData | None = None, lr_scheduler: Any = None, dist: Dist = Dist(),
                 optimizers: dict[str, torch.optim.Optimizer] | None = None, lr_schedulers: dict[str, Any] | None = None):
        self.config, self.cfg, self.device, self.dist = config, config["trainer"], device, dist
        self.model = model.to(device)
        if self.cfg["channels_last"]:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.criterion, self.metrics = criterion, metrics
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        # Several optimizers by name (the config's `optimizers`): the training step steps them itself, with
        # `manual_backward` and `step_optimizer`; otherwise the one `optimizer`, stepped by the loop.
        self.manual = bool(optimizers)
        self.optimizers = optimizers or ({"optimizer": optimizer} if optimizer is not None else {})
        self.lr_schedulers = lr_schedulers or ({"optimizer": lr_scheduler} if lr_scheduler is not None else {})
        self.intervals = {name: (config["optimizers"][name] if self.manual else config)["lr_scheduler"]["interval"]
                          for name in self.lr_schedulers}
        self.closure = optimizer is not None and needs_closure(optimizer)  # LBFGS re-evaluates the batch itself
        self.window, self.window_last = 1, True  # the accumulation window of the batch in training
        self.data = data or TrainingData(None)
        self.train_loader, self.val_loader = self.data.train, self.data.val
        self.epochs = self.cfg["epochs"]
        self.accumulate = self.cfg["accumulate_grad_batches"]
        self.amp_dtype = AMP_DTYPES[self.cfg["amp"]]
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.cfg["amp"] == "fp16")
        self.eval_model = maybe_compile(self.model, self.cfg["compile"])
        # Under DDP the wrapper averages the gradients in backward; with several optimizers step_optimizer does.
        self.train_model = self.eval_model if not dist.enabled or self.manual else nn.parallel.DistributedDataParallel(
            self.eval_model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=self.cfg["find_unused_parameters"])
        self.ema = None if data is None else build_ema(  # trainer/ema.py
            self.cfg, self.model, data.train.batch_size * self.accumulate * dist.world_size,
            -(-len(data.train) // self.accumulate))
        # The models validated each epoch, by the suffix of their figures: the trained one and its EMA.
        self.validated = {"": self.eval_model, **({"_ema": self.ema.eval_model} if self.ema else {})} \
            if self.val_loader else {}
        self.monitor = Monitor(self.cfg["monitor"] if data is not None else "off", config.source)
        self.progress = Progress(self.cfg, config.source, dist.is_main)
        self.stop, self.run = StopSignals(), None
        self.callbacks: list[Any] = []  # trainer/factory.py sets the config's `callbacks`
        self.logging_to: MetricTracker | None = None  # where `log` adds values: this epoch's or validation's

        # Loop state: everything below goes into checkpoints (trainer/state.py).
        self.epoch, self.batch_idx, self.global_step = 1, 0, 0
        self.history: list[dict[str, float]] = []
        self.tracker = MetricTracker(metrics, device)
        self.window_has_grad = False
        self.last_save_time = time.monotonic()

    # ------------------------------------------------------------------ override points
    def forward(self, model: nn.Module, batch: Any) -> tuple[Any, ...]:
        """The model's output for one batch and the target to compare it with, then the batch's further elements
        (`(input, target, mask)` gives `(output, target, mask)`), which the loss and the metrics take after the
        target. Override for other batches: several inputs, dicts, nested structures."""
        data, target, *extra = batch
        return (model(data), target, *extra)

    def compute_loss(self, output: Any, target: Any, *extra: Any) -> torch.Tensor:
        """The training loss: the config's `loss`. Override to add terms, e.g. a penalty on `self.model`'s
        weights (a regulariser)."""
        return self.criterion(output, target, *extra)

    def training_step(self, model: nn.Module, batch: Any) -> Step:
        """One training batch, already on the device, to the loss to back-propagate and what the metrics see.
        Call `model`, not `self.model`: under DDP or `compile` it is the wrapper that synchronises gradients."""
        output, target, *extra = self.forward(model, batch)
        return Step(self.compute_loss(output, target, *extra), output, target, tuple(extra))

    def validation_step(self, model: nn.Module, batch: Any) -> Step:
        """One validation or test batch (eval mode, no gradients): the config's `loss`, without the extra terms
        `compute_loss` may add, and what the metrics see."""
        output, target, *extra = self.forward(model, batch)
        return Step(self.criterion(output, target, *extra), output, target, tuple(extra))

    def log(self, name: str, value: float | torch.Tensor) -> None:
        """Log one number from a training or validation step, or from an event between an epoch's start and its
        last batch: its mean over the epoch's calls (over every process under DDP) appears in the progress line,
        history.jsonl and TensorBoard as `name` in training and `val_<name>` in validation, and `trainer.monitor`
        can name it. Log the same names on every process."""
        if self.logging_to is None:
            raise ValueError(f"log('{name}') was called outside an epoch's training or validation; call it from a "
                             "step, or from an event between on_train_epoch_start and the last on_train_batch_end")
        self.logging_to.log(name, value)

    def call(self, event: str, *args: Any) -> None:
        """The event (trainer/callbacks.py) on this trainer, when a subclass defines it, then on each callback."""
        own = getattr(self, event, None)
        if own is not None:
            own(*args)
        for callback in self.callbacks:
            hook = getattr(callback, event, None)
            if hook is not None:
                hook(self, *args)

    # ------------------------------------------------------------------ the loop
    def fit(self, run: RunPaths) -> dict[str, float]:
        """Train until `epochs` or early stopping, writing logs and checkpoints into `run`; return the last
        epoch's values."""
        self.run = run
        self.check_best_file()
        self.write_history()
        if self.epoch > self.epochs:
            log.warning("This run already finished epoch %d of %d; raise trainer.epochs to train longer.",
                        self.epoch - 1, self.epochs)
            return {}
        last: dict[str, float] = {}
        try:
            with self.stop, self.progress.open(run.log, self.model, self.global_step):
                self.call("on_fit_start")
                while self.epoch <= self.epochs and not self.monitor.early_stopped(self.cfg["early_stop"]):
                    started = time.perf_counter()
                    last = {**self.train_epoch(), **self.validate()}
                    self.end_epoch(last, time.perf_counter() - started)
                self.call("on_fit_end", last)
                best = {f"best_{self.monitor.key}": self.monitor.best} if self.monitor.key else {}
                self.progress.finish(self.config.data, best, last, self.global_step, self.data.state)
        except BaseException as e:
            self.call("on_exception", e)
            raise
        return last

    def train_epoch(self) -> dict[str, float]:
        """One pass over the training data (from `batch_idx` on, after a resume); the epoch's mean values."""
        self.model.train()
        self.logging_to = self.tracker
        if self.batch_idx == 0:
            self.call("on_train_epoch_start")
        loader = self.train_loader
        loader.sampler.set_epoch(self.epoch)
        loader.sampler.skip(self.batch_idx * loader.batch_size)
        for batch in self.progress.batches(loader, len(loader), self.batch_idx, f"epoch {self.epoch}/{self.epochs}"):
            self.train_batch(training_batch(batch, self.data.batch_transform, loader.sampler, self.batch_idx,
                                            self.device, self.cfg["channels_last"]))
        self.logging_to = None
        result = self.tracker.result()
        self.check_finite(result["loss"])
        self.call("on_train_epoch_end", result)
        return result

    def train_batch(self, batch: Any) -> None:
        """Forward, loss and backward of one batch; an optimizer step once the accumulation window is full."""
        if self.closure:
            return self.closure_batch(batch)
        window_start = self.batch_idx - self.batch_idx % self.accumulate
        window = min(self.accumulate, len(self.train_loader) - window_start)
        last = self.batch_idx - window_start == window - 1
        if self.batch_idx == window_start:
            for optimizer in self.optimizers.values():
                optimizer.zero_grad(set_to_none=True)
            self.window_has_grad = False
        self.window, self.window_last = window, last
        self.call("on_train_batch_start", batch)
        step = None
        # Under DDP the processes average their gradients in the backward of a window's last batch only.
        local = self.train_model.no_sync() if self.dist.enabled and not last and not self.manual \
            else contextlib.nullcontext()
        with self.progress.watch(batch, self.epoch, self.global_step, self.batch_idx == window_start), local:
            with autocast(self.device, self.amp_dtype):
                step = self.training_step(self.train_model, batch)
            if self.cfg["on_nan"] == "skip_batch" and self._any_rank(~torch.isfinite(step.loss)):
                step = None
                self.progress.skipped_batches += 1
                if last and self.window_has_grad and self.dist.enabled:
                    self._average_gradients()  # the window's earlier batches kept theirs local
            else:
                if not self.manual:
                    self.scaler.scale(step.loss / window if window > 1 else step.loss).backward()
                self.tracker.update(*step)
                self.window_has_grad = True
        self.batch_idx += 1
        stepped = self.batch_idx - window_start == window and self.window_has_grad
        if stepped:
            self.count_step() if self.manual else self.optimizer_step()
        self.call("on_train_batch_end", batch, step)
        if stepped:
            self.after_step()  # logging and step-level saves, after every event of the batch

    def closure_batch(self, batch: Any) -> None:
        """One batch for an optimizer whose step re-evaluates the loss (LBFGS): the training step, backward and
        clipping run inside `optimizer.step(closure)`, as often as it calls the closure; the metrics and the logged
        values are the first evaluation's. trainer/setup.py refuses the settings this cannot honour (fp16,
        accumulation, skip_batch)."""
        self.call("on_train_batch_start", batch)
        evaluations: list[Step] = []

        def closure() -> torch.Tensor:
            self.optimizer.zero_grad(set_to_none=True)
            with autocast(self.device, self.amp_dtype):
                step = self.training_step(self.train_model, batch)
            step.loss.backward()
            self.clip_gradients()
            if not evaluations:
                self.tracker.update(*step)
                self.logging_to = None  # the optimizer's further evaluations log nothing
            evaluations.append(step)
            return step.loss

        with self.progress.watch(batch, self.epoch, self.global_step, True):
            self.optimizer_step(closure)
        self.logging_to = self.tracker
        self.batch_idx += 1
        self.call("on_train_batch_end", batch, evaluations[0])
        self.after_step()

    def clip_gradients(self) -> None:
        if self.cfg["grad_clip_norm"]:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg["grad_clip_norm"])

    def optimizer_step(self, closure: Callable[[], torch.Tensor] | None = None) -> None:
        """Unscale (fp16), clip, step, count; then the scheduler's step-level schedule and the EMA. With a
        `closure`, the optimizer calls it for the gradients (it clips them itself)."""
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
        step the step-level schedulers, update the EMA."""
        self.global_step += 1
        for name, scheduler in self.lr_schedulers.items():
            if self.intervals[name] == "step":
                self.step_scheduler(scheduler)
        if self.ema is not None:
            self.ema.update(self.model, self.epoch, self.global_step)

    def manual_backward(self, loss: torch.Tensor) -> None:
        """With `optimizers`: back-propagate `loss` as the loop does its own, as its share of the accumulation
        window (`trainer.accumulate_grad_batches`)."""
        (loss / self.window if self.window > 1 else loss).backward()

    def step_optimizer(self, name: str, closure: Callable[[], torch.Tensor] | None = None) -> bool:
        """With `optimizers`: step the optimizer `name` as the loop steps its own, on the last batch of an
        accumulation window (on the others it does nothing and returns False): the gradients of its parameters
        averaged over the processes under DDP and clipped to `trainer.grad_clip_norm`, the step (with `closure`
        for an optimizer that takes one), then its gradients zeroed; the optimizer events before and after."""
        if name not in self.optimizers:
            raise ValueError(f"step_optimizer('{name}'): the config's optimizers are {', '.join(self.optimizers)}")
        if not self.window_last:
            return False
        optimizer = self.optimizers[name]
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if self.dist.enabled:
            self._average_gradients(params)
        if self.cfg["grad_clip_norm"]:
            nn.utils.clip_grad_norm_(params, self.cfg["grad_clip_norm"])
        self.call("on_before_optimizer_step", optimizer)
        optimizer.step() if closure is None else optimizer.step(closure)
        optimizer.zero_grad(set_to_none=True)
        self.call("on_after_optimizer_step", optimizer)
        return True

    def step_scheduler(self, scheduler: Any, *value: float) -> None:
        """A LR scheduler's step. Under fp16 the scaler skips an optimizer step whose gradients overflow (often the
        first), and PyTorch then warns, at the scheduler's first step only, that it stepped before the optimizer: a
        known, harmless effect (the schedule moves on by that step), silenced there alone."""
        if not (self.scaler.is_enabled() and scheduler.last_epoch == 0):
            return scheduler.step(*value)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)` before", UserWarning)
            scheduler.step(*value)

    def learning_rates(self) -> list[float]:
        """Every parameter group's learning rate, of every optimizer."""
        return [group["lr"] for optimizer in self.optimizers.values() for group in optimizer.param_groups]

    def validate(self) -> dict[str, float]:
        """The validation figures (`val_*`) of the model, and of its EMA (`val_*_ema`) when there is one."""
        distributed.broadcast_buffers(self.model)  # under DDP, every process validates the model that is saved
        if self.ema is not None:
            self.ema.follow(self.model)
        values: dict[str, float] = {}
        if not self.validated:
            return values
        self.call("on_validation_start")
        for suffix, model in self.validated.items():
            # Under DDP a stop waits for the end of validation, so that all processes stop at the same point.
            result = self.evaluate(self.val_loader, f"valid{suffix} {self.epoch}/{self.epochs}", model=model,
                                   should_stop=lambda: self.stop.requested is not None and not self.dist.enabled,
                                   observe=self.progress.collector(self.device) if not suffix else None)
            if result is None:
                self.stop_now(self.stop.requested)
            values.update({f"val_{name}{suffix}": value for name, value in result.items()})
        self.call("on_validation_end", values)
        return values

    @torch.no_grad()
    def evaluate(self, loader: Iterable, desc: str = "valid", should_stop: Callable[[], bool] = lambda: False,
                 model: nn.Module | None = None, observe: Callable[[Any, Step], None] | None = None
                 ) -> dict[str, float] | None:
        """Loss and metrics of `validation_step` with `model` (default: the trained model) over `loader` in eval
        mode, exact over all processes under DDP; each step also goes to `observe`; None if `should_stop()` cut
        it short. Validation and test.py share it, so both report the same figures for the same weights."""
        model = self.eval_model if model is None else model
        was_training = model.training
        model.eval()
        tracker = MetricTracker(self.metrics, self.device)
        outer, self.logging_to = self.logging_to, tracker
        try:
            for batch in tqdm(batches_of(loader), total=len(loader), desc=desc, leave=False,
                              disable=None if self.dist.is_main else True, dynamic_ncols=True):
                if should_stop():
                    return None
                batch = to_device(batch, self.device, self.cfg["channels_last"])
                with autocast(self.device, self.amp_dtype):
                    step = self.validation_step(model, batch)
                tracker.update(*step)
                if observe is not None:
                    observe(batch, step)
        finally:
            model.train(was_training)
            self.logging_to = outer
        return tracker.result()

    def end_epoch(self, epoch_log: dict[str, float], seconds: float) -> None:
        """Scheduler, monitor, log line and checkpoints once an epoch is complete."""
        for name, scheduler in self.lr_schedulers.items():
            if self.intervals[name] != "epoch":
                continue
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.step_scheduler(scheduler, epoch_log[self.monitor.key or ("val_loss" if self.val_loader else "loss")])
            else:
                self.step_scheduler(scheduler)
        improved = self.monitor.update(epoch_log)
        self.progress.epoch(f"epoch {self.epoch}/{self.epochs}", epoch_log,
                            self.learning_rates(), seconds,
                            self.monitor.key if improved else None,
                            take_bad_samples(self.data.bad_samples, self.device), self.model,
                            self.global_step)
        epoch = self.epoch
        self.epoch, self.batch_idx = self.epoch + 1, 0
        self.tracker = MetricTracker(self.metrics, self.device)
        self.history.append({"epoch": epoch, **epoch_log})
        latest = self.save_epoch(epoch, epoch_log, improved)
        self.write_history()
        signum, _ = self._agree(self.stop.requested, False)
        if signum:
            raise StopRequested(signum, str(latest))

    def after_step(self) -> None:
        """Every optimizer step: logging every `log_step` steps, step-level checkpoints (`save_every_steps`,
        `save_every_minutes`) and the save on a stop signal. Under DDP the processes agree on a stop or a timed
        save at logging steps only (one small collective)."""
        log_now = self.global_step % self.cfg["log_step"] == 0
        if log_now:
            values = self.tracker.result()
            self.check_finite(values["loss"])
            self.progress.step(values, self.learning_rates()[0], self.global_step)
        every_steps, every_minutes = self.cfg["save_every_steps"], self.cfg["save_every_minutes"]
        signum, timed = None, False
        if log_now or not self.dist.enabled:
            timed = bool(every_minutes) and time.monotonic() - self.last_save_time >= 60 * every_minutes
            signum, timed = self._agree(self.stop.requested, timed)
        if signum:
            self.stop_now(signum)
        if (every_steps and self.global_step % every_steps == 0) or timed:
            self.check_finite(self.tracker.result()["loss"])
            self.save([LATEST])

    def stop_now(self, signum: int) -> None:
        """Save where the loop stands and leave through StopRequested."""
        raise StopRequested(signum, str(self.save([LATEST])))

    def check_finite(self, loss: float) -> None:
        """With on_nan: stop, a non-finite loss ends training before anything is saved from it."""
        if self.cfg["on_nan"] == "stop" and not math.isfinite(loss):
            raise TrainingError(
                f"The training loss became {loss} in epoch {self.epoch} (by optimizer step {self.global_step}). "
                                "Training stopped without saving these weights; earlier checkpoints are intact. Lower the learning "
                                "rate, set trainer.grad_clip_norm, check the data for bad values, or set trainer.on_nan: skip_batch.")

    # ------------------------------------------------------------------ agreement between processes
    def _agree(self, signum: int | None, flag: bool) -> tuple[int | None, bool]:
        """The highest stop signal and the OR of `flag` over all processes."""
        if not self.dist.enabled:
            return signum, flag
        both = distributed.all_reduce(torch.tensor([signum or 0, int(flag)], device=self.device), op="max")
        signum, flag = both.tolist()
        return signum or None, bool(flag)

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

    def _any_rank(self, flag: torch.Tensor) -> bool:
        """Whether `flag` holds on any process (so that all of them skip the same batch)."""
        return bool(distributed.all_reduce(flag.to(torch.int32).reshape(1), op="max").item())
