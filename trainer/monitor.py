"""Best-model monitoring and early stopping (`trainer.monitor`, `trainer.early_stop`), and which epoch
checkpoints to keep (`trainer.save_top_k`); its state goes into every checkpoint."""
from __future__ import annotations

import logging
import math
from typing import Any

from trainer.checkpoint import keep_top_k
from utils.errors import ConfigError, blame

log = logging.getLogger(__name__)


class Monitor:
    """Tracks `min <key>` or `max <key>` of the logged values: the best so far and epochs since it improved."""

    def __init__(self, spec: str, source: str):
        self.mode, self.key = ("off", None) if spec == "off" else spec.split()
        self.source = source
        self.best = math.inf if self.mode == "min" else -math.inf
        self.not_improved = 0
        self.kept: list[list] = []  # [value, file name] of the epoch checkpoints kept

    def check(self, logged: list[str]) -> None:
        """The monitored value must be among the `logged` ones (the check before writing knows them all)."""
        if self.key is not None and self.key not in logged:
            raise ConfigError(f"{blame(self.source, 'trainer.monitor')}: trainer.monitor names '{self.key}', which is "
                              f"not logged. Logged values: {', '.join(logged)}.")

    def update(self, epoch_log: dict[str, float]) -> bool:
        """Record an epoch's values; whether this epoch is the best so far (a NaN never is). A tie with the best is
        the best too, so that the later weights, trained longer, are kept (accuracy on a small validation set ties
        often); but only a strict improvement resets early stopping's count, so a plateau still stops."""
        if self.key is None:
            return False
        value = epoch_log[self.key]  # the loop checked the name first (`check`)
        better = math.isfinite(value) and (value < self.best if self.mode == "min" else value > self.best)
        self.not_improved = 0 if better else self.not_improved + 1
        if better or (math.isfinite(value) and value == self.best):
            self.best = value
            return True
        return False

    def early_stopped(self, patience: int) -> bool:
        if patience and self.key is not None and self.not_improved >= patience:
            log.info("%s has not improved for %d epochs (best %.6g): stopping early.",
                     self.key, self.not_improved, self.best)
            return True
        return False

    def keep(self, epoch: int, epoch_log: dict[str, float], k: int) -> tuple[bool, list[str]]:
        """Whether `checkpoint-epoch<epoch>.pth` is among the `k` best (newest without a monitor), and which
        kept files to delete once it is written."""
        name = f"checkpoint-epoch{epoch}.pth"
        if self.key is None:
            value, mode = float(epoch), "max"
        else:
            value, mode = epoch_log[self.key], self.mode
            if not math.isfinite(value):
                value = math.inf if mode == "min" else -math.inf
        self.kept, write, evict = keep_top_k(self.kept, value, name, k, mode)
        return write, evict

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "not_improved": self.not_improved, "kept": self.kept}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.not_improved, self.kept = state["best"], state["not_improved"], state["kept"]
