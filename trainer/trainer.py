"""The training loop: epochs of zero_grad / forward / loss / backward / step, validation, checkpoints,
best-model monitoring and early stopping. Read `fit` and `_train_epoch` top to bottom."""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm import tqdm

from trainer.checkpoint import BEST, FORMAT, LATEST, atomic_write, keep_top_k, save_checkpoint
from trainer.evaluate import MetricTracker, autocast, evaluate, to_device
from trainer.hooks import ActivationStats
from trainer.signals import StopRequested, StopSignals
from trainer.tensorboard import Board
from utils import distributed
from utils.config import Config
from utils.distributed import Dist
from utils.errors import CheckpointError, ConfigError, TrainingError, reason
from utils.rng import get_rng_state, set_rng_state
from utils.run import RunPaths

log = logging.getLogger(__name__)

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
HISTORY = "history.jsonl"  # in the run's log folder: one JSON line per epoch, rewritten from the checkpoint


def write_history(run: RunPaths, history: list[dict[str, float]]) -> None:
    """`history.jsonl` in the run's log folder: one JSON line per epoch, replaced atomically."""
    path = run.log / HISTORY
    try:
        atomic_write(path, "".join(json.dumps(row) + "\n" for row in history).encode())
    except OSError as e:
        raise TrainingError(f"Could not write '{path}': {e.strerror or e}. Training stopped; the checkpoints are "
                            "intact. Free disk space (or fix the folder's permissions) and continue with: "
                            f"python train.py --resume {run.models}") from None


