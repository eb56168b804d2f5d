"""Writing files that must never be left half written, nor be redirected: a run folder may come from someone else
(a copied or downloaded run), and a symbolic link planted in it must not make the template write elsewhere."""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import IO

from utils.errors import ConfigError

_TEMP_MARK = ".tmp-"
_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)  # not on Windows


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that `path` always holds either the old or the complete new content. The
    temporary file is created anew (never through a link) and renamed over `path`, which replaces a link there
    rather than writing into its target."""
    temp = path.with_name(f".{path.name}{_TEMP_MARK}{os.getpid()}")
    temp.unlink(missing_ok=True)  # left by a killed save of a process that had this pid
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NO_FOLLOW, 0o644)
        with open(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def remove_temp_files(folder: Path) -> None:
    """Delete half-written temporary files that a killed `atomic_write` left in `folder`."""
    for temp in folder.glob(f".*{_TEMP_MARK}*"):
        temp.unlink(missing_ok=True)


def open_regular(path: Path, mode: str = "a") -> IO:
    """`open(path, mode)` for a file the template keeps in a folder it may not own (a run's `.lock` and
    `train.log`): a symbolic link, a pipe or a device found at `path` is refused instead of being followed or
    blocked on. Created if missing."""
    def opener(name: str, flags: int) -> int:
        fd = os.open(name, flags | _NO_FOLLOW | getattr(os, "O_NONBLOCK", 0), 0o644)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise IsADirectoryError(name)
        return fd

    try:
        return open(path, mode, opener=opener)
    except OSError:
        refuse_link(path, f"remove '{path}' and try again")
        raise


def refuse_link(path: Path, fix: str, folder: bool = False) -> None:
    """Refuse a symbolic link at `path`, or anything but a regular file (a folder with `folder`), where the template
    writes in a folder that may come from elsewhere (a copied run folder): it never writes through a link or into a
    device there. `fix` says what to do instead."""
    path = Path(path)
    if path.is_symlink():
        what = f"a symbolic link (to '{os.readlink(path)}')"
    elif path.exists() and not (path.is_dir() if folder else path.is_file()):
        what = f"not a {'folder' if folder else 'regular file'}"
    else:
        return
    raise ConfigError(f"'{path}' is {what}. The template writes there itself and never through a link or into a "
                      f"device, so that a folder from elsewhere cannot make it write outside: {fix}.")
