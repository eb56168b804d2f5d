"""The errors the template reports to the user as one clear paragraph instead of a traceback.

Each carries the exit code that `train.py`, `test.py` and `export.py` return, so scripts and schedulers can tell
a bad input (2) from a failure during training or export (1).
"""
from __future__ import annotations

import difflib
import http.client
import logging
import os
import re
import select
import signal
import socket
import sys
import urllib.error
from pathlib import Path
from typing import Any, Callable


class TemplateError(Exception):
    """Base class: the message is written for the user and says what to fix."""

    exit_code = 2

    def __init__(self, message: str = ""):
        # A DataLoader worker process re-raises an error as `type(text)` with its traceback in the text;
        # keep the message alone, so that the user still reads one paragraph.
        if "\nOriginal Traceback" in message:
            message = message.rstrip().rsplit(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(message)


class ConfigError(TemplateError):
    """A config file, a key, a `type` or its `args`, or a command-line flag is wrong."""


class DataError(TemplateError):
    """A data folder, file, image or label cannot be used."""


class CheckpointError(TemplateError):
    """A checkpoint cannot be read, written or does not fit the config."""


class TrainingError(TemplateError):
    """Training cannot go on (a non-finite loss, a failed save); what was saved before stays intact."""

    exit_code = 1


class PeerFailed(TemplateError):
    """Under DDP, another process failed (in work only rank 0 does, or in building the run); its own message
    says what to fix."""

    def __init__(self, exit_code: int, rank: int = 0):
        super().__init__(f"Stopped because rank {rank} failed; its message comes first in the output.")
        self.exit_code = exit_code


class ExportError(TemplateError):
    """A model could not be exported, or the exported file does not reproduce the model's outputs."""

    exit_code = 1


def reason(e: BaseException) -> str:
    """The first line of an exception's message, for a one-paragraph error: without the C++ source location that
    torch's native errors start with, nor a trailing colon that introduced the lines left out, nor a closing full
    stop (the sentence around it has its own); the exception's type name when the message is empty."""
    lines = str(e).strip().splitlines()
    first = re.sub(r"^([\w()]+, \S+:\d+, |\[\S+:\d+\] )", "", lines[0]).rstrip(": ").rstrip(".") if lines else ""
    return first or type(e).__name__


# What a failed download raises (urllib, as torch.hub and torchvision's datasets use, and sockets).
NETWORK_ERRORS = (urllib.error.URLError, ConnectionError, socket.timeout, http.client.HTTPException)


def network_error(e: BaseException) -> TemplateError:
    """A failed download as one paragraph, naming the address when the failing code had one."""
    tb, url = e.__traceback__, None
    while tb is not None:  # the innermost frame that held a `url` (torch.hub's download_url_to_file does)
        url = tb.tb_frame.f_locals.get("url") if isinstance(tb.tb_frame.f_locals.get("url"), str) else url
        tb = tb.tb_next
    what = f" of {url}" if url else ""
    return TemplateError(f"A download{what} failed ({reason(e)}): this machine seems to be offline. The run needed "
                         "the internet for pretrained weights (a model's constructor, its weights) or a data "
                         "set (download: true). Run once on a machine with internet access and copy the files here "
                         "(pretrained weights go to the torch hub cache, ~/.cache/torch/hub/checkpoints/; data sets "
                         "to their data_dir), or point the config at local copies.")


def report_errors(work: Callable[[], Any], log: logging.Logger, prefix: Callable[[], str] = str) -> int:
    """Run an entry point's `work`: 0 when it succeeds, or a TemplateError's exit code after logging its message
    (one paragraph, no traceback, after `prefix()`: train.py's `[rank N] `); a failed download is reported the
    same way."""
    try:
        work()
    except NETWORK_ERRORS as e:
        if isinstance(e, BrokenPipeError) and stdout_is_closed():
            return 128 + signal.SIGPIPE  # the reader of the output stopped (`| head`): end quietly, as Unix tools do
        log.error("%s%s", prefix(), network_error(e))
        return TemplateError.exit_code
    except TemplateError as e:
        log.error("%s%s", prefix(), e)
        return e.exit_code
    return 0


def stdout_is_closed() -> bool:
    """Whether standard output is a pipe whose reader has gone; if so, what is left to print goes nowhere, so that
    Python's own flush at exit does not fail again."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        closed = any(event & select.POLLERR for _, event in poller.poll(0))
    except (AttributeError, ValueError, OSError):  # no poll (Windows), or no real stdout (a notebook)
        return False
    if closed:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return closed


class Source(str):
    """Where a config came from (a file name, used as any str) and the keys the command line set in it, so that an
    error caused by `key=value` on the command line blames the command line, not the file."""

    overrides: dict[str, str]  # dotted key -> the command-line item that set it

    def __new__(cls, name: str, overrides: dict[str, str] | None = None) -> Source:
        source = super().__new__(cls, name)
        source.overrides = dict(overrides or {})
        return source

    def of(self, key: str) -> str:
        """Who set `key` (`trainer.epochs`, `metrics[0]`): the command line when it set the key or a section
        above it, the file with the command line's items when it set keys below it, else the file."""
        key = key.replace("[", ".").replace("]", "")
        above = [item for k, item in self.overrides.items() if key == k or key.startswith(k + ".")]
        if above:
            return f"command line ({above[-1]})"
        below = [item for k, item in self.overrides.items() if k.startswith(key + ".")]
        return f"{self} with the command line's {', '.join(below)}" if below else str(self)


def blame(source: str, key: str) -> str:
    """`source.of(key)` for a config's Source; any other source (a plain description) as it is."""
    return source.of(key) if isinstance(source, Source) else source


def not_utf8(path: Path, data: bytes, e: UnicodeDecodeError) -> str:
    """"'<path>' is not UTF-8 text: line N holds the byte 0x..", for a file whose `data` failed to decode."""
    line = data[:e.start].count(b"\n") + 1
    return f"'{path}' is not UTF-8 text: line {line} holds the byte 0x{data[e.start]:02x}"


def printable(text: str | Path) -> str:
    """Text (a path, a command-line item) that prints as one line of UTF-8 whatever it holds: a control character
    or a byte of a name in another encoding is shown as its escape (\\n, \\udce9)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in str(text))


def plural(count: int, noun: str) -> str:
    """'1 channel', '3 channels'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def suggest(name: str, choices: list[str], prefix: str = "") -> str:
    """' Did you mean ...?' for the close matches of `name` among `choices` (empty if none), each written after
    `prefix` (the dotted path of a config key's section, so that the suggestion can be typed as it is)."""
    close = difflib.get_close_matches(name, choices, n=3)
    return f" Did you mean {' or '.join(repr(prefix + c) for c in close)}?" if close else ""
