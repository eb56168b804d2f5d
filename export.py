"""Export a trained checkpoint to a file that runs without this project's code, and check it on the spot:

    python export.py --resume saved/models/<name>/<run_id>/model_best.pth --format torchscript|onnx|exported

The model is rebuilt from the checkpoint's config and weights, in eval mode, and written as TorchScript
(`torch.jit.load`), ONNX (onnxruntime) or a `torch.export` program (`torch.export.load(...).module()`), each
with a dynamic batch dimension. The file is then loaded back and run on a batch and on a single sample (random
inputs of the form the checkpoint records, so that no data is needed; a test batch with -c); outputs that differ
from the PyTorch model's beyond the tolerance fail the export. `--with-preprocessing` bakes the evaluation
preprocessing in (tools/preprocessing.py): the file then takes images as read, of any size.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import importlib.util
import json
import logging
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data_loader.transforms import build_transforms
from tools.preprocessing import CenterCrop, Prepared, Resize, baked
from tools.restore import Restored, Served, add_ema_argument, check_one_input, check_one_output, eval_loader, restore
from trainer.checkpoint import class_names, inputs_record
from utils.errors import ConfigError, ExportError, reason, report_errors, suggest
from utils.files import atomic_write
from utils.log import setup_logging
from utils.run import check_not_an_input, check_output_file

log = logging.getLogger("export")

WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EIO)
SUFFIXES = {"torchscript": ".ts.pt", "onnx": ".onnx", "exported": ".pt2"}
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")  # the exporter needs onnx and onnxscript, the check onnxruntime
# Exporters reorder and fuse float32 operations, which moves outputs by about 1e-6 of their scale; a wrong
# weight or a missed eval-mode layer moves them by far more than this.
RELATIVE_TOLERANCE = 1e-4
# A single ONNX (protobuf) file holds at most 2 GiB; above 1 GiB of weights they go to a `.data` file next to it.
ONNX_INLINE_LIMIT = 2**30


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Export a trained checkpoint and check the file against it.")
    parser.add_argument("-r", "--resume", required=True, help="checkpoint file (or run folder: its model_best.pth)")
    parser.add_argument("-f", "--format", required=True, choices=SUFFIXES, help="file format to write")
    parser.add_argument("-o", "--output", help="file to write (default: next to the checkpoint, e.g. "
                                               "model_best.ts.pt, model_best.onnx, model_best.pt2)")
    parser.add_argument("-c", "--config", help="config whose data_loader section replaces the checkpoint's: the "
                                               "check runs on its test batch (default: random inputs of the form "
                                               "the checkpoint records)")
    parser.add_argument("-d", "--device", help="auto | cpu | cuda | cuda:N | mps (default: the config's device)")
    parser.add_argument("-m", "--module", help="export this submodule of the model (e.g. a GAN's generator), fed the "
                                               "model's example_input(module)")
    parser.add_argument("-p", "--with-preprocessing", action="store_true", help="bake the checkpoint's "
                        "eval_transform into the file, which then takes uint8 images as read, of any size "
                        "(tools/preprocessing.py)")
    add_ema_argument(parser)
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="as test.py takes them, e.g. "
                        "device=cpu")
    return parser.parse_intermixed_args(argv)


@contextlib.contextmanager
def quiet_jit_deprecation() -> Iterator[None]:
    """torch.jit warns that it is deprecated at every call; run_export says so once, in one line."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        yield


def export(model: nn.Module, example: torch.Tensor, fmt: str, path: Path, any_size: bool) -> None:
    """Write `model` (in eval mode) to `path` in format `fmt`, traced on `example` with a dynamic batch size, and
    with `any_size` a dynamic image height and width where the exporter can keep them so."""
    batch = {0: torch.export.Dim("batch"), **({2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO} if any_size else {})}
    if fmt == "torchscript":
        with quiet_jit_deprecation():
            torch.jit.trace(model, example).save(str(path))
    elif fmt == "exported":
        torch.export.save(torch.export.export(model, (example,), dynamic_shapes=(batch,)), path)
    else:
        weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        torch.onnx.export(model, (example,), path, input_names=["input"], output_names=["output"],
                          dynamic_shapes=(batch,), external_data=weight_bytes > ONNX_INLINE_LIMIT, verbose=False)


