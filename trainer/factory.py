"""Build the Trainer a config names in `trainer.type` (the template's, or a subclass of yours)."""
from __future__ import annotations

import inspect
from typing import Any

from trainer.callbacks import misspelt_event
from trainer.trainer import Trainer
from utils.config import Config
from utils.construct import call_with_args
from utils.errors import ConfigError, blame
from utils.registry import lookup


def build_trainer(config: Config, resume: dict[str, Any] | None = None, **parts: Any) -> Trainer:
    """`trainer.type` built with `trainer.args` and the run's `parts` (model, criterion, loaders, ...), then
    given the state of the checkpoint `resume`: after the subclass's own `__init__`, so that a subclass that
    keeps state of its own (its `state_dict` and `load_state_dict`) gets it back too."""
    name = config["trainer"]["type"]
    cls = lookup(name, "trainer", "trainer.type", config.source)
    if not (inspect.isclass(cls) and issubclass(cls, Trainer)):
        raise ConfigError(f"{blame(config.source, 'trainer.type')}: trainer.type '{name}' is not a subclass of "
                          "Trainer. Name Trainer or a subclass of it, such as those in trainer/custom.py.")
    classic = [m for c in cls.__mro__ if c is not Trainer and issubclass(c, Trainer)
               for m in ("_train_epoch", "_valid_epoch") if m in vars(c)]
    if classic:
        raise ConfigError(f"{blame(config.source, 'trainer.type')}: trainer.type '{name}' overrides {classic[0]}, "
                          "the classic template's BaseTrainer method, which this template's loop never calls: it "
                          "would be silently ignored. Move that logic to training_step / validation_step "
                          "(docs/training_step.md, docs/classic.md).")
    trainer = config.init_obj("trainer", config=config, **parts)
    trainer.callbacks = build_callbacks(config)
    misspelt = misspelt_event(trainer)
    if misspelt:
        raise ConfigError(f"{blame(config.source, 'trainer.type')}: trainer.type '{name}' {misspelt}")
    if resume is not None:
        trainer.load_state_dict(resume)
    return trainer


def build_callbacks(config: Config) -> list[Any]:
    """The config's `callbacks`, each built from its `type` (trainer/custom.py, or trainer/callbacks.py) and
    `args`."""
    callbacks = []
    for i, spec in enumerate(config["callbacks"]):
        spec = {"type": spec} if isinstance(spec, str) else spec
        key = f"callbacks[{i}]"
        cls = lookup(spec["type"], "callbacks", key, config.source)
        callback = call_with_args(cls, spec.get("args") or {}, key, config.source)
        misspelt = misspelt_event(callback)
        if misspelt:
            raise ConfigError(f"{blame(config.source, key)}: {key}, the callback '{spec['type']}', {misspelt}")
        callbacks.append(callback)
    return callbacks