class Trainer:
    """Trains `model` on `train_loader` as the config's `trainer` section says.

    Pass the state of a checkpoint as `resume` to continue exactly where it was saved, mid-epoch included.
    Under DDP (`dist`), every process runs this same loop on its share of the data; rank 0 alone writes.
    """

    def __init__(self, model: nn.Module, criterion: Callable, metrics: dict[str, Callable],
                 optimizer: torch.optim.Optimizer, config: Config, device: torch.device, train_loader,
                 val_loader=None, lr_scheduler=None, resume: dict[str, Any] | None = None, dist: Dist = Dist()):
        self.config = config
        self.cfg = cfg = config["trainer"]
        self.device = device
        self.dist = dist
        self.model = model.to(device)
        if cfg["channels_last"]:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.criterion = criterion
        self.metrics = metrics
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.run: RunPaths | None = None
        self.epochs = cfg["epochs"]
        self.accumulate = cfg["accumulate_grad_batches"]
        self.amp_dtype = AMP_DTYPES[cfg["amp"]]
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg["amp"] == "fp16")
        self.eval_model = self._compile(self.model, cfg["compile"])
        self.train_model = self.eval_model
        if dist.enabled:
            self.train_model = nn.parallel.DistributedDataParallel(
                self.eval_model, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=cfg["find_unused_parameters"])

        if (isinstance(lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
                and config["lr_scheduler"]["interval"] == "step"):
            raise ConfigError(f"{config.source}: ReduceLROnPlateau needs the monitored value, which exists once per "
                              "epoch; set lr_scheduler.interval: epoch.")
        if cfg["activation_stats"] and (not cfg["tensorboard"] or cfg["compile"]):
            raise ConfigError(f"{config.source}: trainer.activation_stats writes to TensorBoard and attaches hooks to "
                              "the modules: it needs trainer.tensorboard: true and trainer.compile: false.")
        if cfg["histograms"] and not cfg["tensorboard"]:
            raise ConfigError(f"{config.source}: trainer.histograms are written to TensorBoard; set "
                              "trainer.tensorboard: true too.")
        self.monitor_mode, self.monitor_key = ("off", None) if cfg["monitor"] == "off" else cfg["monitor"].split()
        logged = ["loss", *metrics] + ([f"val_{name}" for name in ["loss", *metrics]] if val_loader else [])
        if self.monitor_key is not None and self.monitor_key not in logged:
            raise ConfigError(f"{config.source}: trainer.monitor names '{self.monitor_key}', which is not logged. "
                              f"Logged values: {', '.join(logged)}.")

        # Loop state: everything below goes into checkpoints.
        self.epoch = 1
        self.batch_idx = 0
        self.global_step = 0
        self.best = math.inf if self.monitor_mode == "min" else -math.inf
        self.not_improved = 0
        self.kept: list[list] = []
        self.history: list[dict[str, float]] = []
        self.tracker = MetricTracker(metrics, device)
        self.skipped_batches = 0
        if resume is not None:
            self._load_state(resume)

        self.stop = StopSignals()
        self.board: Board | None = None
        self.stats: ActivationStats | None = None
        self.throughput: tuple[float, float] | None = None
        self._warned_data_wait = False
        self._last_save_time = time.monotonic()

    # ------------------------------------------------------------------ the loop
    def fit(self, run: RunPaths) -> dict[str, float]:
        """Train until `epochs` or early stopping, writing logs and checkpoints into `run`; return the last
        epoch's log."""
        self.run = run
        self._write_history()
        last: dict[str, float] = {}
        if self.epoch > self.epochs:
            log.warning("This run already finished epoch %d of %d; raise trainer.epochs to train longer.",
                        self.epoch - 1, self.epochs)
            return last
        with self.stop:
            if self.dist.is_main and self.cfg["tensorboard"]:
                self.board = Board(self.run.log, purge_step=self.global_step or None)
                if self.cfg["activation_stats"]:
                    self.stats = ActivationStats(self.model)
            try:
                while self.epoch <= self.epochs and not self._early_stopped():
                    started = time.perf_counter()
                    train_log = self._train_epoch()
                    val_log = self._validate()
                    last = {**train_log, **val_log}
                    self._end_epoch(last, time.perf_counter() - started)
                if self.board is not None and self.cfg["hparams"] and last:
                    best = {f"best_{self.monitor_key}": self.best} if self.monitor_key else {}
                    self.board.hparams(self.config.data, {**best, **last})
            finally:
                if self.board is not None:
                    self.board.close()
        return last

    def _train_epoch(self) -> dict[str, float]:
        self.model.train()
        loader = self.train_loader
        loader.sampler.set_epoch(self.epoch)
        loader.sampler.skip(self.batch_idx * loader.batch_size)
        n_batches = len(loader)
        bar = tqdm(total=n_batches, initial=self.batch_idx, desc=f"epoch {self.epoch}/{self.epochs}",
                   leave=False, disable=None if self.dist.is_main else True, dynamic_ncols=True)
        data_wait = compute = 0.0
        samples = 0
        fetch_started = time.perf_counter()
        for data, target in loader:
            step_started = time.perf_counter()
            data_wait += step_started - fetch_started
            data, target = to_device(data, target, self.device, self.cfg["channels_last"])
            if self.board is not None:
                self.board.images(data, self.epoch, self.global_step)
            window_start = self.batch_idx - self.batch_idx % self.accumulate
            window = min(self.accumulate, n_batches - window_start)
            if self.batch_idx == window_start:
                self.optimizer.zero_grad(set_to_none=True)
                window_has_grad = False

            watch = (self.stats is not None and self.batch_idx == window_start
                     and self.global_step % self.cfg["activation_stats"] == 0)
            if watch:
                self.stats.attach()
            with autocast(self.device, self.amp_dtype):
                output = self.train_model(data)
                loss = self.criterion(output, target)
            if self.cfg["on_nan"] == "skip_batch" and self._any_rank(~torch.isfinite(loss)):
                self.skipped_batches += 1
            else:
                self.scaler.scale(loss / window if window > 1 else loss).backward()
                self.tracker.update(loss, output.float(), target)
                window_has_grad = True
            if watch:
                self.stats.detach()
                self.stats.write(self.board.writer, self.global_step)
            self.batch_idx += 1
            samples += target.size(0)

            if self.batch_idx - window_start == window and window_has_grad:
                self._optimizer_step()
                self._after_step(bar)
            bar.update(1)
            fetch_started = time.perf_counter()
            compute += fetch_started - step_started
        bar.close()
        self.throughput = (samples / (data_wait + compute), data_wait / (data_wait + compute)) if samples else None
        result = self.tracker.result()
        self._check_finite(result["loss"])
        return result

    def _optimizer_step(self) -> None:
        if self.cfg["grad_clip_norm"]:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg["grad_clip_norm"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.global_step += 1
        if self.lr_scheduler is not None and self.config["lr_scheduler"]["interval"] == "step":
            self.lr_scheduler.step()

    def _validate(self) -> dict[str, float]:
        if self.val_loader is None:
            return {}
        # Under DDP a stop waits for the end of validation, so that all processes stop at the same point.
        result = evaluate(self.eval_model, self.val_loader, self.criterion, self.metrics, self.device,
                          self.amp_dtype, self.cfg["channels_last"], desc=f"valid {self.epoch}/{self.epochs}",
                          should_stop=lambda: self.stop.requested is not None and not self.dist.enabled,
                          progress=self.dist.is_main)
        if result is None:
            self._stop_now(self.stop.requested)
        return {f"val_{name}": value for name, value in result.items()}

    def _end_epoch(self, epoch_log: dict[str, float], seconds: float) -> None:
        """Scheduler, monitor, early-stop counter, logging and checkpoints once an epoch is complete."""
        if self.lr_scheduler is not None and self.config["lr_scheduler"]["interval"] == "epoch":
            if isinstance(self.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.lr_scheduler.step(epoch_log[self.monitor_key or ("val_loss" if self.val_loader else "loss")])
            else:
                self.lr_scheduler.step()

        improved = False
        if self.monitor_key is not None:
            value = epoch_log[self.monitor_key]
            improved = math.isfinite(value) and (value < self.best if self.monitor_mode == "min" else value > self.best)
            if improved:
                self.best = value
                self.not_improved = 0
            else:
                self.not_improved += 1

        self._log_epoch(epoch_log, seconds, improved)
        epoch = self.epoch
        self.epoch += 1
        self.batch_idx = 0
        self.tracker = MetricTracker(self.metrics, self.device)
        self.history.append({"epoch": epoch, **epoch_log})
        latest = self._save_epoch(epoch, epoch_log, improved)
        self._write_history()
        signum, _ = self._agree(self.stop.requested, False)
        if signum:
            raise StopRequested(signum, str(latest))

    def _early_stopped(self) -> bool:
        patience = self.cfg["early_stop"]
        if patience and self.monitor_key is not None and self.not_improved >= patience:
            log.info("%s has not improved for %d epochs (best %.6g): stopping early.",
                     self.monitor_key, self.not_improved, self.best)
            return True
        return False

    # ------------------------------------------------------------------ logging
    def _log_step(self, bar: tqdm) -> None:
        result = self.tracker.result()
        self._check_finite(result["loss"])
        bar.set_postfix({k: f"{v:.4f}" for k, v in result.items()}, refresh=False)
        if self.board is not None:
            self.board.scalars("step/", {**result, "lr": self.optimizer.param_groups[0]["lr"]}, self.global_step)

    def _log_epoch(self, epoch_log: dict[str, float], seconds: float, improved: bool) -> None:
        parts = [f"epoch {self.epoch}/{self.epochs}"] + [f"{k} {v:.4f}" for k, v in epoch_log.items()]
        lrs = [group["lr"] for group in self.optimizer.param_groups]
        parts.append("lr " + ",".join(f"{lr:.3g}" for lr in lrs))
        if self.throughput is not None:
            per_second, wait = self.throughput
            parts.append(f"{per_second:,.0f} samples/s, data wait {wait:.0%}")
            if wait > 0.2 and not self._warned_data_wait:
                self._warned_data_wait = True
                log.warning("Training waited for data %.0f%% of the time. For data that fits in memory, "
                            "DeviceDataLoader (docs/speed.md) removes the wait; otherwise raise "
                            "data_loader.args.num_workers if CPU cores are idle, set pin_memory: true on a GPU, or "
                            "make the dataset's __getitem__ cheaper.", 100 * wait)
        parts.append(f"{seconds:.1f}s")
        if improved:
            parts.append(f"best {self.monitor_key}")
        if self.skipped_batches:
            parts.append(f"{self.skipped_batches} batches with a non-finite loss skipped")
            self.skipped_batches = 0
        log.info("  ".join(parts))
        bad = self._take_bad_samples()
        if bad:
            log.warning("Skipped %d bad sample(s) in epoch %d (data_loader.args.skip_bad: true); the reason for the "
                        "first is logged above.", bad, self.epoch)
        if self.board is not None:
            self.board.epoch(epoch_log, lrs, self.throughput, self.global_step)
            if self.cfg["histograms"]:
                self.board.histograms(self.model, self.global_step)

    def _take_bad_samples(self) -> int:
        """Samples the loaders skipped since the last call (with `skip_bad`), summed over all processes."""
        counters = [getattr(loader, "bad_samples", None) for loader in (self.train_loader, self.val_loader)]
        if not any(counters):
            return 0
        count = sum(counter.take() for counter in counters if counter is not None)
        return int(distributed.all_reduce(torch.tensor([count], device=self.device)).item())

    def _write_history(self) -> None:
        """Every epoch's values, one JSON line each, in `history.jsonl`: for programs that follow a run as it
        trains without TensorBoard (tune.py prunes trials with it). Written whole from the history the checkpoint
        holds, so that after a kill and `--resume` the file matches the checkpoint, whatever moment the kill hit."""
        distributed.on_main(write_history, self.run, self.history)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run exactly: tensors and plain values only."""
        return {
            "format": FORMAT,
            "torch_version": str(torch.__version__),
            "config": self.config.data,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "loop": {"epoch": self.epoch, "batch_idx": self.batch_idx, "global_step": self.global_step},
            "monitor": {"best": self.best, "not_improved": self.not_improved, "kept": self.kept},
            "history": self.history,
            "data": {**self.train_loader.sampler.state_dict(), "batch_size": self.train_loader.batch_size},
            "world_size": self.dist.world_size,
            # Each process's own random state and running sums, in rank order (one entry without DDP).
            "per_rank": distributed.gather({"rng": get_rng_state(), "tracker": self.tracker.state_dict()}),
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.lr_scheduler is not None and state["lr_scheduler"] is not None:
                self.lr_scheduler.load_state_dict(state["lr_scheduler"])
            if self.scaler.is_enabled() and state["scaler"] is not None:
                self.scaler.load_state_dict(state["scaler"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"The checkpoint does not fit the model or optimizer built from the config: "
                                  f"{reason(e)}. Resume with the checkpoint's own config (omit -c), "
                                  "or start a new run.") from None
        loop = state["loop"]
        self.epoch, self.batch_idx, self.global_step = loop["epoch"], loop["batch_idx"], loop["global_step"]
        self.best, self.not_improved = state["monitor"]["best"], state["monitor"]["not_improved"]
        self.kept = state["monitor"]["kept"]
        self.history = state.get("history", [])  # checkpoints written before history was kept have none
        ranks, world = state["per_rank"], state["world_size"]
        saved_batch = state["data"].get("batch_size", self.train_loader.batch_size)
        seed = self.train_loader.sampler.seed
        if state["data"]["seed"] != seed and (self.batch_idx or self.val_loader is not None):
            harm = ("pick another validation split, moving validation samples into training"
                    if self.val_loader is not None
                    else f"reorder the rest of epoch {self.epoch}, so samples would be seen twice or not at all")
            raise CheckpointError(f"The checkpoint was trained with seed {state['data']['seed']}; seed {seed} would "
                                  f"{harm}. Resume without changing the seed, or start a new run with -c.")
        if world == self.dist.world_size and saved_batch == self.train_loader.batch_size:
            self.tracker.load_state_dict(ranks[self.dist.rank]["tracker"])
        else:
            self._rederive_position(ranks, world, saved_batch)
        set_rng_state(ranks[min(self.dist.rank, len(ranks) - 1)]["rng"])

    def _rederive_position(self, ranks: list[dict], world: int, saved_batch: int) -> None:
        """Resume with another number of processes or batch size: continue from the same global sample
        position (rounded down to a whole step), with the running sums on rank 0."""
        batch = self.train_loader.batch_size
        seen = self.batch_idx * saved_batch * world
        self.batch_idx = seen // (batch * self.dist.world_size)
        if self.dist.is_main:
            self.tracker.load_state_dict({"sums": sum(r["tracker"]["sums"] for r in ranks),
                                          "count": sum(r["tracker"]["count"] for r in ranks)})
        if seen:
            log.warning("The checkpoint was written by %d process(es) with batch size %d, this run has %d with %d: "
                        "the data order of epoch %d is re-derived from sample %d on (batch %d); random draws will "
                        "differ from an uninterrupted run.", world, saved_batch, self.dist.world_size, batch,
                        self.epoch, seen, self.batch_idx)

    def _check_finite(self, loss: float) -> None:
        """With on_nan: stop, a non-finite loss ends training before anything is saved from it."""
        if self.cfg["on_nan"] == "stop" and not math.isfinite(loss):
            raise TrainingError(
                f"The training loss became {loss} in epoch {self.epoch} (by optimizer step {self.global_step}). "
                "Training stopped without saving these weights; earlier checkpoints are intact. Lower the learning "
                "rate, set trainer.grad_clip_norm, check the data for bad values, or set trainer.on_nan: skip_batch.")

    def _checkpoint(self, names: list[str]) -> Path:
        """Every process contributes its state; rank 0 writes while the others wait."""
        paths = [self.run.models / name for name in names]
        distributed.on_main(save_checkpoint, self.state_dict(), paths)
        self._last_save_time = time.monotonic()
        return paths[0]

    def _after_step(self, bar: tqdm) -> None:
        """Logging, step-level checkpoints (`save_every_steps`, `save_every_minutes`) and the stop-signal save.

        Under DDP the processes agree on a stop or a timed save at logging steps only (one small collective).
        """
        log_now = self.global_step % self.cfg["log_step"] == 0
        if log_now:
            self._log_step(bar)
        every_steps, every_minutes = self.cfg["save_every_steps"], self.cfg["save_every_minutes"]
        signum, timed = None, False
        if log_now or not self.dist.enabled:
            timed = bool(every_minutes) and time.monotonic() - self._last_save_time >= 60 * every_minutes
            signum, timed = self._agree(self.stop.requested, timed)
        if signum:
            self._stop_now(signum)
        if (every_steps and self.global_step % every_steps == 0) or timed:
            self._check_finite(self.tracker.result()["loss"])
            self._checkpoint([LATEST])

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

    def _save_epoch(self, epoch: int, epoch_log: dict[str, float], improved: bool) -> Path:
        names = [LATEST]
        if improved:
            if not all(torch.isfinite(t).all() for t in self.model.state_dict().values() if t.is_floating_point()):
                raise TrainingError("The weights hold NaN or Inf values; model_best.pth was not overwritten.")
            names.append(BEST)
        evict: list[str] = []
        if self.cfg["save_period"] and epoch % self.cfg["save_period"] == 0:
            name = f"checkpoint-epoch{epoch}.pth"
            if self.monitor_key is None:
                value, mode = float(epoch), "max"
            else:
                value, mode = epoch_log[self.monitor_key], self.monitor_mode
                if not math.isfinite(value):
                    value = math.inf if mode == "min" else -math.inf
            self.kept, write, evict = keep_top_k(self.kept, value, name, self.cfg["save_top_k"], mode)
            if write:
                names.append(name)
        latest = self._checkpoint(names)
        for name in evict if self.dist.is_main else ():
            (self.run.models / name).unlink(missing_ok=True)
        if improved:
            log.info("Saved %s (%s %.6g).", self.run.models / BEST, self.monitor_key, self.best)
        return latest

    def _stop_now(self, signum: int) -> None:
        """Save where the loop stands and leave through StopRequested."""
        path = self._checkpoint([LATEST])
        raise StopRequested(signum, str(path))

    @staticmethod
    def _compile(model: nn.Module, option: Any) -> nn.Module:
        if not option:
            return model
        options = option if isinstance(option, dict) else {}
        return torch.compile(model, **options)
