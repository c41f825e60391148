"""Input paths checked before they are opened: a readable regular file, or one line saying what the
path is instead. Opening a FIFO or a device would block or read without end."""

from __future__ import annotations

import stat
from pathlib import Path

from hyinf.errors import InputError


def check_readable_file(path: Path, what: str) -> None:
    """Refuse `path` unless it is a regular file this process can read; `what` names it ("image", ...)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise InputError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise InputError(f"cannot read {what} {path}: {e.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"{what} {path} is a directory; give a file")
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{what} {path} is not a regular file (a pipe or device); save it to a file first")
    try:
        with path.open("rb"):
            pass
    except OSError as e:
        raise InputError(f"cannot read {what} {path}: {e.strerror}") from None
