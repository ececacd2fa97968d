"""The shared field validators (mrhp.data.records.Fields) that the official, JSON-lines and dump readers use."""

from __future__ import annotations

import pytest

from mrhp.data.records import Fields, RecordError, unique_ids
from mrhp.errors import DataError


def _error(fields: Fields, read) -> RecordError:
    with pytest.raises(RecordError) as err:
        read(fields)
    return err.value


def test_id_accepts_strings_and_integers_as_written() -> None:
    fields = Fields({"a": "B001", "b": 42, "c": " R 1 ", "d": 0}, "f.jsonl", 3)
    assert [fields.id(name) for name in "abcd"] == ["B001", "42", " R 1 ", "0"]
    assert Fields({"a": " R 1 "}, "f.jsonl", 3, strip_ids=True).id("a") == "R 1"


@pytest.mark.parametrize("value", [True, False, "", "   ", None, 3.0, 1.5, [1], {"id": 1}])
def test_id_refuses_bools_blanks_and_other_types(value: object) -> None:
    error = _error(Fields({"product_id": value}, "f.jsonl", 7), lambda f: f.id("product_id"))
    assert isinstance(error, DataError)
    assert str(error).startswith("f.jsonl, line 7, field 'product_id': expected a non-empty string or an integer id")
    assert (error.file, error.line, error.field, error.reason) == ("f.jsonl", 7, "product_id", "bad product_id")


def test_integral_floats_only_where_asked() -> None:
    fields = Fields({"id": 3.0, "n": 4.0, "half": 2.5, "flag": True}, "c.rel.train", record="2", integral_floats=True)
    assert (fields.id("id"), fields.integer("n")) == ("3", 4)
    for name in ("half", "flag"):
        assert "expected an integer" in str(_error(fields, lambda f, name=name: f.integer(name)))
    assert "id" in str(_error(fields, lambda f: f.id("flag")))
    assert "expected an integer" in str(_error(Fields({"n": 4.0}, "f", 1), lambda f: f.integer("n")))


def test_missing_and_null_fields() -> None:
    absent = _error(Fields({}, "f.jsonl", 2), lambda f: f.id("review_id"))
    assert str(absent) == "f.jsonl, line 2, field 'review_id': missing required field"
    assert absent.reason == "missing review_id"
    # A null is a bad value by default, an absent field where the reader says so (the dumps).
    assert _error(Fields({"votes": None}, "f", 2), lambda f: f.integer("votes")).reason == "bad votes"
    dump = Fields({"votes": None, "title": None}, "d.json", 9, null_is_absent=True)
    assert _error(dump, lambda f: f.integer("votes")).reason == "missing votes"
    assert (dump.has("title"), dump.get("title"), dump.string("title", required=False)) == (False, None, None)


def test_string_required_optional_nullable() -> None:
    fields = Fields({"text": "", "name": None, "n": 5}, "p.jsonl", 4)
    assert fields.string("text") == ""
    assert fields.string("absent", required=False) is None
    assert fields.string("name", nullable=True) is None
    assert "missing required field" in str(_error(fields, lambda f: f.string("absent")))
    assert str(_error(fields, lambda f: f.string("name", required=False))) == (
        "p.jsonl, line 4, field 'name': expected a string, got null")
    assert "expected a string or null, got 5" in str(_error(fields, lambda f: f.string("n", nullable=True)))


def test_level_range_and_record_addressing() -> None:
    fields = Fields({"upvotes": 5, "ok": 4, "low": -1}, "clothing.rel.train", record="6")
    assert fields.level("ok", 4) == 4
    error = _error(fields, lambda f: f.level("upvotes", 4))
    assert str(error) == "clothing.rel.train, record 6, field 'upvotes': level 5 out of range 0..4"
    assert error.line is None
    assert "level -1 out of range" in str(_error(fields, lambda f: f.level("low", 4)))
    assert "expected an integer" in str(_error(Fields({"l": True}, "f", 1), lambda f: f.level("l", 4)))


def test_unique_ids_names_both_places() -> None:
    lines = [Fields({"product_id": pid}, "products.jsonl", n) for n, pid in ((1, "A"), (2, "B"), (5, "A"))]
    with pytest.raises(RecordError) as err:
        list(unique_ids(lines, "product"))
    assert str(err.value) == "products.jsonl, line 5, field 'product_id': duplicate product id 'A' (also line 1)"
    records = [Fields({"review_id": 7}, "c.rvw.dev", record=str(k)) for k in (0, 3)]
    with pytest.raises(RecordError, match=r"c.rvw.dev, record 3, .*duplicate review id '7' \(also record 0\)"):
        list(unique_ids(records, "review"))
    assert [item_id for _, item_id in unique_ids(lines[:2], "product")] == ["A", "B"]
