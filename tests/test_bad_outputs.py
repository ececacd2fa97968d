"""The bad-input matrix (issue 13): Unusable output locations, for every command that writes. Shared values and
`cli_error` are in support.py; every case must end in a documented answer: for the command line, exit status 2 and one
`mrhp CMD: error: ...` line naming the file, line and field (or option) at fault, no traceback, and nothing written or
lost; for the service, the documented status with a `{"message", "detail"}` JSON body naming the field, never a 5xx. A
wrong implementation (a crash, a silent success, an error that names nothing) fails the case."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from support import (
    cli_error,
    trained_request,
)

# ---- output locations --------------------------------------------------------------------------------------------

OUTPUT_COMMANDS = {  # command -> (option, wants a folder, the rest of the arguments given the inputs)
    "prepare": ("--out", True, lambda data, ckpt, req: ["--format", "jsonl", "--products", "p.jsonl", "--reviews",
                                                         "r.jsonl"]),
    "train": ("--out", True, lambda data, ckpt, req: ["--data", str(data), "--no-progress"]),
    "demo": ("--out", True, lambda data, ckpt, req: ["--no-progress"]),
    "report": ("--out", True, lambda data, ckpt, req: [str(ckpt.parent), "--data", str(data)]),
    "fetch-images": ("--out", True, lambda data, ckpt, req: ["--prepared", str(data)]),
    "evaluate": ("--per-product", False, lambda data, ckpt, req: ["--checkpoint", str(ckpt), "--data", str(data),
                                                                   "--no-progress"]),
    "floor": ("--per-product", False, lambda data, ckpt, req: ["--data", str(data), "--method", "length"]),
    "predict": ("--output", False, lambda data, ckpt, req: ["--checkpoint", str(ckpt), "--input", str(req),
                                                            "--no-progress"]),
}
OUTPUT_KINDS = ["wrong kind", "under a file"] + (["not writable"] if sys.platform == "linux" else [])


@pytest.mark.parametrize("kind", OUTPUT_KINDS)
@pytest.mark.parametrize("command", OUTPUT_COMMANDS)
def test_unusable_output_locations_fail_before_any_work(command: str, kind: str, trained: tuple[Path, Path],
                                                        tmp_path: Path, capsys):
    option, folder, rest = OUTPUT_COMMANDS[command]
    requests = tmp_path / "in.jsonl"
    requests.write_text(json.dumps(trained_request()) + "\n", encoding="utf-8")
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me\n")
    if kind == "wrong kind":  # a file where a folder is wanted, or a folder where a file is
        target = a_file if folder else tmp_path
    elif kind == "under a file":
        target = a_file / "inside"
    else:  # /proc refuses new files, also to root
        target = Path("/proc/mrhp-matrix-output")
    cli_error(capsys, [command, *rest(*trained, requests), option, str(target)], option, str(target))
    assert a_file.read_text() == "keep me\n" and not Path("/proc/mrhp-matrix-output").exists()
