"""Compatibility with the classic victoresque/pytorch-template, so that a project written for it drops in:
`from base import BaseDataLoader, BaseModel, BaseTrainer` works as its model/ and data_loader/ files expect.
`BaseTrainer` is this template's `Trainer` (override its steps, not the classic `_train_epoch`), imported only when
asked for, so that a classic data loader or model importing `base` does not pull in the trainer above them."""
from typing import Any

from base.base_data_loader import BaseDataLoader
from base.base_model import BaseModel

__all__ = ["BaseDataLoader", "BaseModel", "BaseTrainer"]


def __getattr__(name: str) -> Any:
    if name == "BaseTrainer":
        from trainer.trainer import Trainer

        return Trainer
    raise AttributeError(f"module 'base' has no attribute {name!r}")
