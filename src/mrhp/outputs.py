"""Output locations, checked before any work starts: a command that would fail only when it writes its result
(a read-only folder, a folder where a file is expected, a file where a folder is expected) fails first, naming
the option and the path, and loses nothing. The one atomic write (`write_atomic`: a temporary name beside the
result, then a rename), and the clean-up of the temporaries a killed run left behind."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
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
    removes the temporary and is raised again."""
    path = Path(path)
    temporary = temporary_beside(path)
    try:
        write(temporary)
        move_into_place(temporary, path)
    except BaseException:
        _remove(temporary)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """`write_atomic` of a UTF-8 text file."""
    write_atomic(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


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
