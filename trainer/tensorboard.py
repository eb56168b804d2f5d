"""What a run writes to TensorBoard (`trainer.tensorboard: true`, rank 0 only), in one place.

Tags: `<metric>/train`, `<metric>/val` (and `<metric>/val_ema` with trainer.ema) per epoch, `step/<metric>` every
`log_step` steps, `lr/group<i>` per parameter group, `speed/samples_per_second` and `speed/data_wait_share`,
`inputs/train` (a grid of the first training batch of each epoch, for image data), `weights/<name>` and
`gradients/<name>` histograms per epoch with `trainer.histograms: true`, the activation statistics of
trainer/hooks.py, the run's hyperparameters with its best and last values in the HParams tab, and for a
classifier at the end of training the last validation pass's `confusion_matrix/val` image and
`class_precision/<class>`, `class_recall/<class>` and `class_f1/<class>` (trainer/confusion.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer.confusion import ClassReport
from utils.plots import confusion_matrix_image, scale_to_unit
from utils.schema import HPARAMS


class Board:
    """A SummaryWriter on the run's log folder. `purge_step` drops events a resumed run will write again."""

    def __init__(self, log_dir: Path, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter  # imported only when TensorBoard is on

        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)
        self.images_epoch = 0

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(f"{prefix}{name}", value, step)

    def epoch(self, epoch_log: dict[str, float], lrs: list[float], throughput: tuple[float, float] | None,
              step: int) -> None:
        for name, value in epoch_log.items():
            split, metric = ("val", name[4:]) if name.startswith("val_") else ("train", name)
            if metric.endswith("_ema"):  # the EMA's figures beside the model's: accuracy/val_ema
                split, metric = "val_ema", metric[:-4]
            self.writer.add_scalar(f"{metric}/{split}", value, step)
        self.scalars("lr/group", dict(enumerate(lrs)), step)
        if throughput is not None:
            self.scalars("speed/", {"samples_per_second": throughput[0], "data_wait_share": throughput[1]}, step)

    def images(self, batch: Any, epoch: int, step: int) -> None:
        """Up to 16 inputs of an image batch (N, 1|3, H, W), scaled to 0..1 for display, once per epoch."""
        if epoch == self.images_epoch or not isinstance(batch, torch.Tensor) or batch.dim() != 4 \
                or batch.shape[1] not in (1, 3):
            return
        self.images_epoch = epoch
        self.writer.add_images("inputs/train", scale_to_unit(batch[:16]), step)

    def histograms(self, model: nn.Module, step: int) -> None:
        for name, param in model.named_parameters():
            self.writer.add_histogram(f"weights/{name}", param.detach().float().cpu(), step)
            if param.grad is not None:
                self.writer.add_histogram(f"gradients/{name}", param.grad.detach().float().cpu(), step)

    def classification(self, report: ClassReport, step: int) -> None:
        """The confusion matrix as an image and each class's precision, recall and F1 (trainer/confusion.py)."""
        image = confusion_matrix_image(report.matrix, report.names)
        self.writer.add_image("confusion_matrix/val", np.asarray(image), step, dataformats="HWC")
        for name, figures in report.figures()["per_class"].items():
            self.scalars("class_", {f"{key}/{name}": figures[key] for key in ("precision", "recall", "f1")}, step)

    def hparams(self, config: dict[str, Any], metrics: dict[str, float]) -> None:
        """The run's hyperparameters and final values, in the HParams tab (written into the run's own folder)."""
        params = {}
        for section in HPARAMS:
            value: Any = config
            for part in section.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            params.update(_flatten(section, value))
        self.writer.add_hparams(params, {f"hparam/{k}": v for k, v in metrics.items()}, run_name=".")

    def close(self) -> None:
        self.writer.close()


def _flatten(prefix: str, value: Any) -> dict[str, Any]:
    """`{a: {b: 1, c: {d: 2}}}` -> `{a.b: 1, a.c.d: 2}`."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flatten(f"{prefix}.{key}", item).items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {prefix: "null" if value is None else value}
    return {prefix: str(value)}
