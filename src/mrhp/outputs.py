"""Output locations, checked before any work starts: a command that would fail only when it writes its result
(a read-only folder, a folder where a file is expected, a file where a folder is expected) fails first, naming
the option and the path, and loses nothing. Also the clean-up of temporary folders a killed run left behind."""

from __future__ import annotations

import os
import shutil
import tempfile
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
