"""A run built from its command line, as torchtune's recipes `setup` theirs: the config (or the checkpoint's, for
`--resume`), the data, the model, the loss, the metrics, the optimizer, the scheduler and the Trainer, each from its
config section, then one batch through the training step; nothing is written until all of it is checked. train.py
trains what `build` returns, and tune.py's LR range test (tools/lr_find.py) tests it, so that both build the run the
same way."""
from __future__ import annotations

import argparse
import inspect
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from data_loader.factory import build_data_loader, load_data_state, training_data
from model.factory import build_criterion, build_metrics, build_model, build_optimizer, build_optimizers
from trainer.checkpoint import check_resume_config, find_resume
from trainer.factory import build_trainer
from trainer.preflight import check_one_batch
from trainer.scheduler import build_lr_scheduler
from trainer.trainer import Trainer, needs_closure
from utils import distributed
from utils.config import Config
from utils.device import configure_backends, select_device
from utils.errors import ConfigError, blame
from utils.log import setup_logging
from utils.registry import lookup
from utils.rng import seed_everything
from utils.run import folder_name

log = logging.getLogger(__name__)


@dataclass
class Built:
    """A run built from its command line and checked, with nothing written yet."""

    config: Config
    trainer: Trainer
    checkpoint_path: Path | None
    checkpoint: dict[str, Any] | None
    saved: dict[str, Any] | None  # the config of the run --resume continues


def build(args: argparse.Namespace) -> Built:
    """The config, data, model, loss, metrics, optimizer, scheduler and Trainer of a run (or of the run
    `args.resume` continues), checked with one batch through the model before anything is written. `args` holds
    train.py's flags (config, resume, run_id, seed, the short flags and the overrides)."""
    if args.config is None and args.resume is None:
        raise ConfigError("Give a config with -c configs/config.yaml, or a run to continue with --resume.")
    if args.run_id is not None:
        folder_name(args.run_id, "--run-id")
        if args.resume is not None:
            raise ConfigError("--run-id names the folder of a new run, but --resume continues a run in its own folder: "
                              "leave --run-id out.")
    # --resume: a checkpoint, or a run folder stopped before its first checkpoint (started again from its config).
    checkpoint_path, checkpoint, saved = find_resume(args.resume) if args.resume else (None, None, None)
    config = Config.load(args.config, args.overrides, base=saved, lr=args.lr, bs=args.bs, epochs=args.epochs,
                         seed=args.seed, name=args.name, device=args.device)
    if checkpoint is not None:
        saved_name = folder_name(checkpoint["config"]["name"], f"The experiment name saved in '{checkpoint_path}'",
                                 nested=True)
        if config["name"] != saved_name and "name" in config.source.overrides:
            raise ConfigError(f"command line ({config.source.overrides['name']}): a resumed run keeps its name "
                              f"({saved_name!r}) and its folders; leave the name out, or start a new run with -c.")
        config.data["name"] = saved_name  # also when -c's file names another experiment
    trainer_cfg = config["trainer"]
    dist = distributed.init_distributed(trainer_cfg["dist_backend"])
    setup_logging(trainer_cfg["verbosity"] if dist.is_main else -1)  # other ranks: errors only
    if config["seed"] is None:
        config.data["seed"] = distributed.broadcast(random.SystemRandom().randrange(2**31))
    seed_everything(config["seed"])
    # Every process builds and checks its part; a failure on any stops all of them before anything is written.
    parts, num_classes = distributed.agree(lambda: build_parts(config, checkpoint, dist))
    if checkpoint is not None:  # once the data loader has filled in the model args it learned (model_args)
        check_resume_config(checkpoint["config"], config.data, args.config or "the command line")
    trainer = build_trainer(config, resume=checkpoint, dist=dist, **parts)  # DDP's wrapper syncs the processes
    distributed.agree(lambda: check_one_batch(trainer, num_classes))  # the last check before anything is written
    return Built(config, trainer, checkpoint_path, checkpoint, saved)


