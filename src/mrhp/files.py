"""Opening the files a dataset or a request names (images, .npy and .pth features): only regular files.

A FIFO would block the reader forever, and a link to /dev/zero would be read until memory runs out. The file is
opened without blocking and checked on the open descriptor (no window between the check and the read)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """`open(path, "rb")` for a regular file (symlinks followed); an OSError "not a regular file" otherwise."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO, device or socket"
            raise OSError(errno.EINVAL, f"not a regular file ({kind})", str(path))
        os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


def read_regular(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a regular file (`open_regular`)."""
    with open_regular(Path(path)) as handle:
        return handle.read()