def load_exported(fmt: str, path: Path, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """The exported file as a function of one input tensor, loaded the way a user of the file would load it."""
    if fmt == "torchscript":
        with quiet_jit_deprecation():
            return torch.jit.load(str(path), map_location=device)
    if fmt == "exported":
        return torch.export.load(path).module()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"input": x.cpu().numpy()})[0])


def check_onnx_packages() -> None:
    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(f"--format onnx needs the optional packages {', '.join(ONNX_PACKAGES)}, and "
                          f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed. Install them "
                          f"with: pip install {' '.join(ONNX_PACKAGES)}  (requirements-dev.txt lists them), or "
                          "choose --format exported or torchscript.")


def max_difference(run: Callable[[torch.Tensor], torch.Tensor], model: nn.Module, inputs: torch.Tensor) -> float:
    """Largest absolute difference between the exported file's and the model's outputs on `inputs`."""
    with torch.no_grad():
        expected, actual = model(inputs), run(inputs)
    return (actual.to(expected.device, expected.dtype) - expected).abs().max().item()


def recorded_input(trained: Restored) -> torch.Tensor | None:
    """Two random inputs of the form the checkpoint records for its model (data_loader/base.py `inputs`), so that
    export needs no data; None for a checkpoint that records none."""
    record = inputs_record(trained.checkpoint)
    if not record.get("shape") or not isinstance(getattr(torch, str(record.get("dtype")), None), torch.dtype):
        return None
    dtype = getattr(torch, record["dtype"])
    generator = torch.Generator().manual_seed(0)
    if dtype.is_floating_point:
        return torch.randn(2, *record["shape"], generator=generator).to(dtype)
    return torch.zeros(2, *record["shape"], dtype=dtype)


def other_size(model: nn.Module, inputs: torch.Tensor, swap: bool = False) -> torch.Tensor | None:
    """One image of another size (16 pixels more each way; with `swap`, height and width swapped too, for another
    aspect ratio) when the inputs are images (N, C, H, W) and the model takes that size too; None when it takes
    one size only, or the inputs are not images."""
    if inputs.dim() != 4:
        return None
    larger = torch.nn.functional.pad(inputs[:1], (8, 8, 8, 8))
    larger = larger.transpose(-2, -1).contiguous() if swap else larger
    try:
        with torch.no_grad():
            model(larger)
    except Exception:  # RuntimeError, ValueError, or an assert on the size (torch._assert): one size only
        return None
    return larger


def tolerance_of(output: torch.Tensor) -> float:
    """How far an exported file's outputs may be from the model's: RELATIVE_TOLERANCE of their scale, at least 1."""
    return RELATIVE_TOLERANCE * max(1.0, output.abs().max().item())


def takes_other_size(run: Callable[[torch.Tensor], torch.Tensor], model: nn.Module, larger: torch.Tensor) -> bool:
    """Whether the exported file gives the model's outputs for an image of another size too."""
    try:
        with torch.no_grad():
            tolerance = tolerance_of(model(larger))
        return max_difference(run, model, larger) <= tolerance
    except Exception:  # the exporter kept the traced size: the file refuses this one
        return False


