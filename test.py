"""Evaluate a checkpoint on the test split (or the validation split) of the data it was trained with:

    python test.py --resume saved/models/<name>/<run_id>/model_best.pth [--split val] [-c other_data.yaml]

Prints the loss and metrics and, for a classifier, the per-class report and confusion matrix; writes
report.json, confusion_matrix.png and mistakes.png (tools/report.py, docs/evaluation.md) into
`report-<checkpoint>-<split>/` next to the checkpoint, or into --output-dir.
"""
from __future__ import annotations

import argparse
import gc
import logging
import sys
from pathlib import Path

from data_loader.checks import sample_names
from tools.report import check_output_dir, format_report, write_report
from tools.restore import add_ema_argument, eval_loader, evaluator, restore
from trainer.checkpoint import class_names
from trainer.confusion import ConfusionCollector
from trainer.preflight import check_eval_batch
from utils.errors import report_errors
from utils.log import setup_logging

log = logging.getLogger("test")

MISTAKES = 16  # the most confidently wrong samples kept for the report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Evaluate a trained checkpoint.")
    parser.add_argument("-r", "--resume", required=True, help="checkpoint file (or run folder: its model_best.pth)")
    parser.add_argument("-c", "--config", help="config whose data_loader section replaces the checkpoint's")
    parser.add_argument("-d", "--device", help="auto | cpu | cuda | cuda:N | mps (default: the config's device)")
    parser.add_argument("--split", choices=("test", "val"), default="test", help="which data to evaluate on")
    parser.add_argument("-o", "--output-dir", help="folder of the report files (default: report-<checkpoint>-<split> "
                        "next to the checkpoint)")
    parser.add_argument("--no-report", action="store_true", help="print the figures only, write no files")
    add_ema_argument(parser)
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="e.g. data_loader.args.batch_size=256")
    return parser.parse_intermixed_args(argv)


def run_test(args: argparse.Namespace) -> dict[str, float]:
    trained = restore(args.resume, args.config, args.overrides, args.device, ema=args.ema)
    folder = Path(args.output_dir) if args.output_dir else \
        trained.path.parent / f"report-{trained.path.stem}-{args.split}"
    if not args.no_report:
        check_output_dir(folder, chosen=bool(args.output_dir))
    loader = eval_loader(trained, args.split)
    collector = ConfusionCollector(trained.device, mistakes=MISTAKES)
    trainer = evaluator(trained)
    if args.config or any(item.startswith("data_loader") for item in args.overrides):
        check_eval_batch(trainer, loader, f"{args.split} data")
    result = trainer.evaluate(loader, desc=args.split, observe=collector)
    loop = trained.checkpoint["loop"]
    epoch = loop["epoch"] - 1 if loop["batch_idx"] == 0 else loop["epoch"]
    # A classifier's report counts the samples evaluated: the others were bad and skipped (skip_bad).
    skipped = len(loader.sampler) - collector.seen if not collector.skipped else 0
    print(f"{trained.path} (epoch {epoch}, step {loop['global_step']}, {trained.weights} weights) on the "
          f"{args.split} split: {len(loader.sampler)} samples" + (f", {skipped} of them bad and skipped (skip_bad)"
                                                                    if skipped else ""))
    width = max(len(name) for name in result)
    for name, value in result.items():
        print(f"  {name:<{width}}  {value:.6f}")
    report = collector.result(class_names(trained.checkpoint))
    names = sample_names(loader)
    if report is not None and names is not None and len(names) == collector.seen:  # none was skipped: in step
        for mistake in report.mistakes:
            mistake.sample = names[mistake.index]
    print(f"\n{format_report(report)}" if report is not None
          else f"No classification report: {collector.skipped}.")
    if not args.no_report:
        summary = {"checkpoint": str(trained.path), "epoch": epoch, "step": loop["global_step"],
                   "weights": trained.weights, "split": args.split, "samples": len(loader.sampler), "skipped": skipped,
                   "metrics": result}
        written = write_report(folder, summary, report)
        print(f"\nReport: {', '.join(str(path) for path in written)}")
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
