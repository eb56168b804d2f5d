"""Logging to the console and to a file in the run folder, at the config's `verbosity`."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

LEVELS = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}


def setup_logging(verbosity: int = 1, log_file: Path | None = None) -> None:
    """Console handlers (errors to stderr) now; a file handler (appending, so a resumed run keeps one log) once the run folder exists."""
    root = logging.getLogger()
    root.setLevel(LEVELS.get(verbosity, logging.DEBUG))
    for handler in list(root.handlers):
        if getattr(handler, "_template", False):
            root.removeHandler(handler)
            handler.close()
    console = logging.StreamHandler(sys.stdout)
    console.addFilter(lambda record: record.levelno < logging.ERROR)
    console.setFormatter(logging.Formatter("%(message)s"))
    errors = logging.StreamHandler(sys.stderr)
    errors.setLevel(logging.ERROR)
    errors.setFormatter(logging.Formatter("error: %(message)s"))
    handlers: list[logging.Handler] = [console, errors]
    if log_file is not None:
        to_file = logging.FileHandler(log_file, mode="a")
        to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handlers.append(to_file)
    for handler in handlers:
        handler._template = True
        root.addHandler(handler)
    for noisy in ("PIL", "matplotlib", "tensorboard", "onnxscript", "onnx_ir"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
