"""Evaluate a checkpoint on the test split (or the validation split) of the data it was trained with:

    python test.py --resume saved/models/<name>/<run_id>/model_best.pth [--split val] [-c other_data.yaml]
"""
from __future__ import annotations

import argparse
import gc
import logging
import sys

from model.factory import build_criterion, build_metrics
from trainer.evaluate import evaluate
from trainer.restore import eval_loader, restore
from utils.errors import report_errors
from utils.log import setup_logging

log = logging.getLogger("test")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Evaluate a trained checkpoint.")
    parser.add_argument("-r", "--resume", required=True, help="checkpoint file (or run folder: its model_best.pth)")
    parser.add_argument("-c", "--config", help="config whose data_loader section replaces the checkpoint's")
    parser.add_argument("-d", "--device", help="auto | cpu | cuda | cuda:N | mps (default: the config's device)")
    parser.add_argument("--split", choices=("test", "val"), default="test", help="which data to evaluate on")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="e.g. data_loader.args.batch_size=256")
    return parser.parse_intermixed_args(argv)


def run_test(args: argparse.Namespace) -> dict[str, float]:
    trained = restore(args.resume, args.config, args.overrides, args.device)
    loader = eval_loader(trained.config, trained.device, args.split)
    config = trained.config
    result = evaluate(trained.model, loader, build_criterion(config), build_metrics(config), trained.device,
                      desc=args.split)
    loop = trained.checkpoint["loop"]
    print(f"{trained.path} (epoch {loop['epoch'] - 1 if loop['batch_idx'] == 0 else loop['epoch']}, "
          f"step {loop['global_step']}) on the {args.split} split: {len(loader.sampler)} samples")
    width = max(len(name) for name in result)
    for name, value in result.items():
        print(f"  {name:<{width}}  {value:.6f}")
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    return report_errors(lambda: run_test(args), log)


if __name__ == "__main__":
    # The imported modules (torch and its compiler: 3 million objects) live as long as the process: keep them out of
    # every garbage collection, the one at exit included (half a second on 2 CPU cores).
    gc.freeze()
    sys.exit(main())
