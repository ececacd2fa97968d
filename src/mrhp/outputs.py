"""Output locations, checked before any work starts: a command that would fail only when it writes its result
(a read-only folder, a folder where a file is expected, a file where a folder is expected) fails first, naming
the option and the path, and loses nothing. Also the clean-up of temporary folders a killed run left behind."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

from mrhp.errors import MrhpError


def _existing_parent(path: Path, option: str) -> Path:
    """The nearest folder above `path` that exists (what will hold the new folders); an error when that is a file."""
    parent = path.parent
    while not parent.exists():
        if parent == parent.parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise MrhpError(f"{option} {path}: {parent} is a file, not a folder")
    return parent


def _probe(folder: Path, option: str, path: Path) -> None:
    """Create and delete a file in `folder`: the only check that also holds for root and read-only mounts."""
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".mrhp-probe-"):
            pass
    except OSError as error:
        raise MrhpError(f"{option} {path}: cannot write in {folder} ({error.strerror or error})") from None


def check_output_file(path: Path, option: str) -> None:
    """`path` can be written as a file: it is not a folder, and its folder exists (or can be made) and is writable."""
    path = Path(path)
    if path.is_dir():
        raise MrhpError(f"{option} {path}: is a folder; give a file path")
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = None
    # A FIFO would block the writer forever, a device would be replaced by a regular file (or swallow the result).
    if mode is not None and not stat.S_ISREG(mode):
        raise MrhpError(f"{option} {path}: is not a regular file (a FIFO, device or socket); give a file path")
    parent = path.parent if path.parent.is_dir() else _existing_parent(path, option)
    _probe(parent, option, path)


def check_output_dir(path: Path, option: str) -> None:
    """`path` can be used as an output folder: it is a folder (or does not exist yet) and is writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MrhpError(f"{option} {path}: is a file; give a folder")
    _probe(path if path.is_dir() else _existing_parent(path, option), option, path)


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of what `path` names after following symlinks; None when it does not exist."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return info.st_dev, info.st_ino


def _within(inner: Path, outer: Path) -> bool:
    """`inner` is `outer` or lies below it, after resolving symlinks."""
    try:
        inner, outer = inner.resolve(), outer.resolve()
    except (OSError, RuntimeError):
        return False
    return inner == outer or outer in inner.parents


def check_not_an_input(output: Path, option: str, inputs: Iterable[Path], *, replaces_folder: bool = False) -> None:
    """`output` is none of the command's inputs: not the same file (also through a symlink or hard link), not an
    existing file inside an input folder, and, for a command that replaces its output folder (`replaces_folder`),
    no folder that holds an input. Writing there would destroy what the command reads."""
    output = Path(output)
    target = _identity(output)
    for given in inputs:
        given = Path(given)
        if _identity(given) is None:
            continue
        if target is not None and target == _identity(given):
            raise MrhpError(f"{option} {output}: is the input {given}; writing there would overwrite the input")
        if target is not None and given.is_dir() and not output.is_dir() and _within(output, given):
            raise MrhpError(f"{option} {output}: is a file inside the input folder {given}; writing there would "
                            "destroy it")
        if replaces_folder and _within(given, output):
            raise MrhpError(f"{option} {output}: holds the input {given}; replacing the folder would delete it")


def write_atomically(path: Path, data: str | bytes) -> None:
    """Write `data` to `path` through a temporary file beside it, renamed into place: a full disk or a kill leaves
    the old file (or none), never a truncated or 0-byte one. A write error names the file (and "no space")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with temporary.open("wb") as out:
            # A path that is not UTF-8 (a surrogate in Python) is written as its escape "\udcff", not refused.
            out.write(data.encode("utf-8", "backslashreplace") if isinstance(data, str) else data)
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise write_error(path, error) from None


def write_error(path: Path, error: Exception) -> MrhpError:
    """The one-line error of a failed write of `path` (an OSError, or a library's error that wraps one, such as
    safetensors' "No space left on device (os error 28)"): a full disk is said in words."""
    full = getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(error)
    reason = "no space left on device" if full else (getattr(error, "strerror", None) or str(error))
    return MrhpError(f"{path}: cannot write ({reason}); nothing was written")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the `.NAME.tmp-PID-*` and `.NAME.old-PID-*` folders beside `path` whose process is gone (a run killed
    before it could rename or delete them); those of a running process are left alone. Returns what was removed."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for kind in ("tmp", "old"):
        for candidate in path.parent.glob(f".{path.name}.{kind}-*-*"):
            pid = candidate.name[len(f".{path.name}.{kind}-"):].split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)) and candidate.is_dir():
                shutil.rmtree(candidate, ignore_errors=True)
                removed.append(candidate)
    return removed
