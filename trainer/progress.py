"""What a run reports while it trains, in one place: the progress bar, the epoch's log line (values, learning
rates, speed, data wait), warnings about skipped data, and TensorBoard (trainer/tensorboard.py, with the
activation hooks of trainer/hooks.py). Under DDP, rank 0 alone reports."""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm import tqdm

from data_loader.base import batches_of
from trainer.checkpoint import class_names
from trainer.confusion import ConfusionCollector
from trainer.hooks import ActivationStats
from trainer.metric_tracker import batch_size
from trainer.tensorboard import Board
from utils.errors import ConfigError, blame

log = logging.getLogger(__name__)


class Progress:
    """The reporting side of a Trainer, configured by its `trainer` section."""

    def __init__(self, cfg: dict[str, Any], source: str, is_main: bool):
        if cfg["activation_stats"] and (not cfg["tensorboard"] or cfg["compile"]):
            raise ConfigError(f"{blame(source, 'trainer')}: trainer.activation_stats writes to TensorBoard and attaches hooks to "
                              "the modules: it needs trainer.tensorboard: true and trainer.compile: false.")
        if cfg["histograms"] and not cfg["tensorboard"]:
            raise ConfigError(f"{blame(source, 'trainer')}: trainer.histograms are written to TensorBoard; set "
                              "trainer.tensorboard: true too.")
        self.cfg = cfg
        self.is_main = is_main
        self.board: Board | None = None
        self.stats: ActivationStats | None = None
        self.bar: tqdm | None = None
        self.throughput: tuple[float, float] | None = None  # samples per second, share of time waiting for data
        self.skipped_batches = 0
        self._warned_data_wait = False
        self.confusion: ConfusionCollector | None = None  # the latest validation pass's, with TensorBoard

    @contextlib.contextmanager
    def open(self, log_dir: Path, model: nn.Module, global_step: int) -> Iterator[None]:
        """TensorBoard (and the activation hooks) for the duration of `fit`; a resumed run drops the events
        written after its checkpoint."""
        if self.is_main and self.cfg["tensorboard"]:
            self.board = Board(log_dir, purge_step=global_step or None)
            if self.cfg["activation_stats"]:
                self.stats = ActivationStats(model)
        try:
            yield
        finally:
            if self.board is not None:
                self.board.close()

    def batches(self, loader: Iterable, total: int, done: int, desc: str) -> Iterator[Any]:
        """The batches of `loader` under a progress bar, timing the wait for each batch against the work on it."""
        self.bar = tqdm(total=total, initial=done, desc=desc, leave=False, disable=None if self.is_main else True,
                        dynamic_ncols=True)
        wait = busy = 0.0
        samples = 0
        fetched = time.perf_counter()
        for batch in batches_of(loader):
            started = time.perf_counter()
            wait += started - fetched
            yield batch
            samples += batch_size(batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else batch)
            self.bar.update(1)
            fetched = time.perf_counter()
            busy += fetched - started
        self.bar.close()
        self.throughput = (samples / (wait + busy), wait / (wait + busy)) if samples else None

    @contextlib.contextmanager
    def watch(self, batch: Any, epoch: int, step: int, first_of_window: bool) -> Iterator[None]:
        """Around one batch's forward and backward: the inputs as TensorBoard images once per epoch, and every
        `activation_stats` optimizer steps the statistics of each module's activations and gradients."""
        if self.board is None:
            yield
            return
        self.board.images(batch[0] if isinstance(batch, (tuple, list)) else batch, epoch, step)
        watching = self.stats is not None and first_of_window and step % self.cfg["activation_stats"] == 0
        if watching:
            self.stats.attach()
        try:
            yield
        finally:
            if watching:
                self.stats.detach()
        if watching:
            self.stats.write(self.board.writer, step)

    def step(self, values: dict[str, float], lr: float, step: int) -> None:
        """Every `log_step` optimizer steps: the running values on the bar and in TensorBoard."""
        self.bar.set_postfix({k: f"{v:.4f}" for k, v in values.items()}, refresh=False)
        if self.board is not None:
            self.board.scalars("step/", {**values, "lr": lr}, step)

    def epoch(self, title: str, epoch_log: dict[str, float], lrs: list[float], seconds: float, improved: str | None,
              bad_samples: int, model: nn.Module, step: int) -> None:
        """The epoch's log line (with the samples skipped), then what it calls for: a slow-data hint, TensorBoard."""
        parts = [title] + [f"{k} {v:.4f}" for k, v in epoch_log.items()]
        parts.append("lr " + ",".join(f"{lr:.3g}" for lr in lrs))
        if self.throughput is not None:
            parts.append(f"{self.throughput[0]:,.0f} samples/s, data wait {self.throughput[1]:.0%}")
        parts.append(f"{seconds:.1f}s")
        if improved:
            parts.append(f"best {improved}")
        if bad_samples:
            parts.append(f"{bad_samples} bad sample(s) skipped")
        if self.skipped_batches:
            parts.append(f"{self.skipped_batches} batches with a non-finite loss skipped")
            self.skipped_batches = 0
        log.info("  ".join(parts))
        if self.throughput is not None and self.throughput[1] > 0.2 and not self._warned_data_wait:
            self._warned_data_wait = True
            log.warning("Training waited for data %.0f%% of the time. For data that fits in memory, "
                        "DeviceDataLoader (docs/speed.md) removes the wait; otherwise raise "
                        "the data loader's num_workers if CPU cores are idle, set pin_memory: true on a GPU, or "
                        "make the dataset's __getitem__ cheaper.", 100 * self.throughput[1])
        if self.board is not None:
            self.board.epoch(epoch_log, lrs, self.throughput, step)
            if self.cfg["histograms"]:
                self.board.histograms(model, step)

    def collector(self, device: torch.device) -> Callable[[Any, Any], None]:
        """What a validation pass shows its steps to: with TensorBoard, a new ConfusionCollector (on every
        process, as its result is a collective call); otherwise nothing."""
        if not self.cfg["tensorboard"]:
            return lambda batch, step: None
        self.confusion = ConfusionCollector(device)
        return self.confusion

    def finish(self, config: dict[str, Any], best: dict[str, float], last: dict[str, float], step: int,
               data_state: dict[str, Any]) -> None:
        """The run's hyperparameters with its best and last values, in TensorBoard's HParams tab; for a
        classifier, the confusion matrix and per-class figures of the last validation pass (the final model)."""
        if self.board is not None and self.cfg["hparams"] and last:
            self.board.hparams(config, {**best, **last})
        report = self.confusion.result(class_names({"data_loader": data_state})) if self.confusion is not None else None
        if self.board is not None and report is not None:
            self.board.classification(report, step)
