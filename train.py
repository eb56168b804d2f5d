"""Train a model from a config file:  python train.py -c configs/config.yaml [key.path=value ...]

Continue a run (a checkpoint file or a run folder):  python train.py --resume saved/models/<name>/<run_id>
"""
from __future__ import annotations

import argparse
import gc
import logging
import signal
import sys
from pathlib import Path

import torch

from trainer.setup import build
from utils import distributed
from utils.config_file import save_config
from utils.errors import TemplateError, reason, report_errors
from utils.files import remove_temp_files
from utils.log import setup_logging
from utils.run import InUse, RunPaths, lock_run, new_run, release_runs, remove_run, run_of_checkpoint
from utils.schema import add_config_arguments, describe, unused_keys
from utils.signals import StopRequested
from utils.summary import model_summary

log = logging.getLogger("train")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train a model from a YAML (or classic JSON) config.")
    parser.add_argument("-r", "--resume", help="checkpoint file or run folder to continue")
    parser.add_argument("--run-id", help="name of the run folder (default: a timestamp)")
    parser.add_argument("--seed", type=int, help="sets seed")
    add_config_arguments(parser)
    return parser.parse_intermixed_args(argv)


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
        except BaseException as e:
            if not args.resume and not isinstance(e, InUse):  # a process on the same --run-id owns the folder
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
    if args.help_config is not None:
        return report_errors(lambda: print(describe(args.help_config or None)), log)
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
        log.debug("The collective's own error:", exc_info=True)
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
