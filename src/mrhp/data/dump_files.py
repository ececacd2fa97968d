"""Reading the files of a public dump (:mod:`mrhp.data.dumps`): lines of plain or gzipped files, JSON objects and
CSV/TSV records, each with its line number. A malformed line or record (bad JSON, bytes that are not UTF-8, a CSV
record with the wrong number of fields) is an error naming the file and line or, in lenient mode, a skip counted
by reason (:class:`SkipLog`); a missing column in a CSV header is always an error.
"""

from __future__ import annotations

import ast
import csv
import gzip
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mrhp import jsontext
from mrhp.data.records import RecordError
from mrhp.errors import DataError

# How many skipped records the report lists (all are counted).
SKIPS_LISTED = 10


@dataclass
class SkipLog:
    """Lenient mode's record of skipped input records; strict mode re-raises the error instead."""

    lenient: bool
    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def skip(self, error: RecordError) -> None:
        if not self.lenient:
            raise error
        self.counts[error.reason] += 1
        if len(self.examples) < SKIPS_LISTED:
            self.examples.append(str(error))

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Wraps the reading of one record: a ``RecordError`` in the block skips the rest of it (:meth:`skip`)."""
        try:
            yield
        except RecordError as error:
            self.skip(error)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _open_binary(path: Path):
    """The file as a binary stream (gzip-decompressed for ``.gz``); ``DataError`` when it cannot be opened."""
    try:
        if path.suffix == ".gz":
            return gzip.open(path, "rb")
        return path.open("rb")
    except FileNotFoundError:
        raise DataError("file not found", file=path) from None
    except OSError as exc:
        raise DataError(f"cannot read file ({exc})", file=path) from None


def _text_lines(path: Path, skips: SkipLog, bad_lines: set[int] | None = None) -> Iterator[tuple[int, str]]:
    """``(line number, decoded line with its line ending)``. A line that is not UTF-8 is an error naming it; in
    lenient mode, when ``bad_lines`` is given, it is decoded with replacement characters and its number added to
    ``bad_lines`` (the caller skips the record holding it), else it is skipped here."""
    with _open_binary(path) as handle:
        try:
            for line_no, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    error = RecordError(f"not UTF-8 text ({exc.reason} at byte {exc.start}); convert the file to "
                                        "UTF-8", "not UTF-8", file=path, line=line_no)
                    if bad_lines is None or not skips.lenient:
                        skips.skip(error)
                        continue
                    bad_lines.add(line_no)
                    line = raw.decode("utf-8", errors="replace")
                yield line_no, line.lstrip("\ufeff") if line_no == 1 else line
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            raise DataError(f"cannot read file ({exc})", file=path) from None


def json_objects(path: Path, skips: SkipLog, python_literals: bool = False) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` per non-blank JSON line; malformed lines are errors or counted skips. With
    ``python_literals``, a line that is a Python dict literal (``{'asin': ...}``) is read with
    :func:`ast.literal_eval`, which evaluates no code."""
    for line_no, line in _text_lines(path, skips):
        if not line.strip():
            continue
        try:
            obj = jsontext.loads(line)
        except RecursionError:
            skips.skip(RecordError("JSON nested too deeply to read", "invalid JSON", file=path, line=line_no))
            continue
        except json.JSONDecodeError as exc:
            obj = None
            if python_literals and line.lstrip().startswith("{'"):
                try:
                    obj = ast.literal_eval(line.strip())
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    obj = None
            if obj is None:
                skips.skip(RecordError(f"invalid JSON ({exc.msg}, column {exc.colno})", "invalid JSON", file=path,
                                       line=line_no))
                continue
        if not isinstance(obj, dict):
            skips.skip(RecordError(f"expected a JSON object, got {type(obj).__name__}", "not an object", file=path,
                                   line=line_no))
            continue
        yield line_no, obj


def csv_records(path: Path, skips: SkipLog, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """``(first line number, {column: value})`` per CSV/TSV record (quoted fields may span lines).

    The header must hold every column of ``required`` (always an error otherwise, naming the missing ones). A
    record with a different number of fields than the header, or holding a line that is not UTF-8, is an error
    or a counted skip.
    """
    # Review texts can be long: csv's default limit (131,072 characters per field) would call them malformed. An
    # unmatched quote still ends at the end of the file, so memory stays bounded by the file's size.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    bad_lines: set[int] = set()
    lines = _text_lines(path, skips, bad_lines)
    reader = csv.reader((line for _, line in lines), delimiter="\t" if ".tsv" in path.suffixes else ",")
    try:
        header = next(reader, None)
        if header is None:
            raise DataError("empty file (expected a header line)", file=path, line=1)
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(f"missing column(s) {', '.join(repr(c) for c in missing)} in the header (columns: "
                            f"{', '.join(header)})", file=path, line=1)
        start = reader.line_num + 1
        for row in reader:
            end = reader.line_num
            if bad_lines and any(start <= n <= end for n in bad_lines):
                bad = min(n for n in bad_lines if start <= n <= end)
                skips.skip(RecordError("not UTF-8 text; convert the file to UTF-8", "not UTF-8", file=path, line=bad))
            elif not row or (len(row) == 1 and not row[0].strip()):
                pass  # a blank line is no record
            elif len(row) != len(header):
                skips.skip(RecordError(f"{len(row)} fields, the header has {len(header)}", "wrong field count",
                                       file=path, line=start))
            else:
                yield start, dict(zip(header, row))
            start = end + 1
    except csv.Error as exc:
        raise DataError(f"malformed CSV ({exc})", file=path, line=reader.line_num) from None
