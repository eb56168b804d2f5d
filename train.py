"""Train a model from a config file:  python train.py -c configs/config.yaml [key.path=value ...]

Continue a run (a checkpoint file or a run folder):  python train.py --resume saved/models/<name>/<run_id>
"""
from __future__ import annotations

import argparse
import gc
import logging
import random
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from data_loader.factory import build_data_loader, check_training_loader, data_state, load_data_state
from model.factory import build_criterion, build_metrics, build_model, build_optimizer
from trainer.checkpoint import check_resume_config, find_resume
from trainer.factory import build_trainer
from trainer.preflight import check_one_batch
from trainer.scheduler import build_lr_scheduler
from trainer.signals import StopRequested
from trainer.trainer import Trainer
from utils import distributed
from utils.config import Config, save_config, unused_keys
from utils.device import configure_backends, select_device
from utils.errors import ConfigError, TemplateError, reason, report_errors
from utils.files import remove_temp_files
from utils.log import setup_logging
from utils.rng import seed_everything
from utils.run import RunPaths, folder_name, lock_run, new_run, release_runs, remove_run, run_of_checkpoint
from utils.summary import model_summary

log = logging.getLogger("train")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that make a run's config (-c, the short flags, key.path=value overrides); tune.py takes them too
    and passes them on to every trial. `--seed` is left to each script: tune.py's seeds the search."""
    parser.add_argument("-c", "--config", help="config file, e.g. configs/config.yaml")
    parser.add_argument("-d", "--device", help="auto | cpu | cuda | cuda:N | mps (default: the config's device)")
    parser.add_argument("--lr", type=float, help="sets optimizer.args.lr")
    parser.add_argument("--bs", "--batch-size", dest="bs", type=int, help="sets data_loader.args.batch_size")
    parser.add_argument("--epochs", type=int, help="sets trainer.epochs")
    parser.add_argument("--name", help="sets name (the experiment's folder under save_dir)")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value",
                        help="set any config key, e.g. optimizer.args.lr=3e-4 trainer.epochs=5")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train a model from a YAML (or classic JSON) config.")
    parser.add_argument("-r", "--resume", help="checkpoint file or run folder to continue")
    parser.add_argument("--run-id", help="name of the run folder (default: a timestamp)")
    parser.add_argument("--seed", type=int, help="sets seed")
    add_config_arguments(parser)
    return parser.parse_intermixed_args(argv)


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
    `args.resume` continues), checked with one batch through the model before anything is written. Shared by
    `train` and tune.py's LR range test, so that both build the run the same way."""
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
        check_resume_config(checkpoint["config"], config.data, args.config or "the command line")
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
    train_loader, val_loader = data.train_loader(device), data.val_loader(device)
    check_training_loader(train_loader, config["data_loader"]["type"])
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
    optimizer = build_optimizer(config, model)
    lr_scheduler = build_lr_scheduler(config, optimizer)
    parts = {"model": model, "criterion": criterion, "metrics": metrics, "optimizer": optimizer, "device": device,
             "train_loader": train_loader, "val_loader": val_loader, "lr_scheduler": lr_scheduler,
             "data_state": data_state(data)}
    return parts, getattr(data, "num_classes", None)


def train(args: argparse.Namespace) -> dict[str, float]:
    built = build(args)
    config, trainer, checkpoint, checkpoint_path = built.config, built.trainer, built.checkpoint, built.checkpoint_path
    trainer_cfg, dist = config["trainer"], trainer.dist

    def open_run() -> RunPaths:
        """The run's folders (the resumed run's, or new ones), locked against a second writer, with the config and
        the log file written in them. A new run that cannot start there (a full disk) leaves no folder behind, so
        that every run folder holds the config.yaml that --resume starts it again from."""
        if args.resume:  # checks that it can write there
            run = run_of_checkpoint(checkpoint_path or Path(args.resume) / "config.yaml", built.saved["name"])
        else:
            run = new_run(trainer_cfg["save_dir"], config["name"], args.run_id)
        try:
            lock_run(run.models)
            remove_temp_files(run.models)
            setup_logging(trainer_cfg["verbosity"], run.log / "train.log")
            save_config(config.data, run.models / "config.yaml")
        except BaseException:
            if not args.resume:
                setup_logging(trainer_cfg["verbosity"])  # closes train.log
                remove_run(run)
            raise
        return run

    run = distributed.on_main(open_run)
    if checkpoint:
        log.info("Resuming %s from %s: epoch %d, batch %d, step %d.", run.run_id, checkpoint_path,
                 trainer.epoch, trainer.batch_idx, trainer.global_step)
    log.info("Run %s on %s%s: checkpoints in %s, logs in %s", run.run_id, trainer.device,
             f" x {dist.world_size} processes" if dist.enabled else "", run.models, run.log)
    log.info("Data per process: %d training, %d validation samples", len(trainer.train_loader.sampler),
             len(trainer.val_loader.sampler) if trainer.val_loader else 0)
    log.info("%s\n%s", type(trainer.model).__name__, model_summary(trainer.model))
    if unused_keys(config.data):
        log.info("Config keys not used by the template, kept for your code (config[key]): %s.",
                 ", ".join(map(repr, unused_keys(config.data))))

    try:
        result = trainer.fit(run)
    except TemplateError as e:
        if e.exit_code == 2 and not args.resume and dist.is_main and not any(run.models.glob("*.pth")):
            setup_logging(trainer_cfg["verbosity"])  # closes train.log
            remove_run(run)
            log.info("Removed the new run's folders %s and %s: the run stopped on bad input before its first "
                     "checkpoint.", run.models, run.log)
        raise
    if trainer.monitor.key is not None:
        log.info("Done. Best %s: %.6g, saved in %s", trainer.monitor.key, trainer.monitor.best,
                 run.models / "model_best.pth")
    best = run.models / ("model_best.pth" if trainer.monitor.key is not None else "checkpoint-latest.pth")
    log.info("Evaluate with: python test.py --resume %s", best)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    try:
        return report_errors(lambda: train(args), log, prefix=distributed.rank_prefix)
    except StopRequested as e:
        if distributed.is_main():
            log.warning("Stopped by %s. The run is saved in %s; continue it with:\n  python train.py --resume %s",
                        signal.Signals(e.signum).name, e.checkpoint, e.checkpoint.rsplit("/", 1)[0])
        return e.exit_code
    except (torch.distributed.DistError, RuntimeError) as e:
        if not distributed.lost_contact(e):
            raise
        log.error("%sLost contact with the other training processes (%s). Another process most likely failed: "
                  "its own message comes first in the output.", distributed.rank_prefix(), reason(e).split(". ")[0])
        return 1
    except KeyboardInterrupt:
        log.error("Interrupted. Continue from the last checkpoint with: python train.py --resume <run folder>")
        return 130
    finally:
        release_runs()
        distributed.shutdown()


if __name__ == "__main__":
    # The imported modules (torch and its compiler: 3 million objects) live as long as the process: keep them out of
    # every garbage collection, the one at exit included (half a second on 2 CPU cores).
    gc.freeze()
    sys.exit(main())
