"""The bad-input matrix (issue 13): generated bad files, requests, checkpoints, settings and output locations for
every command and the service. Each case must end in a documented answer: for the command line, exit status 2 and
one `mrhp CMD: error: ...` line naming the file, line and field (or option) at fault, no traceback, and nothing
written or lost; for the service, the documented status with a `{"message", "detail"}` JSON body naming the field,
never a 5xx. A wrong implementation (a crash, a silent success, an error that names nothing) fails the case."""

from __future__ import annotations

import importlib
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from support import TINY_TRAIN_ARGS, prepare_tiny_dataset

from mrhp.cli import main
from mrhp.studies.synthetic import SyntheticSpec

SURROGATE = "bad \ud800 text"  # valid JSON ("\ud800" escape), not Unicode text
DEEP = object()  # a value nested 100,000 arrays deep (written as raw text: json.dumps would recurse)
DELETE = object()  # the field is removed


def dumped(record: dict) -> str:
    """One JSON line of `record`, with DEEP values written as raw nested brackets."""
    parts = []
    for key, value in record.items():
        text = "[" * 100_000 + "]" * 100_000 if value is DEEP else json.dumps(value)
        parts.append(f"{json.dumps(key)}: {text}")
    return "{" + ", ".join(parts) + "}"


def cli_error(capsys, argv: list[str], *expected: str) -> str:
    """Run `mrhp ARGV`; it must fail with exit status 2 and one error line holding every `expected` text."""
    status = main(argv)
    err = capsys.readouterr().err
    prefix = f"mrhp {argv[0]}: error: "
    lines = [line for line in err.splitlines() if line.startswith(prefix)]
    assert status == 2, f"exit status {status}, stderr: {err[-2000:]}"
    assert "Traceback" not in err and len(lines) == 1, err[-2000:]
    for text in expected:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    return lines[0]


# ---- prepare --format jsonl -------------------------------------------------------------------------------------

PRODUCTS = [
    {"product_id": "P1", "name": "steel pot", "description": "six quart", "split": "train"},
    {"product_id": "P2", "text": "glass lid for the pot", "split": "train"},
    {"product_id": "P3", "text": "a pan", "split": "dev"},
    {"product_id": "P4", "text": "a knife", "split": "test"},
]
REVIEWS = [
    {"review_id": f"R{p}{k}", "product_id": f"P{p}", "text": f"review {k} of product {p} is fine", "votes": 3 * k}
    for p in range(1, 5) for k in range(3)
]

BAD_IDS = {"missing": DELETE, "null": None, "empty": "", "blank": "   ", "bool": True, "float": 1.5, "list": [],
           "object": {}, "surrogate": SURROGATE, "deep": DEEP}
BAD_TEXTS = {"null": None, "number": 5, "list": ["a"], "object": {}, "bool": False, "surrogate": SURROGATE,
             "deep": DEEP}
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


def _write_jsonl(folder: Path, products: list, reviews: list) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "products.jsonl", folder / "reviews.jsonl"
    for path, rows in zip(paths, (products, reviews)):
        path.write_bytes(b"".join((row if isinstance(row, bytes) else dumped(row).encode()) + b"\n" for row in rows))
    return paths


def _prepare_jsonl(products: Path, reviews: Path, out: Path) -> list[str]:
    return ["prepare", "--format", "jsonl", "--products", str(products), "--reviews", str(reviews), "--out", str(out),
            "--min-count", "1"]


def test_the_unchanged_jsonl_data_prepares(tmp_path: Path):
    """The matrix's base files are good: every case below fails because of its one change."""
    products, reviews = _write_jsonl(tmp_path, PRODUCTS, REVIEWS)
    assert main(_prepare_jsonl(products, reviews, tmp_path / "out")) == 0


@pytest.mark.parametrize("case", JSONL_CASES, ids=list(JSONL_CASES))
def test_jsonl_field_errors_name_file_line_and_field(case: str, tmp_path: Path, capsys):
    which, index, field, value, expected = JSONL_CASES[case]
    rows = {"products": [dict(row) for row in PRODUCTS], "reviews": [dict(row) for row in REVIEWS]}
    if value is DELETE:
        del rows[which][index][field]
    else:
        rows[which][index][field] = value
    products, reviews = _write_jsonl(tmp_path / "data", rows["products"], rows["reviews"])
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
    products, reviews = _write_jsonl(tmp_path / "data", rows["products"], rows["reviews"])
    cli_error(capsys, _prepare_jsonl(products, reviews, tmp_path / "out"), f"{which}.jsonl", "line 3")


