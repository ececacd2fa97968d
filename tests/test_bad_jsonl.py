"""The bad-input matrix (issue 13): Bad JSON-lines datasets for `mrhp prepare --format jsonl`. Shared values and
`cli_error` are in support.py; every case must end in a documented answer: for the command line, exit status 2 and one
`mrhp CMD: error: ...` line naming the file, line and field (or option) at fault, no traceback, and nothing written or
lost; for the service, the documented status with a `{"message", "detail"}` JSON body naming the field, never a 5xx. A
wrong implementation (a crash, a silent success, an error that names nothing) fails the case."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from support import (
    BAD_IDS,
    BAD_TEXTS,
    DEEP,
    DELETE,
    PRODUCTS,
    REVIEWS,
    SURROGATE,
    cli_error,
    write_jsonl,
)

from mrhp.cli import main

# ---- prepare --format jsonl -------------------------------------------------------------------------------------

BAD_IMAGES = {"number": 5, "string": "a.npy", "object": {}, "number entry": [5], "null entry": [None],
              "list entry": [["a.npy"]], "surrogate path": [SURROGATE + ".npy"], "deep": DEEP}


def _jsonl_cases() -> dict[str, tuple]:
    """name -> (file, line index, field, value, expected texts); value DELETE removes the field."""
    cases: dict[str, tuple] = {}
    for kind, value in BAD_IDS.items():
        cases[f"product_id {kind}"] = ("products", 0, "product_id", value, ())
        cases[f"review_id {kind}"] = ("reviews", 0, "review_id", value, ())
        cases[f"review product_id {kind}"] = ("reviews", 0, "product_id", value, ())
    for kind, value in BAD_TEXTS.items():
        cases[f"product text {kind}"] = ("products", 1, "text", value, ())
        cases[f"product name {kind}"] = ("products", 0, "name", value, ())
        cases[f"product description {kind}"] = ("products", 0, "description", value, ())
        cases[f"review text {kind}"] = ("reviews", 0, "text", value, ())
    for kind, value in BAD_IMAGES.items():
        cases[f"product images {kind}"] = ("products", 0, "images", value, ())
        cases[f"review images {kind}"] = ("reviews", 0, "images", value, ())
    for kind, value in {"unknown": "val", "number": 5, "empty": "", "surrogate": SURROGATE}.items():
        cases[f"split {kind}"] = ("products", 0, "split", value, ())
    for kind, value in {"negative": -1, "float": 1.5, "string": "3", "bool": True, "null": None, "list": [1],
                        "infinite": math.inf}.items():
        cases[f"votes {kind}"] = ("reviews", 1, "votes", value, ())
    for kind, value in {"above max": 5, "negative": -1, "float": 2.5, "string": "2", "bool": True}.items():
        cases[f"label {kind}"] = ("reviews", 1, "label", value, ())
    cases["review text missing"] = ("reviews", 0, "text", DELETE, ("missing required field",))
    cases["unknown product"] = ("reviews", 2, "product_id", "NOPE", ("NOPE",))
    cases["duplicate product"] = ("products", 1, "product_id", "P1", ("duplicate",))
    cases["duplicate review"] = ("reviews", 1, "review_id", "R10", ("duplicate",))
    cases["text and name"] = ("products", 1, "name", "a name", ("not both",))
    cases["label and votes"] = ("reviews", 1, "label", 2, ())
    cases["neither label nor votes"] = ("reviews", 1, "votes", DELETE, ())
    cases["split on some products only"] = ("products", 3, "split", DELETE, ())
    return cases


JSONL_CASES = _jsonl_cases()
NAMED_FIELD = {"text and name": "text", "neither label nor votes": "label"}  # the field the error is about
RAW_LINES = {"malformed JSON": b'{"product_id": "P9", ', "array": b"[1, 2]", "number": b"42", "string": b'"P9"',
             "not UTF-8": b'{"product_id": "P\xff\xfe"}', "null": b"null",
             "deep": b"[" * 100_000 + b"]" * 100_000}


def _prepare_jsonl(products: Path, reviews: Path, out: Path) -> list[str]:
    return ["prepare", "--format", "jsonl", "--products", str(products), "--reviews", str(reviews), "--out", str(out),
            "--min-count", "1"]


def test_the_unchanged_jsonl_data_prepares(tmp_path: Path):
    """The matrix's base files are good: every case below fails because of its one change."""
    products, reviews = write_jsonl(tmp_path, PRODUCTS, REVIEWS)
    assert main(_prepare_jsonl(products, reviews, tmp_path / "out")) == 0


@pytest.mark.parametrize("case", JSONL_CASES, ids=list(JSONL_CASES))
def test_jsonl_field_errors_name_file_line_and_field(case: str, tmp_path: Path, capsys):
    which, index, field, value, expected = JSONL_CASES[case]
    rows = {"products": [dict(row) for row in PRODUCTS], "reviews": [dict(row) for row in REVIEWS]}
    if value is DELETE:
        del rows[which][index][field]
    else:
        rows[which][index][field] = value
    products, reviews = write_jsonl(tmp_path / "data", rows["products"], rows["reviews"])
    out = tmp_path / "out"
    # The error names the line and, unless the line cannot be read at all, the field.
    named = () if value is DEEP else (f"field '{NAMED_FIELD.get(case, field)}'",)
    cli_error(capsys, _prepare_jsonl(products, reviews, out), f"{which}.jsonl", f"line {index + 1}", *named, *expected)
    assert not out.exists() and not list(tmp_path.glob(".out.*")), "a failed prepare left output behind"


@pytest.mark.parametrize("which", ["products", "reviews"])
@pytest.mark.parametrize("case", RAW_LINES, ids=list(RAW_LINES))
def test_jsonl_bad_lines_name_file_and_line(case: str, which: str, tmp_path: Path, capsys):
    rows = {"products": list(PRODUCTS), "reviews": list(REVIEWS)}
    rows[which] = [*rows[which][:2], RAW_LINES[case], *rows[which][2:]]
    products, reviews = write_jsonl(tmp_path / "data", rows["products"], rows["reviews"])
    cli_error(capsys, _prepare_jsonl(products, reviews, tmp_path / "out"), f"{which}.jsonl", "line 3")


def test_an_empty_reviews_file_is_an_error(tmp_path: Path, capsys):
    products, reviews = write_jsonl(tmp_path / "data", PRODUCTS, [])
    cli_error(capsys, _prepare_jsonl(products, reviews, tmp_path / "out"), "reviews.jsonl", "no reviews")
    assert not (tmp_path / "out").exists()


def test_prepare_removes_the_temporary_folder_of_a_killed_run(tmp_path: Path):
    products, reviews = write_jsonl(tmp_path / "data", PRODUCTS, REVIEWS)
    dead = 2**22 + 12345  # above Linux's default pid_max: no process has it
    stale = tmp_path / f".out.tmp-{dead}-0123abcd"
    (stale / "features").mkdir(parents=True)
    live = tmp_path / f".out.tmp-{os.getpid()}-89abcdef"  # a running process's: left alone
    live.mkdir()
    assert main(_prepare_jsonl(products, reviews, tmp_path / "out")) == 0
    assert not stale.exists() and live.exists() and (tmp_path / "out" / "dataset.json").exists()
