"""Output locations, checked before any work starts: a command that would fail only when it writes its result
(a read-only folder, a folder where a file is expected, a file where a folder is expected) fails first, naming
the option and the path, and loses nothing. The one atomic write (`write_atomic`: a temporary name beside the
result, then a rename), and the clean-up of the temporaries a killed run left behind."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Callable, Iterable
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


def temporary_beside(path: Path, kind: str = "tmp") -> Path:
    """A fresh name beside `path`, `.NAME.KIND-PID-ID`: hidden, on the same file system (so a rename is atomic),
    and recognised by `remove_stale_temporaries` once its process is gone."""
    path = Path(path)
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def move_into_place(temporary: Path, path: Path) -> None:
    """Rename `temporary` (a file or a folder) to `path`. A folder already at `path` is moved aside first and
    removed after, so that at every moment `path` is the old result or the new one."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        old = temporary_beside(path, "old")
        os.replace(path, old)
        os.replace(temporary, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(temporary, path)


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Write `path` (a file, or a folder) all at once: `write` creates it at a temporary name beside it, which is
    then renamed into place (`move_into_place`). A kill or an error never leaves half a result at `path`; an error
    removes the temporary and is raised again (an OSError as a one-line `write_error`)."""
    path = Path(path)
    temporary = temporary_beside(path)
    try:
        write(temporary)
        move_into_place(temporary, path)
    except OSError as error:  # a full disk: name the file and say so
        _remove(temporary)
        raise write_error(path, error) from None
    except BaseException:
        _remove(temporary)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """`write_atomic` of a UTF-8 text file. A path that is not UTF-8 (a surrogate in Python) inside `text` is
    written as its escape "\\udcff", not refused."""
    data = text.encode("utf-8", "backslashreplace")
    write_atomic(path, lambda temporary: temporary.write_bytes(data))


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
