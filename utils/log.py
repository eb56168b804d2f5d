"""Logging to the console and to a file in the run folder, at the config's `verbosity`."""
from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

from utils.files import open_regular

LEVELS = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}


class _RunLog(logging.FileHandler):
    """The run's log file, appended to (a resumed run keeps one log), never through a link (open_regular). A line
    that cannot be written (a full disk) is left out quietly: the console has it, and the run's own error says
    what failed."""

    def _open(self):
        return open_regular(Path(self.baseFilename), self.mode)

    def handleError(self, record: logging.LogRecord) -> None:
        if not isinstance(sys.exc_info()[1], OSError):
            super().handleError(record)

    def close(self) -> None:
        with contextlib.suppress(OSError):  # what a full disk kept in the buffer is lost, as above
            super().close()


def setup_logging(verbosity: int = 1, log_file: Path | None = None) -> None:
    """Console handlers (errors to stderr) now; a file handler too once the run folder exists."""
    handlers: list[logging.Handler] = [_RunLog(log_file, mode="a")] if log_file is not None else []
    if handlers:
        handlers[0].setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
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
    for handler in [console, errors, *handlers]:
        handler._template = True
        root.addHandler(handler)
    for noisy in ("PIL", "matplotlib", "tensorboard", "onnxscript", "onnx_ir"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