def build_parts(config: Config, checkpoint: dict[str, Any] | None,
                dist: distributed.Dist) -> tuple[dict[str, Any], int | None]:
    """Everything the Trainer takes, from the config, before anything is written to disk, so that a wrong key fails
    here: the data, the model, the loss, the metrics, the optimizer and the scheduler; and the data's number of
    classes when it knows it."""
    trainer_cfg = config["trainer"]
    device = select_device(config["device"], config["n_gpu"], dist.local_rank if dist.enabled else None)
    configure_backends(trainer_cfg["cudnn_benchmark"], trainer_cfg["deterministic"], trainer_cfg["matmul_precision"])
    data = build_data_loader(config["data_loader"], config["seed"], source=config.source)
    if checkpoint is not None:
        load_data_state(data, checkpoint)
    training = training_data(data, device, config["data_loader"]["type"])
    fill_model_args(config, data.model_args() if callable(getattr(data, "model_args", None)) else {})
    model = build_model(config, pretrained=checkpoint is None)
    if dist.enabled and trainer_cfg["sync_batchnorm"]:
        if device.type != "cuda":
            raise ConfigError("trainer.sync_batchnorm works on CUDA devices only (PyTorch's SyncBatchNorm); "
                              f"this run uses {device}. Set trainer.sync_batchnorm: false.")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if dist.enabled:
        seed_everything(config["seed"] + dist.rank)  # same initial weights, different dropout per process
    criterion = build_criterion(config)
    metrics = build_metrics(config)
    parts = {"model": model, "criterion": criterion, "metrics": metrics, "device": device, "data": training}
    if config["optimizers"] is None:
        optimizer = build_optimizer(config, model)
        if needs_closure(optimizer):
            if dist.enabled:
                raise ConfigError(f"{blame(config.source, 'optimizer.type')}: the optimizer "
                                  f"'{config['optimizer']['type']}' re-evaluates the loss through a closure, as often "
                                  "as its own loss values decide, so under torchrun the processes would fall out of "
                                  "step. Train it in one process (python train.py), or choose another optimizer.")
            refuse_settings(config, f"the optimizer '{config['optimizer']['type']}' re-evaluates the loss through a "
                            "closure (its step(closure))", amp="fp16's gradient scaler cannot scale a closure",
                            accumulate_grad_batches="each step evaluates one batch, so gradients cannot be "
                            "accumulated over several", on_nan="the optimizer evaluates the batch itself, so a "
                            "batch cannot be skipped")
        parts.update(optimizer=optimizer, lr_scheduler=build_lr_scheduler(config, optimizer))
    else:
        refuse_settings(config, "with 'optimizers', your training step steps the optimizers itself",
                        amp="fp16's gradient scaler is not applied to its steps (bf16 needs none)",
                        on_nan="it decides itself what a non-finite loss skips")
        optimizers = build_optimizers(config, model)
        schedulers = {name: build_lr_scheduler(config, optimizer, f"optimizers.{name}.lr_scheduler", spec)
                      for name, optimizer in optimizers.items()
                      if (spec := config["optimizers"][name]["lr_scheduler"]) is not None}
        parts.update(optimizer=None, lr_scheduler=None, optimizers=optimizers, lr_schedulers=schedulers)
    return parts, getattr(data, "num_classes", None)


_SAFE = {"amp": ("bf16 or off", lambda v: v == "fp16"), "accumulate_grad_batches": ("1", lambda v: v > 1),
         "on_nan": ("stop", lambda v: v == "skip_batch")}


def refuse_settings(config: Config, subject: str, **why: str) -> None:
    """Refuse each `trainer.<key>` of `why` that is set to what `subject` cannot honour, saying why."""
    for key, reason in why.items():
        fix, bad = _SAFE[key]
        if bad(config["trainer"][key]):
            raise ConfigError(f"{blame(config.source, f'trainer.{key}')}: {subject}, and {reason}. Set trainer.{key}: "
                              f"{fix}.")


def fill_model_args(config: Config, learned: dict[str, Any]) -> None:
    """Each value the data loader learned (`model_args()`) into the `arch.args` entry of its name, where the model's
    constructor takes it and the config leaves it out; the run's saved config then holds it, for test.py,
    predict.py and export.py, which build the model without the training data."""
    if not learned:
        return
    cls = lookup(config["arch"]["type"], "arch", "arch.type", config.source)
    parameters = inspect.signature(cls).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    args = config.data["arch"]["args"]
    for name, value in learned.items():
        if name not in args and (name in parameters or takes_any):
            args[name] = value
            log.info("arch.args.%s: %r, from the data loader.", name, value)