def test_an_empty_reviews_file_is_an_error(tmp_path: Path, capsys):
    products, reviews = _write_jsonl(tmp_path / "data", PRODUCTS, [])
    cli_error(capsys, _prepare_jsonl(products, reviews, tmp_path / "out"), "reviews.jsonl", "no reviews")
    assert not (tmp_path / "out").exists()


def test_prepare_removes_the_temporary_folder_of_a_killed_run(tmp_path: Path):
    products, reviews = _write_jsonl(tmp_path / "data", PRODUCTS, REVIEWS)
    dead = 2**22 + 12345  # above Linux's default pid_max: no process has it
    stale = tmp_path / f".out.tmp-{dead}-0123abcd"
    (stale / "features").mkdir(parents=True)
    live = tmp_path / f".out.tmp-{os.getpid()}-89abcdef"  # a running process's: left alone
    live.mkdir()
    assert main(_prepare_jsonl(products, reviews, tmp_path / "out")) == 0
    assert not stale.exists() and live.exists() and (tmp_path / "out" / "dataset.json").exists()


# ---- prepare --format amazon2023 and finefood (the public dumps) ------------------------------------------------


def _amazon_review(parent: str, user: str, votes: int) -> dict:
    return {"rating": 4.0, "title": "a title", "text": f"review by {user}", "images": [], "asin": parent,
            "parent_asin": parent, "user_id": user, "timestamp": 1470972512000, "helpful_vote": votes,
            "verified_purchase": True}


AMAZON_REVIEWS = [_amazon_review(f"P{p}", f"U{p}{k}", k * 4) for p in range(3) for k in range(3)]
AMAZON_META = [{"parent_asin": f"P{p}", "title": f"magazine {p}", "description": ["monthly"], "features": ["print"],
                "images": []} for p in range(3)]
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


FINEFOOD_HEADER = "Id,ProductId,UserId,ProfileName,HelpfulnessNumerator,HelpfulnessDenominator,Score,Time,Summary,Text\r\n"
FINEFOOD_GOOD = "".join(f"{k},P{k % 3},U{k},Name,{k % 4},{k % 4},5,100,Sum,Text {k}\r\n" for k in range(1, 10))
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


# ---- a tiny trained model: predict, the service, evaluate, checkpoints ------------------------------------------

WIDTH = 8  # region feature size of the tiny dataset


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(prepared dataset, its trained checkpoint)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("matrix")
    spec = SyntheticSpec(products=(8, 3, 3), reviews_per_product=(3, 5), num_topics=3, feature_dim=WIDTH)
    prepared = prepare_tiny_dataset(root, spec)
    assert main(["train", "--data", str(prepared), "--out", str(root / "run"), "--set", "train.epochs=1",
                 *TINY_TRAIN_ARGS]) == 0
    return prepared, root / "run" / "best.safetensors"


def _request() -> dict:
    return {"product_id": "p1", "text": "a product", "images": [{"regions": [[0.1] * WIDTH] * 2}],
            "reviews": [{"review_id": "a", "text": "good and long", "rating": 4},
                        {"review_id": "b", "text": "bad", "images": [{"regions": [[0.2] * WIDTH]}]}]}


REGIONS_BAD = {"number": 5, "string": "x", "number entry": [5], "empty object": [{}],
               "regions number": [{"regions": 5}], "narrow": [{"regions": [[0.1] * 3]}],
               "ragged": [{"regions": [[0.1] * WIDTH, [0.1] * 3]}], "text values": [{"regions": [["a"] * WIDTH]}],
               "infinite": [{"regions": [[math.inf] * WIDTH]}], "bad base64": [{"data": "not base64!"}],
               "regions and data": [{"regions": [[0.1] * WIDTH], "data": ""}], "deep": DEEP}
REQUEST_CASES: dict[str, tuple[tuple, object]] = {  # name -> (path of the field, value)
    **{f"product_id {kind}": (("product_id",), value)
       for kind, value in {"null": None, "empty": "", "bool": True, "list": [], "surrogate": SURROGATE}.items()},
    **{f"product text {kind}": (("text",), value) for kind, value in BAD_TEXTS.items()},
    "no product text": (("text",), DELETE),
    "text and name": (("name",), "a name"),
    **{f"reviews {kind}": (("reviews",), value)
       for kind, value in {"missing": DELETE, "number": 5, "string": "x", "object": {}, "number entry": [5],
                           "null entry": [None]}.items()},
    **{f"review_id {kind}": (("reviews", 0, "review_id"), value) for kind, value in BAD_IDS.items()},
    "duplicate review_id": (("reviews", 1, "review_id"), "a"),
    **{f"review text {kind}": (("reviews", 0, "text"), value)
       for kind, value in {"missing": DELETE, **BAD_TEXTS}.items()},
    **{f"rating {kind}": (("reviews", 0, "rating"), value)
       for kind, value in {"string": "4", "bool": True, "list": [4], "infinite": math.inf}.items()},
    **{f"product images {kind}": (("images",), value) for kind, value in REGIONS_BAD.items()},
    **{f"review images {kind}": (("reviews", 1, "images"), value) for kind, value in REGIONS_BAD.items()},
}


