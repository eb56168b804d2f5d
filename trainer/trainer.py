"""The training loop: epochs of zero_grad / forward / loss / backward / step, with validation, best-model
monitoring, early stopping and checkpoints. `fit`, `train_epoch` and `train_batch` read top to bottom; the
bookkeeping sits behind small calls: trainer/state.py (what a checkpoint holds), steps.py (how the optimizers
step: clipping, closures, several optimizers, schedulers), callbacks.py (events and `log`), monitor.py (best value,
early stop), progress.py (log lines, progress bar, TensorBoard), utils/signals.py (stop signals), ema.py (the EMA
of the weights), data_loader/batch_transforms.py (MixUp, CutMix).

To change what a step computes, subclass `Trainer`, override `forward`, `compute_loss`, `training_step` or
`validation_step`, and name the subclass in the config's `trainer.type` (examples: trainer/custom.py). To act at
points of the run (epoch start, before the optimizer step, ...), define the events of trainer/callbacks.py on the
subclass or list callbacks in the config; `self.log(name, value)` logs a value of your own from any of them.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterable
from typing import Any, Callable, NamedTuple

import torch
from torch import nn
from tqdm import tqdm

from data_loader.base import batches_of
from data_loader.batch_transforms import training_batch
from data_loader.checks import take_bad_samples
from data_loader.factory import TrainingData
from trainer.callbacks import Events
from trainer.checkpoint import LATEST
from trainer.metric_tracker import MetricTracker
from trainer.monitor import Monitor
from trainer.progress import Progress
from trainer.state import TrainingState
from trainer.steps import OptimizerSteps, needs_closure
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


class Step(NamedTuple):
    """What a training or validation step returns: the loss (a scalar tensor; training back-propagates it), the
    output and target that the metrics are computed on, and the batch's elements after the target (`extra`: a
    `(input, target, mask)` batch's mask), which the metrics take after the target."""

    loss: torch.Tensor
    output: Any
    target: Any
    extra: tuple = ()


class Trainer(TrainingState, OptimizerSteps, Events):
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
        # A loss module's tensors (CrossEntropyLoss's weight) go where the outputs are, as the model does.
        self.criterion = criterion.to(device) if isinstance(criterion, nn.Module) else criterion
        self.metrics = metrics
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
        self.preflight = False  # True during the check before writing (trainer/preflight.py)
        self.stepped_here = False  # whether this process has taken an optimizer step (trainer/steps.py)
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
        self.ema = None
        if data is not None and self.cfg["ema"] is not None:
            from trainer.ema import build_ema  # only where used: a minimal project leaves trainer/ema.py out
            self.ema = build_ema(self.cfg, self.model, data.train.batch_size * self.accumulate * dist.world_size,
                                 -(-len(data.train) // self.accumulate))
        self.builtins = [self.ema] if self.ema is not None else []  # built-in callbacks, before the config's
        # The models validated each epoch, by the suffix of their figures: the trained one and its EMA.
        self.validated = {"": self.eval_model, **({"_ema": self.ema.eval_model} if self.ema else {})} \
            if self.val_loader else {}
        self.monitor = Monitor(self.cfg["monitor"] if data is not None else "off", config.source)
        self.progress = Progress(self.cfg, config.source, dist.is_main)
        self.stop, self.run = StopSignals(), None
        self.disk_use_told = False  # the run's disk use is logged once, after the first end-of-epoch save
        self.callbacks: list[Any] = []  # trainer/factory.py sets the config's `callbacks`
        self.logging_to: MetricTracker | None = None  # where `log` adds values: this epoch's or validation's

        # Loop state: everything below goes into checkpoints (trainer/state.py).
        self.epoch, self.batch_idx, self.global_step = 1, 0, 0
        self.epoch_trained = False  # whether on_train_epoch_end ran for this epoch (a stop in validation saves after it)
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
        if not self.epoch_trained:
            self.call("on_train_epoch_end", result)
            self.epoch_trained = True
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

    def validate(self) -> dict[str, float]:
        """The validation figures (`val_*`) of the model, and of its EMA (`val_*_ema`) when there is one."""
        distributed.broadcast_buffers(self.model)  # under DDP, every process validates the model that is saved
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
        self.monitor.check(list(epoch_log))  # before ReduceLROnPlateau reads it (a name events were to log)
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
        self.epoch, self.batch_idx, self.epoch_trained = self.epoch + 1, 0, False
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

    def _any_rank(self, flag: torch.Tensor) -> bool:
        """Whether `flag` holds on any process (so that all of them skip the same batch)."""
        return bool(distributed.all_reduce(flag.to(torch.int32).reshape(1), op="max").item())
