"""The bad-input matrix (issue 13): Bad checkpoints, to `mrhp evaluate` and `mrhp predict`. Shared values and
`cli_error` are in support.py; every case must end in a documented answer: for the command line, exit status 2 and one
`mrhp CMD: error: ...` line naming the file, line and field (or option) at fault, no traceback, and nothing written or
lost; for the service, the documented status with a `{"message", "detail"}` JSON body naming the field, never a 5xx. A
wrong implementation (a crash, a silent success, an error that names nothing) fails the case."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from support import (
    DELETE,
    WIDTH,
    cli_error,
    header_set,
    rewrite_checkpoint,
    trained_request,
)

# ---- checkpoints -------------------------------------------------------------------------------------------------


def _first_weight(change):
    def apply(tensors: dict) -> None:
        name = next(name for name in tensors if name.startswith("model.") and tensors[name].is_floating_point())
        change(tensors, name)
    return apply


CHECKPOINT_CASES = {  # name -> (how to make the file from a good one, expected text)
    **{f"no {key}": ({"header_change": header_set(key, DELETE)}, f"'{key}'")
       for key in ("config", "vocab", "relevance_threshold")},
    "no format": ({"header_change": header_set("format", DELETE)}, "not an mrhp checkpoint"),
    "no version": ({"header_change": header_set("version", DELETE)}, "version"),
    **{f"{key} is {kind}": ({"header_change": header_set(key, value)}, f"'{key}'")
       for key, bad in {"config": {"a number": 5, "a list": []}, "vocab": {"a number": 5, "a string": "a b"},
                        "relevance_threshold": {"a string": "1", "a bool": True, "a float": 1.5},
                        "metrics": {"a list": []}, "state": {"a number": 5}, "optimizer": {"a string": "x"},
                        "model_name": {"a number": 5}}.items()
       for kind, value in bad.items()},
    "vocab of numbers": ({"header_change": header_set("vocab", [0, 1, 2])}, "vocab"),
    "vocab without <unk>": ({"header_change": header_set("vocab", ["<pad>", "a", "b"])}, "vocab"),
    "config max_tokens negative": ({"header_change": header_set("config.data.max_tokens", -5)}, "data.max_tokens"),
    "config model name": ({"header_change": header_set("config.model.name", "nope")}, "model.name"),
    "config unknown setting": ({"header_change": header_set("config.model.colour", "red")}, "colour"),
    "config section not a table": ({"header_change": header_set("config.train", 3)}, "train"),
    "config dropout string": ({"header_change": header_set("config.model.dropout", "high")}, "model.dropout"),
    "vocab size differs from config": ({"header_change": header_set("inputs.vocab_size", 3)}, "vocab"),
    "image width differs from weights": ({"header_change": header_set("inputs.image_dim", WIDTH + 1)}, "weights"),
    "model name differs": ({"header_change": header_set("model_name", "mcr")}, "model"),
    "version from the future": ({"header_change": header_set("version", 99)}, "version 99"),
    "header not JSON": ({"raw_header": "{not json"}, "header"),
    "header a list": ({"raw_header": "[1, 2]"}, "not a JSON object"),
    "NaN weight": ({"tensor_change": _first_weight(lambda t, n: t[n].view(-1).__setitem__(0, math.nan))}, "NaN"),
    "missing weight": ({"tensor_change": _first_weight(lambda t, n: t.pop(n))}, "weights"),
    "extra weight": ({"tensor_change": lambda t: t.__setitem__("model.extra", torch.zeros(2))}, "weights"),
    "weight of another shape": ({"tensor_change": _first_weight(lambda t, n: t.__setitem__(n, torch.zeros(3, 3)))},
                                "weights"),
}
BROKEN_FILES = {"empty file": b"", "text file": b"not a checkpoint at all", "truncated": None}


def _checkpoint_case(case: str, good: Path, folder: Path) -> tuple[Path, str]:
    target = folder / "bad.safetensors"
    if case in BROKEN_FILES:
        content = BROKEN_FILES[case]
        target.write_bytes(good.read_bytes()[: good.stat().st_size // 2] if content is None else content)
        return target, "bad.safetensors"
    change, expected = CHECKPOINT_CASES[case]
    return rewrite_checkpoint(good, target, **change), expected


@pytest.mark.parametrize("command", ["evaluate", "predict"])
@pytest.mark.parametrize("case", [*CHECKPOINT_CASES, *BROKEN_FILES])
def test_bad_checkpoints_are_named_errors(case: str, command: str, trained: tuple[Path, Path], tmp_path: Path, capsys):
    prepared, good = trained
    path, expected = _checkpoint_case(case, good, tmp_path)
    if command == "evaluate":
        argv = ["evaluate", "--checkpoint", str(path), "--data", str(prepared), "--no-progress"]
    else:
        (tmp_path / "in.jsonl").write_text(json.dumps(trained_request()) + "\n", encoding="utf-8")
        argv = ["predict", "--checkpoint", str(path), "--input", str(tmp_path / "in.jsonl"), "--output",
                str(tmp_path / "out.jsonl"), "--no-progress"]
    cli_error(capsys, argv, "bad.safetensors", expected)


def test_evaluate_refuses_a_dataset_prepared_with_another_vocabulary(trained: tuple[Path, Path], tmp_path: Path,
                                                                      capsys):
    """Same size, other words: token ids would mean other words, and the metrics would be meaningless."""
    prepared, good = trained
    from mrhp.data.prepared import PreparedDataset

    words = PreparedDataset.open(prepared).vocab.tokens
    swapped = [*words[:2], words[3], words[2], *words[4:]]
    path = rewrite_checkpoint(good, tmp_path / "bad.safetensors", header_change=header_set("vocab", swapped))
    cli_error(capsys, ["evaluate", "--checkpoint", str(path), "--data", str(prepared), "--no-progress"],
              "different vocabularies", "first difference at id 2")
