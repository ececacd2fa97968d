"""The one atomic write (mrhp.outputs.write_atomic): the old result or the new one, never half, nothing left over."""

import errno
from pathlib import Path

import pytest

from mrhp.errors import MrhpError
from mrhp.outputs import write_atomic, write_text_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("old\n")

    def half_then_fail(temporary: Path) -> None:
        temporary.write_text("ha")  # a wrong helper would rename this half-written file into place
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(MrhpError, match=r"metrics.jsonl: cannot write \(no space left on device\); nothing was written"):
        write_atomic(path, half_then_fail)
    assert path.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]
    write_text_atomic(path, "new\n")
    assert path.read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]


def test_a_folder_result_replaces_the_old_folder_whole(tmp_path: Path):
    out = tmp_path / "prepared"
    out.mkdir()
    (out / "stale.txt").write_text("from the old run")

    def build(temporary: Path) -> None:
        temporary.mkdir()
        (temporary / "dataset.json").write_text("{}")

    write_atomic(out, build)
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json"]  # no file of the old folder survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]  # neither the temporary nor the old folder
