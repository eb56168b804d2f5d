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

import torch

import data_loader as module_data
from model.factory import build_criterion, build_metrics, build_model, build_optimizer
from trainer.checkpoint import check_resume_config, find_checkpoint, remove_temp_files
from trainer.signals import StopRequested
from trainer.trainer import Trainer
from utils import distributed
from utils.config import Config, save_config
from utils.device import configure_backends, select_device
from utils.errors import ConfigError, TemplateError, reason
from utils.log import setup_logging
from utils.rng import seed_everything
from utils.run import RunPaths, new_run, run_of_checkpoint
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


def train(args: argparse.Namespace) -> dict[str, float]:
    if args.config is None and args.resume is None:
        raise ConfigError("Give a config with -c configs/config.yaml, or a run to continue with --resume.")
    checkpoint_path, checkpoint = find_checkpoint(args.resume) if args.resume else (None, None)
    config = Config.load(args.config, args.overrides, base=checkpoint["config"] if checkpoint else None,
                         lr=args.lr, bs=args.bs, epochs=args.epochs, seed=args.seed, name=args.name, device=args.device)
    if checkpoint is not None:
        check_resume_config(checkpoint["config"], config.data, args.config or "the command line")
    trainer_cfg = config["trainer"]
    dist = distributed.init_distributed(trainer_cfg["dist_backend"])
    setup_logging(trainer_cfg["verbosity"] if dist.is_main else -1)  # other ranks: errors only
    if config["seed"] is None:
        config.data["seed"] = distributed.broadcast(random.SystemRandom().randrange(2**31))
    seed_everything(config["seed"])

    # Build everything from the config before anything is written to disk: a wrong key fails here.
    device = select_device(config["device"], config["n_gpu"], dist.local_rank if dist.enabled else None)
    configure_backends(trainer_cfg["cudnn_benchmark"], trainer_cfg["deterministic"], trainer_cfg["matmul_precision"])
    data = config.init_obj("data_loader", module_data, seed=config["seed"])
    train_loader, val_loader = data.train_loader(device), data.val_loader(device)
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
    lr_scheduler = (config.init_obj("lr_scheduler", torch.optim.lr_scheduler, optimizer=optimizer)
                    if config["lr_scheduler"] else None)
    trainer = Trainer(model, criterion, metrics, optimizer, config, device, train_loader, val_loader,
                      lr_scheduler, resume=checkpoint, dist=dist)

    def open_run() -> RunPaths:
        if checkpoint:
            remove_temp_files(checkpoint_path.parent)
            return run_of_checkpoint(checkpoint_path, checkpoint["config"]["name"])
        return new_run(trainer_cfg["save_dir"], config["name"], args.run_id)

    run = distributed.on_main(open_run)
    if dist.is_main:
        setup_logging(trainer_cfg["verbosity"], run.log / "train.log")
    if checkpoint:
        log.info("Resuming %s from %s: epoch %d, batch %d, step %d.", run.run_id, checkpoint_path,
                 trainer.epoch, trainer.batch_idx, trainer.global_step)
    log.info("Run %s on %s%s: checkpoints in %s, logs in %s", run.run_id, device,
             f" x {dist.world_size} processes" if dist.enabled else "", run.models, run.log)
    log.info("Data per process: %d training, %d validation samples", len(train_loader.sampler),
             len(val_loader.sampler) if val_loader else 0)
    log.info("%s\n%s", type(model).__name__, model_summary(model))
    distributed.on_main(save_config, config.data, run.models / "config.yaml")

    result = trainer.fit(run)
    if trainer.monitor_key is not None:
        log.info("Done. Best %s: %.6g, saved in %s", trainer.monitor_key, trainer.best, run.models / "model_best.pth")
    best = run.models / ("model_best.pth" if trainer.monitor_key is not None else "checkpoint-latest.pth")
    log.info("Evaluate with: python test.py --resume %s", best)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    try:
        train(args)
    except TemplateError as e:
        log.error("%s%s", distributed.rank_prefix(), e)
        return e.exit_code
    except StopRequested as e:
        if distributed.is_main():
            log.warning("Stopped by %s. The run is saved in %s; continue it with:\n  python train.py --resume %s",
                        signal.Signals(e.signum).name, e.checkpoint, e.checkpoint.rsplit("/", 1)[0])
        return e.exit_code
    except torch.distributed.DistError as e:
        log.error("%sLost contact with the other training processes (%s). Another process most likely failed: "
                  "its own message comes first in the output.", distributed.rank_prefix(), reason(e))
        return 1
    except KeyboardInterrupt:
        log.error("Interrupted. Continue from the last checkpoint with: python train.py --resume <run folder>")
        return 130
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    # The imported modules (torch and its compiler: 3 million objects) live as long as the process: keep them out of
    # every garbage collection, the one at exit included (half a second on 2 CPU cores).
    gc.freeze()
    sys.exit(main())
