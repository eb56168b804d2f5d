"""Evaluate a checkpoint on the test split (or the validation split) of the data it was trained with:

    python test.py --resume saved/models/<name>/<run_id>/model_best.pth [--split val] [-c other_data.yaml]
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import data_loader as module_data
from model.factory import build_criterion, build_metrics, build_model
from trainer.checkpoint import BEST, find_checkpoint
from trainer.evaluate import evaluate
from utils.config import Config
from utils.device import select_device
from utils.errors import CheckpointError, TemplateError
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
    path = Path(args.resume)
    if path.is_dir() and (path / BEST).is_file():
        path = path / BEST
    path, checkpoint = find_checkpoint(path)
    base = checkpoint["config"]
    if args.config is not None:
        base = {**base, "data_loader": Config.load(args.config)["data_loader"]}
    config = Config.load(None, args.overrides, base=base, device=args.device)
    device = select_device(config["device"])
    data = config.init_obj("data_loader", module_data, seed=config["seed"])
    loader = data.test_loader(device) if args.split == "test" else data.val_loader(device)
    if loader is None:
        raise CheckpointError("The checkpoint's config has no validation split (data_loader.args.validation_split "
                              "is 0); use --split test.")
    model = build_model(config, pretrained=False)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as e:
        raise CheckpointError(f"'{path}' does not fit the model '{config['arch']['type']}': "
                              f"{str(e).splitlines()[0]}") from None
    model.to(device)
    result = evaluate(model, loader, build_criterion(config), build_metrics(config), device, desc=args.split)
    loop = checkpoint["loop"]
    print(f"{path} (epoch {loop['epoch'] - 1 if loop['batch_idx'] == 0 else loop['epoch']}, "
          f"step {loop['global_step']}) on the {args.split} split: {len(loader.sampler)} samples")
    width = max(len(name) for name in result)
    for name, value in result.items():
        print(f"  {name:<{width}}  {value:.6f}")
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    try:
        run_test(args)
    except TemplateError as e:
        log.error("%s", e)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
