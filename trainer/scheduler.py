"""The learning-rate scheduler of the config (`lr_scheduler`), with its warmup (`lr_scheduler.warmup`) as
torchvision's classification reference does it (`--lr-warmup-epochs`, `--lr-warmup-method`, `--lr-warmup-decay`):
for the first `epochs` (or `steps`, with `lr_scheduler.interval: step`), the learning rate rises linearly from
`decay` times its configured value (LinearLR) or stays at that share (ConstantLR); then the configured scheduler
runs from its own start (SequentialLR). Its state is the scheduler's, saved in every checkpoint."""
from __future__ import annotations

from typing import Any

import torch
from torch.optim.lr_scheduler import ConstantLR, LinearLR, ReduceLROnPlateau, SequentialLR

from utils.config import Config
from utils.errors import ConfigError, blame


def build_lr_scheduler(config: Config, optimizer: torch.optim.Optimizer, key: str = "lr_scheduler",
                       spec: dict[str, Any] | None = None) -> Any:
    """The config's `lr_scheduler` (None when unset), after its warmup when `lr_scheduler.warmup` is set; or the
    scheduler `spec` of `key` (`optimizers.<name>.lr_scheduler`, which has no warmup)."""
    spec = config[key] if spec is None else spec
    if spec is None:
        return None
    scheduler = config.init_obj(key, section="lr_scheduler", spec=spec, optimizer=optimizer)
    if isinstance(scheduler, ReduceLROnPlateau) and spec["interval"] == "step":
        raise ConfigError(f"{blame(config.source, key)}: ReduceLROnPlateau needs the monitored value, which exists "
                          f"once per epoch; set {key}.interval: epoch.")
    warmup = spec.get("warmup")
    if warmup is None:
        return scheduler
    if isinstance(scheduler, ReduceLROnPlateau):
        raise ConfigError(f"{blame(config.source, 'lr_scheduler')}: lr_scheduler.warmup cannot come before ReduceLROnPlateau (it follows "
                          "the monitored value, not a schedule); remove lr_scheduler.warmup or choose another type.")
    length = warmup["epochs"] or warmup["steps"]
    first = LinearLR(optimizer, start_factor=warmup["decay"], total_iters=length) if warmup["method"] == "linear" \
        else ConstantLR(optimizer, factor=warmup["decay"], total_iters=length)
    return SequentialLR(optimizer, [first, scheduler], milestones=[length])
