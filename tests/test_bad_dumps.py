"""The bad-input matrix (issue 13): Bad public dumps for `mrhp prepare --format amazon2023` and `--format finefood`.
Shared values and `cli_error` are in support.py; every case must end in a documented answer: for the command line,
exit status 2 and one `mrhp CMD: error: ...` line naming the file, line and field (or option) at fault, no traceback,
and nothing written or lost; for the service, the documented status with a `{"message", "detail"}` JSON body naming
the field, never a 5xx. A wrong implementation (a crash, a silent success, an error that names nothing) fails the
case."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import (
    AMAZON_META,
    AMAZON_REVIEWS,
    DEEP,
    DELETE,
    FINEFOOD_GOOD,
    FINEFOOD_HEADER,
    SURROGATE,
    cli_error,
    dumped,
)

from mrhp.cli import main

# ---- prepare --format amazon2023 and finefood (the public dumps) ------------------------------------------------


AMAZON_CASES = {  # name -> (file, line index, field, value)
    **{f"parent_asin {kind}": ("reviews", 1, "parent_asin", value)
       for kind, value in {"missing": DELETE, "empty": "", "list": [], "surrogate": SURROGATE}.items()},
    **{f"helpful_vote {kind}": ("reviews", 1, "helpful_vote", value)
       for kind, value in {"negative": -3, "string": "many", "float": 2.5, "list": []}.items()},
    **{f"rating {kind}": ("reviews", 1, "rating", value) for kind, value in {"string": "x", "list": [4]}.items()},
    **{f"text {kind}": ("reviews", 1, "text", value) for kind, value in {"number": 5, "surrogate": SURROGATE}.items()},
    **{f"images {kind}": ("reviews", 1, "images", value)
       for kind, value in {"string": "x.jpg", "number list": [1], "deep": DEEP}.items()},
    **{f"meta {field} {kind}": ("metadata", 0, field, value)
       for field, bad in {"title": {"number": 5, "surrogate": SURROGATE}, "description": {"numbers": [1, 2], "object": {}}, "images": {"string": "x"}, "parent_asin": {"missing": DELETE}}.items()
       for kind, value in bad.items()},
}


@pytest.mark.parametrize("case", AMAZON_CASES, ids=list(AMAZON_CASES))
def test_amazon2023_errors_name_file_line_and_field(case: str, tmp_path: Path, capsys):
    which, index, field, value = AMAZON_CASES[case]
    rows = {"reviews": [dict(row) for row in AMAZON_REVIEWS], "metadata": [dict(row) for row in AMAZON_META]}
    if value is DELETE:
        del rows[which][index][field]
    else:
        rows[which][index][field] = value
    paths = {}
    for name, lines in rows.items():
        paths[name] = tmp_path / f"{name}.jsonl"
        paths[name].write_text("".join(dumped(row) + "\n" for row in lines), encoding="utf-8")
    named = () if value is DEEP else (f"field '{field}'",)
    cli_error(capsys, ["prepare", "--format", "amazon2023", "--input", str(paths["reviews"]), "--metadata",
                       str(paths["metadata"]), "--out", str(tmp_path / "out"), "--split-fractions", "1", "0", "0",
                       "--min-reviews", "1"], f"{which}.jsonl", f"line {index + 1}", *named)


FINEFOOD_CASES = {  # name -> (bytes of the record put on line 3, expected texts)
    "too few fields": (b"90,P1,U90,N,1,1,5,1,S\r\n", ("line 3", "fields")),
    "too many fields": (b"90,P1,U90,N,1,1,5,1,S,T,extra\r\n", ("line 3", "fields")),
    "votes not a number": (b"90,P1,U90,N,x,1,5,1,S,T\r\n", ("line 3", "HelpfulnessNumerator")),
    "negative votes": (b"90,P1,U90,N,-2,1,5,1,S,T\r\n", ("line 3", "HelpfulnessNumerator")),
    "not UTF-8": (b"90,P1,U90,N,1,1,5,1,S,caf\xe9\r\n", ("line 3", "UTF-8")),
    "empty product": (b"90,,U90,N,1,1,5,1,S,T\r\n", ("line 3", "ProductId")),
    "bad score": (b"90,P1,U90,N,1,1,five,1,S,T\r\n", ("line 3", "Score")),
}


@pytest.mark.parametrize("case", FINEFOOD_CASES, ids=list(FINEFOOD_CASES))
def test_finefood_csv_errors_name_file_and_line(case: str, tmp_path: Path, capsys):
    record, expected = FINEFOOD_CASES[case]
    lines = FINEFOOD_GOOD.encode().splitlines(keepends=True)
    path = tmp_path / "Reviews.csv"
    path.write_bytes(FINEFOOD_HEADER.encode() + lines[0] + record + b"".join(lines[1:]))
    cli_error(capsys, ["prepare", "--format", "finefood", "--input", str(path), "--out", str(tmp_path / "out"),
                       "--split-fractions", "1", "0", "0", "--min-reviews", "1"], "Reviews.csv", *expected)


def test_a_csv_field_longer_than_csvs_default_limit_is_read(tmp_path: Path):
    path = tmp_path / "Reviews.csv"
    long_text = "word " * 40_000  # 200,000 characters: over csv's default 131,072 per field
    path.write_text(FINEFOOD_HEADER + FINEFOOD_GOOD + f'99,P1,U99,N,3,3,5,1,S,"{long_text}"\r\n', encoding="utf-8",
                    newline="")
    out = tmp_path / "out"
    assert main(["prepare", "--format", "finefood", "--input", str(path), "--out", str(out), "--split-fractions",
                 "1", "0", "0", "--min-reviews", "1"]) == 0
    assert "10 review records read" in (out / "report.txt").read_text()
