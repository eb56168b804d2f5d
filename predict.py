"""Predict with a trained checkpoint: the class of each image (or the rows of a table), written to a CSV file:

    python predict.py --resume saved/models/<name>/<run_id>/model_best.pth PATH... [--output predictions.csv]

PATH is any mix of image files, folders (searched recursively) and .csv/.txt lists of image files; for a model
trained on a table (TableDataLoader), CSV files of feature rows. Each input is read and prepared as evaluation
prepared the training data: the checkpoint's image_mode and eval_transform, or its saved standardisation.
"""
from __future__ import annotations

import argparse
import csv
import gc
import io
import logging
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from data_loader.builtin import TableDataLoader
from data_loader.checks import collate
from data_loader.datasets import read_mode
from data_loader.device_loader import DeviceDataLoader
from data_loader.inputs import ImageInputs, Inputs, TableInputs, find_images
from tools.predictor import Predictor, is_classifier
from tools.restore import Restored, Served, add_ema_argument, check_one_input, check_one_output, rebuilt_data, restore
from trainer.checkpoint import class_names, inputs_record
from utils.device import to_device
from utils.errors import ConfigError, DataError, reason, report_errors
from utils.files import atomic_write
from utils.log import setup_logging
from utils.run import check_not_an_input, check_output_file

log = logging.getLogger("predict")

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Predict classes (or output values) with a trained checkpoint.")
    parser.add_argument("-r", "--resume", required=True, help="checkpoint file (or run folder: its model_best.pth)")
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="image files, folders of images, .csv/.txt lists of images; for a table model, CSV files")
    parser.add_argument("-o", "--output", default="predictions.csv", help="CSV file to write (default: %(default)s)")
    parser.add_argument("-k", "--top-k", type=int, default=3, help="the K best classes to list (default: %(default)s)")
    parser.add_argument("-b", "--batch-size", type=int, help="inputs per batch (default: the config's batch_size)")
    parser.add_argument("-d", "--device", help="auto | cpu | cuda | cuda:N | mps (default: the config's device)")
    parser.add_argument("-c", "--config", help="config whose data_loader section replaces the checkpoint's")
    parser.add_argument("--strict", action="store_true",
                        help="stop at an input that cannot be used (unreadable, or not fit for the model) instead of "
                        "skipping it")
    add_ema_argument(parser)
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> Path:
    """The output file, once the flags are known to make sense: checked before any work, so nothing is lost."""
    output = Path(args.output)
    check_output_file(output)
    if args.top_k < 0:
        raise ConfigError(f"--top-k must be 0 or more (the best classes to list), got {args.top_k}.")
    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError(f"--batch-size must be 1 or more, got {args.batch_size}.")
    return output


def make_inputs(source: Any, paths: list[str]) -> Inputs:
    """The inputs `paths` give, prepared the way `source` (the training loader, rebuilt) prepares its test split."""
    if isinstance(source, TableDataLoader):
        return TableInputs(paths, source.features, source.standardize, source.eval_transform)
    if not hasattr(source, "eval_transform"):
        raise ConfigError(f"predict.py prepares images with the loader's eval_transform, and "
                          f"{type(source).__name__} has none (a classic template loader keeps its transforms in its "
                          "dataset). Train with a loader of data_loader/ (e.g. CsvImageDataLoader) to predict here.")
    return ImageInputs(find_images(paths), read_mode(getattr(source, "image_mode", None) or "unchanged"),
                       source.eval_transform, training_channels(source))


def training_channels(source: Any) -> int | None:
    """The channel count of the training images after eval_transform: the loader's `channels` when it checks them,
    else that of its first training image (None when it cannot be read: the model's own error will tell)."""
    if getattr(source, "channels", None):
        return source.channels
    try:
        image = source.make_dataset(True, source.eval_transform)[0][0]
    except (DataError, OSError, RuntimeError, ValueError, TypeError, IndexError):
        return None
    return image.shape[0] if isinstance(image, torch.Tensor) and image.dim() == 3 else None


def forward(trained: Restored, batch: torch.Tensor) -> torch.Tensor:
    """The model's output for `batch` (its `predict`, where it has one); a DataError when it cannot take it."""
    try:
        output = Served(trained.model)(to_device(batch, trained.device))
    except torch.OutOfMemoryError:
        raise ConfigError(f"A batch of {len(batch)} inputs does not fit in the memory of {trained.device}; "
                          "lower --batch-size.") from None
    except (RuntimeError, ValueError) as e:
        raise DataError(f"the model cannot take it ({reason(e)}). Inputs must have the form of the training data "
                        "after eval_transform: the same channel count (and size, unless the model takes any) for "
                        "images, the same columns for tables") from None
    return check_one_output(output, trained.config["arch"]["type"], "predict.py")


@torch.inference_mode()
def run_model(trained: Restored, inputs: Inputs, batch_size: int, num_workers: int,
              strict: bool) -> tuple[list[int], torch.Tensor, int]:
    """The model's outputs (on the CPU) for every readable input, with their indices; unreadable inputs, and
    inputs the model cannot take, are named and counted, or stop the run with `strict`. A batch that cannot be run
    as one (images of several sizes, or one the model refuses) runs one input at a time, to name the ones at fault."""
    loader = DataLoader(inputs, batch_size=batch_size, num_workers=num_workers, collate_fn=list)
    indices, outputs, skipped = [], [], 0

    def skip(problem: str) -> None:
        nonlocal skipped
        if strict:
            raise DataError(f"{problem} (--strict stops at an input that cannot be used; without it such inputs are "
                            "skipped and counted). Replace or remove it.")
        log.warning("Skipped: %s", problem)
        skipped += 1

    for batch in tqdm(loader, desc="predict", unit="batch", leave=False, dynamic_ncols=True, disable=None):
        for _, problem in (item for item in batch if isinstance(item[1], str)):
            skip(problem)
        good = [item for item in batch if not isinstance(item[1], str)]
        try:
            runs = [(good, forward(trained, collate([sample for _, sample in good])))] if good else []
        except DataError:
            runs = []
            for index, sample in good:
                try:
                    runs.append(([(index, sample)], forward(trained, sample.unsqueeze(0))))
                except DataError as e:
                    skip(f"'{', '.join(map(str, inputs.keys[index]))}': {e}")
        for items, output in runs:
            indices += [index for index, _ in items]
            outputs.append(output.float().cpu())
    return indices, torch.cat(outputs) if outputs else torch.empty(0), skipped