def with_preprocessing(trained: Restored, model: nn.Module) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """For --with-preprocessing: the model behind torchvision's eval_transform (to check against), the model
    behind the same steps baked (to export), and two random uint8 images (larger than the prepared ones, when
    the steps resize or crop)."""
    record = inputs_record(trained.checkpoint)
    if not record.get("image_mode") or not record.get("eval_transform") or len(record.get("shape") or []) != 3:
        raise ConfigError(f"--with-preprocessing bakes the eval_transform of an image model into the file, and "
                          f"'{trained.path}' records none (a model of other inputs, a loader with transform "
                          "objects, or a checkpoint of an older version). Export without it.")
    try:
        steps = baked(record["eval_transform"])
    except ValueError as e:
        raise ConfigError(f"--with-preprocessing: {e}. Export without it, and prepare the inputs as the JSON "
                          "beside the file says.") from None
    channels, height, width = record["shape"]
    larger = any(isinstance(step, (Resize, CenterCrop)) for step in steps)  # they take larger images
    size = (height + 21, width + 37) if larger else (height, width)
    images = torch.randint(0, 256, (2, channels, *size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    reference = Prepared(build_transforms(record["eval_transform"], "eval_transform"), model)
    return reference.eval(), Prepared(steps, model).eval(), images.to(trained.device)


def metadata(trained: Restored, fmt: str, arch: str, inputs: torch.Tensor, any_size: bool,
             preprocessed: bool) -> dict[str, Any]:
    """What a user of the exported file needs besides it (the JSON beside it): the class names, and how an input
    is prepared (the checkpoint's record: image_mode, eval_transform; a table's columns and statistics; with
    `preprocessed`, only how images are read)."""
    state = trained.checkpoint.get("data_loader") or {}
    shape = [None, *inputs.shape[1:]] if not any_size else [None, inputs.shape[1], None, None]
    table = {key: state[key].tolist() if isinstance(state[key], torch.Tensor) else state[key]
             for key in ("features", "mean", "std") if key in state}
    return {"format": fmt, "model": arch, "checkpoint": str(trained.path), "weights": trained.weights,
            "input": {"name": "input", "shape": shape, "dtype": str(inputs.dtype).removeprefix("torch.")},
            "output": "output", "classes": class_names(trained.checkpoint),
            "preprocessing": {"baked": True, "image_mode": inputs_record(trained.checkpoint).get("image_mode")}
            if preprocessed else {**{k: v for k, v in inputs_record(trained.checkpoint).items() if k in ("image_mode",
                                                                                            "eval_transform")},
                                  **table}}


def served_part(trained: Restored, module: str | None, data: bool) -> tuple[nn.Module, str, torch.Tensor, bool]:
    """What to export (the model, or its submodule `module`, as served: its `predict` where it has one), its name,
    and the inputs to trace and check it on: the model's `example_input(module)` where it has one (a GAN's noise),
    else, unless `data` asks for a test batch, random inputs of the recorded form, else a test batch; and whether
    the inputs are data (images may then come in other sizes), not a model's example input (a GAN's noise)."""
    example = getattr(trained.model, "example_input", None)
    arch = trained.config["arch"]["type"]
    if module is None:
        check_one_input(trained, "export.py")
        part = trained.model
    else:
        try:
            part = trained.model.get_submodule(module)
        except AttributeError:
            known = [name for name, _ in trained.model.named_modules() if name and "." not in name]
            raise ConfigError(f"--module {module}: {arch} has no submodule of that name.{suggest(module, known)} Its "
                              f"submodules: {', '.join(known)}.") from None
        if not callable(example):
            raise ConfigError(f"--module {module}: export.py needs an example input for that submodule. Give {arch} "
                              "an example_input(module) method that returns one (docs/export.md).")
        arch = f"{arch}.{module}"
    inputs = example(module or "") if callable(example) else None if data else recorded_input(trained)
    if inputs is None:
        inputs = next(iter(eval_loader(trained, "test")))[0]
    return Served(part).eval(), arch, inputs.to(trained.device), not callable(example)


def remove_exported(path: Path, fmt: str) -> None:
    """The file that failed its check, with an ONNX file's external weights, if any."""
    path.unlink(missing_ok=True)
    if fmt == "onnx":
        path.with_name(path.name + ".data").unlink(missing_ok=True)


def run_export(args: argparse.Namespace) -> float:
    if args.with_preprocessing and args.format != "exported":
        raise ConfigError(f"--with-preprocessing needs --format exported: {args.format} cannot keep the size "
                          "arithmetic that lets the file take images of any size.")
    if args.format == "onnx":
        check_onnx_packages()
    trained = restore(args.resume, args.config, args.overrides, device=args.device, ema=args.ema)
    model, arch, inputs, of_data = served_part(trained, args.module, data=args.config is not None)
    exported = model
    if args.with_preprocessing:
        (model, exported, inputs), of_data = with_preprocessing(trained, model), True
    try:
        with torch.no_grad():
            reference = model(inputs)
    except (RuntimeError, ValueError) as e:
        if args.config is None or isinstance(e, torch.OutOfMemoryError):
            raise
        raise ConfigError(f"A test batch (inputs {tuple(inputs.shape)}) does not go through the trained model: "
                          f"{reason(e)}. The data must have the form of the training data (-c replaces only the "
                          "data_loader section).") from None
    check_one_output(reference, arch, "export.py")
    path = Path(args.output) if args.output else trained.path.with_name(trained.path.stem + SUFFIXES[args.format])
    check_output_file(path, chosen=args.output is not None)
    if args.output is None and args.format == "onnx":  # the weights of a large model go into a file beside it
        check_output_file(path.with_name(path.name + ".data"), chosen=False)
    described = path.with_name(path.name + ".json")  # the class names and preprocessing, beside the file
    check_output_file(described, chosen=False)
    for output in (path, described):
        check_not_an_input(output, [trained.path, *([Path(args.config)] if args.config else [])])
    existed = path.exists()
    try:
        path.open("ab").close()  # can it be written? (the exporters' own errors would not say)
    except OSError as e:
        raise ConfigError(f"Cannot write --output '{path}': {e.strerror or reason(e)}. Give a file in a folder you "
                          "can write to.") from None
    if args.format == "torchscript":
        log.info("Note: PyTorch deprecates TorchScript (torch.jit) in favour of torch.export (--format exported).")
    larger = other_size(model, inputs, swap=args.with_preprocessing) if of_data else None
    try:
        export(exported, inputs, args.format, path, any_size=larger is not None)
    except Exception as e:  # the exporters raise many types; the first line says what could not be exported
        if not existed:
            path.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in WRITE_ERRORS:  # a full disk, say: not the model's fault
            raise ConfigError(f"Could not write '{path}': {e.strerror}. Free disk space, or give --output in a "
                              "folder you can write to.") from None
        raise ExportError(f"Could not export '{arch}' from '{trained.path}' as {args.format}: {type(e).__name__}: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else 'no message'}. Models whose "
                          "Python code branches on tensor values or shapes may export in another --format.") from None
    tolerance = tolerance_of(reference)
    try:
        run = load_exported(args.format, path, trained.device)
        differences = [max_difference(run, model, x) for x in (inputs, inputs[:1])]
    except Exception as e:  # onnxruntime and the loaders raise many types; the first line says what failed
        remove_exported(path, args.format)
        raise ExportError(f"The exported {args.format} file does not run on the check's batch of {len(inputs)} or on "
                          f"one sample ({type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else 'no message'}), "
                          f"so '{path}' was removed. A model whose code turns the batch size into a number (e.g. "
                          "x.view(len(x), ...)) is exported for that size only: write x.view(-1, ...) or x.flatten(1) "
                          "instead, or try another --format.") from None
    difference = torch.tensor(differences).max().item()  # NaN if either is NaN
    any_size = larger is not None and takes_other_size(run, model, larger)
    if larger is not None and not any_size:
        log.info("The exported file takes images of %s pixels only (the exporter fixed the size the model was "
                 "traced with).", "x".join(map(str, inputs.shape[2:])))
    log.info("Wrote %s (%s, %s, %s weights). Max abs difference to the PyTorch model on a batch of %d and on "
             "one sample: %.3g (tolerance %.3g)%s.", path, args.format, arch, trained.weights, len(inputs), difference,
             tolerance, "; it takes other image sizes (checked on one 16 pixels larger each way"
             f"{', height and width swapped' if args.with_preprocessing else ''})" if any_size else "")
    if not difference <= tolerance:  # also catches NaN
        remove_exported(path, args.format)
        raise ExportError(f"The exported {args.format} file's outputs differ from the PyTorch model's by "
                          f"{difference:.3g}, more than the tolerance {tolerance:.3g}, so '{path}' was removed. The "
                          "model probably does something the exporter does not capture (e.g. Python code that "
                          "depends on the input's values); try another --format.")
    if args.with_preprocessing and not any_size:
        remove_exported(path, args.format)
        raise ExportError(f"The file with the preprocessing baked in does not take an image of another shape (the "
                          f"model, a step of its eval_transform or the exporter fixes the size), so '{path}' was "
                          "removed. Export without --with-preprocessing, and prepare the inputs as the JSON beside "
                          "the file says.")
    try:
        atomic_write(described, (json.dumps(metadata(trained, args.format, arch, inputs, any_size,
                                                  args.with_preprocessing), indent=1) + "\n").encode())
    except OSError as e:
        raise ConfigError(f"Could not write '{described}': {e.strerror or e}. Free disk space, or give --output in "
                          "a folder you can write to.") from None
    log.info("Wrote %s: the class names and how an input is prepared.", described)
    return difference


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    return report_errors(lambda: run_export(args), log)


if __name__ == "__main__":
    gc.freeze()  # as train.py does: the imported modules stay out of every garbage collection
    sys.exit(main())
