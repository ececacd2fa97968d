"""The bad-input matrix (issue 13): Bad files that are neither a dataset, a request nor a checkpoint: `mrhp compare`'s
per-product files, image and feature files. Shared values and `cli_error` are in support.py; every case must end in a
documented answer: for the command line, exit status 2 and one `mrhp CMD: error: ...` line naming the file, line and
field (or option) at fault, no traceback, and nothing written or lost; for the service, the documented status with a
`{"message", "detail"}` JSON body naming the field, never a 5xx. A wrong implementation (a crash, a silent success, an
error that names nothing) fails the case."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support import (
    cli_error,
)

# ---- compare -----------------------------------------------------------------------------------------------------


def test_compare_refuses_a_file_counted_twice_and_bad_files(tmp_path: Path, capsys):
    rows = [{"product_id": f"p{k}", "split": "test", "map": 0.5, "ndcg@3": 0.5, "ndcg@5": 0.5} for k in range(3)]
    good = tmp_path / "a.jsonl"
    good.write_text("".join(json.dumps(row) + "\n" for row in rows))
    other = tmp_path / "b.jsonl"
    other.write_text("".join(json.dumps(row) + "\n" for row in rows))
    cli_error(capsys, ["compare", str(good), str(good), str(other)], "a.jsonl", "given twice")
    cli_error(capsys, ["compare", str(good), str(tmp_path / "." / "a.jsonl")], "given twice")
    broken = tmp_path / "c.jsonl"
    broken.write_text(json.dumps({**rows[0], "map": 1.5}) + "\n")
    cli_error(capsys, ["compare", str(good), str(broken)], "c.jsonl", "line 1", "'map'")
    cli_error(capsys, ["compare", str(good), str(tmp_path / "none.jsonl")], "none.jsonl")


# ---- image errors never quote a file's bytes ---------------------------------------------------------------------


def test_image_and_feature_errors_do_not_echo_file_contents(tmp_path: Path):
    from mrhp.data.jsonl import load_npy_regions
    from mrhp.features.images import ImageError, load_image

    secret = b"root:x:0:0:root:/root:/bin/bash\n"
    with pytest.raises(ImageError) as image_error:
        load_image(secret, 224)
    (tmp_path / "secret").write_bytes(secret)
    (tmp_path / "link.npy").symlink_to(tmp_path / "secret")
    with pytest.raises(ValueError) as npy_error:
        load_npy_regions(tmp_path / "link.npy")
    for message in (str(image_error.value), str(npy_error.value)):
        assert "root" not in message and "bash" not in message
    assert "not a .npy file" in str(npy_error.value)
    np.save(tmp_path / "ok.npy", np.ones((2, 3), dtype=np.float32))
    assert load_npy_regions(tmp_path / "ok.npy").shape == (2, 3)