def prediction_rows(outputs: torch.Tensor, names: list[str] | None, classify: bool,
                    top_k: int) -> tuple[list[str], list[list[Any]]]:
    """The output columns and one row per input: for a classifier, the best class's name, index and probability,
    then the `top_k` best classes' names and probabilities; otherwise the output values."""
    if classify and outputs.dim() == 2 and outputs.size(1) > 1:
        k = min(top_k, outputs.size(1))
        best = outputs.softmax(dim=1).topk(max(k, 1), dim=1)
        header = ["label", "index", "probability"] + [f"{c}{n}" for n in range(1, k + 1) for c in ("top", "prob")]
        rows = []
        for indices, probabilities in zip(best.indices.tolist(), best.values.tolist()):
            ranked = [(names[i] if names and i < len(names) else str(i), f"{p:.6f}")
                      for i, p in zip(indices, probabilities)]
            rows.append([ranked[0][0], indices[0], ranked[0][1], *(v for pair in ranked[:k] for v in pair)])
        return header, rows
    values = outputs.reshape(len(outputs), -1)
    header = ["output"] if values.size(1) == 1 else [f"output{i}" for i in range(values.size(1))]
    return header, [[f"{v:.7g}" for v in row] for row in values.tolist()]


def summary(header: list[str], rows: list[list[Any]], outputs: torch.Tensor) -> list[str]:
    """Lines to print: how many inputs each class got, in class order, or the range of the output values."""
    if header[0] != "label":
        return [f"  {', '.join(header)}: mean {outputs.mean():.6g}, min {outputs.min():.6g}, max {outputs.max():.6g}"]
    counts = Counter((row[1], row[0]) for row in rows)
    width = max(len(name) for _, name in counts)
    return ["Predictions per class:"] + [f"  {name:<{width}}  {count}" for (_, name), count in sorted(counts.items())]


def write_output(output: Path, data: bytes) -> None:
    """The CSV into `output`: this process's standard output (`-`, `/dev/stdout` even when the shell sends it to a
    file) through it, in order with the lines printed; a pipe, a device or a descriptor (/dev, /proc) appended to,
    so that a file behind it is never replaced; a file replaced atomically (never half written), through a symbolic
    link into its target."""
    if str(output) == "-" or same_file(output, sys.stdout):
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    elif output.absolute().parts[1:2] in (("dev",), ("proc",)) or (output.exists() and not output.is_file()):
        with open(output, "ab") as f:  # a device or descriptor (/dev/stderr to a file): appending never truncates it
            f.write(data)
    else:
        atomic_write(output.resolve(), data)


def same_file(path: Path, stream: Any) -> bool:
    """Whether `path` is the file, pipe or terminal that `stream` writes to."""
    try:
        a, b = os.stat(path), os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def run_predict(args: argparse.Namespace) -> list[list[Any]]:
    output = check_args(args)
    trained = restore(args.resume, args.config, device=args.device, ema=args.ema)
    check_one_input(trained, "predict.py")
    batch_size = args.batch_size or trained.config["data_loader"]["args"].get("batch_size", 64)
    if args.config is None and inputs_record(trained.checkpoint):
        inputs, num_workers = Predictor(trained).files(args.paths), 0  # the checkpoint alone: no data needed
    else:  # other data (-c), or a checkpoint that does not record its inputs: from the data loader, rebuilt
        data = rebuilt_data(trained, training=False)
        source = data.source if isinstance(data, DeviceDataLoader) else data
        inputs, num_workers = make_inputs(source, args.paths), getattr(source, "num_workers", 0)
    check_not_an_input(output, [trained.path, *map(Path, args.paths), *getattr(inputs, "files", [])])
    names = class_names(trained.checkpoint)
    indices, outputs, skipped = run_model(trained, inputs, batch_size, num_workers, args.strict)
    if not indices:
        raise DataError(f"None of the {len(inputs)} inputs could be read (the reasons are above); nothing written.")
    header, rows = prediction_rows(outputs, names, is_classifier(trained.config, names), args.top_k)
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(
        [[*inputs.columns, *header], *([*inputs.keys[i], *row] for i, row in zip(indices, rows))])
    try:
        write_output(output, text.getvalue().encode())
    except OSError as e:
        raise ConfigError(f"Could not write --output '{output}': {e.strerror or e}. Free disk space, or give a file "
                          "in a folder you can write to.") from None
    print(f"{trained.path} ({trained.weights} weights): {len(rows)} predictions written to {output}"
          + (f"; {skipped} input(s) skipped, named above" if skipped else ""))
    print("\n".join(summary(header, rows, outputs)))
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    return report_errors(lambda: run_predict(args), log)


if __name__ == "__main__":
    gc.freeze()  # as train.py does: the imported modules stay out of every garbage collection
    sys.exit(main())
