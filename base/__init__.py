"""Compatibility with the classic victoresque/pytorch-template, so that a project written for it drops in:
`from base import BaseDataLoader, BaseModel, BaseTrainer` works as its model/ and data_loader/ files expect.
`BaseTrainer` is this template's `Trainer` (override its steps, not the classic `_train_epoch`)."""
from base.base_data_loader import BaseDataLoader
from base.base_model import BaseModel
from trainer.trainer import Trainer as BaseTrainer

__all__ = ["BaseDataLoader", "BaseModel", "BaseTrainer"]
