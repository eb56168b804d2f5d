"""Build the Trainer a config names in `trainer.type` (the template's, or a subclass of yours)."""
from __future__ import annotations

import inspect
from typing import Any

from trainer.trainer import Trainer
from utils.config import Config
from utils.errors import ConfigError, blame
from utils.registry import lookup


def build_trainer(config: Config, **parts: Any) -> Trainer:
    """`trainer.type` built with `trainer.args` and the run's `parts` (model, criterion, loaders, ...)."""
    name = config["trainer"]["type"]
    cls = lookup(name, "trainer", "trainer.type", config.source)
    if not (inspect.isclass(cls) and issubclass(cls, Trainer)):
        raise ConfigError(f"{blame(config.source, 'trainer.type')}: trainer.type '{name}' is not a subclass of Trainer. Name Trainer or "
                          "a subclass of it, such as those in trainer/custom.py.")
    return config.init_obj("trainer", config=config, **parts)