def _field_text(path: tuple) -> str:
    """How errors write a field's path: `reviews[0].text`."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path).lstrip(".")


def _bad_request(case: str) -> tuple[str, str]:
    """The request of `case` as one JSON text (DEEP written raw), and the field its error must name."""
    path, value = REQUEST_CASES[case]
    body = _request()
    holder = body
    for part in path[:-1]:
        holder = holder[part]
    marker = "@@DEEP@@"
    if value is DELETE:
        holder.pop(path[-1], None)
    else:
        holder[path[-1]] = marker if value is DEEP else value
    text = json.dumps(body).replace(json.dumps(marker), "[" * 100_000 + "]" * 100_000)
    named = {"no product text": "text", "text and name": "text", "duplicate review_id": "reviews[1].review_id"}
    return text, named.get(case, "" if value is DEEP else _field_text(path))


@pytest.mark.parametrize("case", REQUEST_CASES, ids=list(REQUEST_CASES))
def test_predict_request_errors_name_line_and_field(case: str, trained: tuple[Path, Path], tmp_path: Path, capsys):
    text, field = _bad_request(case)
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps(_request()) + "\n" + text + "\n", encoding="utf-8")
    output = tmp_path / "ranked.jsonl"
    cli_error(capsys, ["predict", "--checkpoint", str(trained[1]), "--input", str(requests), "--output", str(output),
                       "--no-progress"], "requests.jsonl", "line 2", *([f"field '{field}"] if field else []))
    assert not output.exists()


@pytest.fixture(scope="module")
def client(trained: tuple[Path, Path]):
    from fastapi.testclient import TestClient

    from mrhp.ranking.serve.app import create_app
    from mrhp.ranking.serve.settings import ServeSettings

    app = create_app(trained[1], ServeSettings(max_request_bytes=1_000_000, threads=1))
    # raise_server_exceptions=False: a server error must show as the answer a client gets, never be re-raised here.
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


# The service reads a null field as an absent one (README, Serving): a null product_id is no error there.
SERVICE_REQUEST_CASES = [case for case in REQUEST_CASES if case != "product_id null"]


@pytest.mark.parametrize("case", SERVICE_REQUEST_CASES)
def test_service_request_errors_are_422_naming_the_field(case: str, client):
    text, field = _bad_request(case)
    response = client.post("/v1/rank", content=text.encode("utf-8", "surrogatepass"),
                           headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    body = response.json()
    assert set(body) == {"message", "detail"} and field in body["message"]


SERVICE_BODIES = {  # name -> (body bytes, content type or None, status, expected text)
    "no content type": (json.dumps(_request()).encode(), None, 415, "Content-Type"),
    "text/plain": (json.dumps(_request()).encode(), "text/plain", 415, "text/plain"),
    "form": (b"a=1", "application/x-www-form-urlencoded", 415, "Content-Type"),
    "not UTF-8": (b'{"text": "caf\xe9", "reviews": []}', "application/json", 422, "not UTF-8"),
    "deep": (b"[" * 100_000 + b"]" * 100_000, "application/json", 422, "body"),
    "surrogate key": (b'{"text": "x", "reviews": [], "\\ud800": 1}', "application/json", 422, "body"),
    "empty": (b"", "application/json", 422, "body"),
    "null": (b"null", "application/json", 422, ""),
    "array": (b"[1, 2]", "application/json", 422, ""),
    "too large": (b'{"text": "' + b"x" * 1_100_000 + b'", "reviews": []}', "application/json", 413, "exceeds"),
}


@pytest.mark.parametrize("case", SERVICE_BODIES, ids=list(SERVICE_BODIES))
def test_service_bodies_get_the_documented_status(case: str, client):
    body, content_type, status, expected = SERVICE_BODIES[case]
    headers = {} if content_type is None else {"content-type": content_type}
    response = client.post("/v1/rank", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json" and expected in response.json()["message"]


def test_the_service_answers_an_unforeseen_failure_with_json_500(trained: tuple[Path, Path], monkeypatch):
    from fastapi.testclient import TestClient

    from mrhp.ranking.ranker import Ranker
    from mrhp.ranking.serve.app import create_app

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(Ranker, "parse", broken)
    with TestClient(create_app(trained[1]), raise_server_exceptions=False) as test_client:
        response = test_client.post("/v1/rank", json=_request())
    assert response.status_code == 500 and "ZeroDivisionError" in response.json()["message"]


# ---- checkpoints -------------------------------------------------------------------------------------------------


def _rewrite(source: Path, target: Path, header_change=None, tensor_change=None, raw_header: str | None = None) -> Path:
    tensors = load_file(str(source))
    with safe_open(str(source), framework="pt") as handle:
        header = json.loads(handle.metadata()["mrhp"])
    if header_change is not None:
        header_change(header)
    if tensor_change is not None:
        tensor_change(tensors)
    save_file(tensors, str(target), metadata={"mrhp": raw_header if raw_header is not None else json.dumps(header)})
    return target


def _set(path: str, value):
    """A header change: set the key at dotted `path` (DELETE removes it)."""
    def change(header: dict) -> None:
        *parents, last = path.split(".")
        holder = header
        for part in parents:
            holder = holder[part]
        if value is DELETE:
            del holder[last]
        else:
            holder[last] = value
    return change


def _first_weight(change):
    def apply(tensors: dict) -> None:
        name = next(name for name in tensors if name.startswith("model.") and tensors[name].is_floating_point())
        change(tensors, name)
    return apply


CHECKPOINT_CASES = {  # name -> (how to make the file from a good one, expected text)
    **{f"no {key}": ({"header_change": _set(key, DELETE)}, f"'{key}'")
       for key in ("config", "vocab", "relevance_threshold")},
    "no format": ({"header_change": _set("format", DELETE)}, "not an mrhp checkpoint"),
    "no version": ({"header_change": _set("version", DELETE)}, "version"),
    **{f"{key} is {kind}": ({"header_change": _set(key, value)}, f"'{key}'")
       for key, bad in {"config": {"a number": 5, "a list": []}, "vocab": {"a number": 5, "a string": "a b"},
                        "relevance_threshold": {"a string": "1", "a bool": True, "a float": 1.5},
                        "metrics": {"a list": []}, "state": {"a number": 5}, "optimizer": {"a string": "x"},
                        "model_name": {"a number": 5}}.items()
       for kind, value in bad.items()},
    "vocab of numbers": ({"header_change": _set("vocab", [0, 1, 2])}, "vocab"),
    "vocab without <unk>": ({"header_change": _set("vocab", ["<pad>", "a", "b"])}, "vocab"),
    "config max_tokens negative": ({"header_change": _set("config.data.max_tokens", -5)}, "data.max_tokens"),
    "config model name": ({"header_change": _set("config.model.name", "nope")}, "model.name"),
    "config unknown setting": ({"header_change": _set("config.model.colour", "red")}, "colour"),
    "config section not a table": ({"header_change": _set("config.train", 3)}, "train"),
    "config dropout string": ({"header_change": _set("config.model.dropout", "high")}, "model.dropout"),
    "vocab size differs from config": ({"header_change": _set("inputs.vocab_size", 3)}, "vocab"),
    "image width differs from weights": ({"header_change": _set("inputs.image_dim", WIDTH + 1)}, "weights"),
    "model name differs": ({"header_change": _set("model_name", "mcr")}, "model"),
    "version from the future": ({"header_change": _set("version", 99)}, "version 99"),
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
    return _rewrite(good, target, **change), expected


@pytest.mark.parametrize("command", ["evaluate", "predict"])
@pytest.mark.parametrize("case", [*CHECKPOINT_CASES, *BROKEN_FILES])
def test_bad_checkpoints_are_named_errors(case: str, command: str, trained: tuple[Path, Path], tmp_path: Path, capsys):
    prepared, good = trained
    path, expected = _checkpoint_case(case, good, tmp_path)
    if command == "evaluate":
        argv = ["evaluate", "--checkpoint", str(path), "--data", str(prepared), "--no-progress"]
    else:
        (tmp_path / "in.jsonl").write_text(json.dumps(_request()) + "\n", encoding="utf-8")
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
    path = _rewrite(good, tmp_path / "bad.safetensors", header_change=_set("vocab", swapped))
    cli_error(capsys, ["evaluate", "--checkpoint", str(path), "--data", str(prepared), "--no-progress"],
              "different vocabularies", "first difference at id 2")


# ---- settings out of range -----------------------------------------------------------------------------------------

BAD_SETTINGS = [
    "model.hidden_size=0", "model.dropout=1.5", "model.dropout=-0.1", "model.embedding_dim=-4", "train.lr=inf",
    "train.lr=nan", "train.lr=0", "data.max_tokens=0", "data.max_regions=-1", "train.threads=-2", "train.epochs=0",
    "loss.margin=-1", "data.batch_rows=0", "data.max_list_size=1", "model.num_heads=3", "model.name=nope",
    "train.ties=nope", "model.text_encoder=nope", "loss.weighting=nope", "train.select_metric=nope",
    "model.colour=red", "colour.model=red", "train.lr=abc", "model.use_images=maybe", "train.lr_factor=2",
    "loss.contrastive_weight=-1", "model.text_tuned_layers=2",
]


@pytest.mark.parametrize("setting", BAD_SETTINGS)
def test_settings_out_of_range_stop_train_before_any_work(setting: str, trained: tuple[Path, Path], tmp_path: Path,
                                                          capsys):
    out = tmp_path / "run"
    cli_error(capsys, ["train", "--data", str(trained[0]), "--out", str(out), "--set", setting, "--no-progress"],
              setting.split("=")[0].split(".")[-1])
    assert not (out / "metrics.jsonl").exists()


BAD_OPTIONS = {  # name -> (arguments after the command, expected text); None: the command's own arguments
    "serve --port 70000": (["--checkpoint", "c", "--port", "70000"], "port must be within [0, 65535]"),
    "serve --port -1": (["--checkpoint", "c", "--port", "-1"], "port must be within [0, 65535]"),
    "evaluate --threshold 99": (None, "--threshold 99"),
    "evaluate --threshold -1": (None, "--threshold -1"),
}


@pytest.mark.parametrize("case", BAD_OPTIONS)
def test_options_out_of_range_are_named(case: str, trained: tuple[Path, Path], capsys):
    rest, expected = BAD_OPTIONS[case]
    command = case.split()[0]
    if rest is None:
        rest = ["--checkpoint", str(trained[1]), "--data", str(trained[0]), "--no-progress", "--threshold",
                case.rsplit(" ", 1)[1]]
    cli_error(capsys, [command, *rest], expected)


@pytest.mark.parametrize("value", ["0", "-5", "x"])
def test_prepare_min_count_below_one_is_a_usage_error(value: str, capsys):
    with pytest.raises(SystemExit) as exit_info:  # argparse's own errors: usage line, status 2
        main(["prepare", "--format", "jsonl", "--products", "p", "--reviews", "r", "--out", "o", "--min-count", value])
    assert exit_info.value.code == 2 and "--min-count" in capsys.readouterr().err


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
    requests.write_text(json.dumps(_request()) + "\n", encoding="utf-8")
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


# ---- after a kill ------------------------------------------------------------------------------------------------


def test_resume_after_a_kill_between_the_metrics_line_and_the_checkpoint(trained: tuple[Path, Path], tmp_path: Path,
                                                                         monkeypatch):
    """The run dies after writing epoch 2's metrics line but before `last.safetensors` (fault injected into
    save_checkpoint); resuming must repeat epoch 2 once, leaving the metrics and weights of an uninterrupted run."""
    from mrhp.models.checkpoint import load_checkpoint

    train_module = importlib.import_module("mrhp.training.loop")  # `mrhp.training.loop` the attribute is the API function

    args = ["--data", str(trained[0]), "--set", "train.epochs=2", *TINY_TRAIN_ARGS]
    assert main(["train", "--out", str(tmp_path / "whole"), *args]) == 0
    real_save = train_module.save_checkpoint

    def dies_at_epoch_2(path: Path, checkpoint) -> None:
        if path.name == "last.safetensors" and checkpoint.state["epoch"] == 2:
            raise KeyboardInterrupt  # what kill -9 leaves on disk: epoch 2 logged, last.safetensors still epoch 1
        real_save(path, checkpoint)

    monkeypatch.setattr(train_module, "save_checkpoint", dies_at_epoch_2)
    assert main(["train", "--out", str(tmp_path / "killed"), *args]) == 130
    assert len((tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()) == 2
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    assert main(["train", "--out", str(tmp_path / "killed"), "--resume", *args]) == 0

    def log(run: str) -> list[dict]:
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        timings = ("seconds", "data_wait_share")
        return [{k: v for k, v in json.loads(line).items() if k not in timings} for line in lines]

    assert log("killed") == log("whole") and [row["epoch"] for row in log("killed")] == [1, 2]
    whole, resumed = (load_checkpoint(tmp_path / run / "last.safetensors").model.state_dict() for run in ("whole", "killed"))
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)


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
