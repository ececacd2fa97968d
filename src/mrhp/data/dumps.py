"""Converters from public review dumps with vote counts to a :class:`~mrhp.data.prepared.RawDataset`.

Formats (``mrhp prepare --format NAME --input FILE``; ``.gz`` files are read transparently):

``amazon2018``  Amazon Review Data 2018 (Ni et al. 2019), JSON lines: ``asin`` (product), ``reviewerID``,
                ``unixReviewTime``, ``summary``, ``reviewText`` (often absent: the summary alone is the text),
                ``vote`` (a string such as ``"1,024"``; absent = 0 votes), ``overall`` (star rating), ``image``
                (review image URLs). Optional ``--metadata`` JSON lines: ``asin``, ``title``, ``description`` (a
                list of strings), ``imageURLHighRes`` / ``imageURL`` (product image URLs).
``amazon2014``  Amazon reviews 2014 (McAuley et al. 2015): as above but ``helpful: [helpful, total]``; lines that
                are Python literals (the original 2014 release: ``{'asin': ...}``) are read with
                :func:`ast.literal_eval`, which evaluates no code. Optional ``--metadata`` (``title``,
                ``description`` as a string, ``imUrl``).
``amazon2023``  Amazon Reviews'23 (Hou et al. 2024), JSON lines: ``parent_asin`` (the product: the 2023 release
                groups a product's variants under it), ``asin``, ``user_id``, ``timestamp`` (ms), ``title``,
                ``text``, ``helpful_vote`` (int), ``rating``, ``images`` (a list of dicts; ``large_image_url`` is
                kept), ``verified_purchase``. Optional ``--metadata`` (``meta_*.jsonl``): ``parent_asin``,
                ``title``, ``description`` (a list of strings), ``features`` (a list of strings, part of the
                product text only with ``--metadata-features``), ``images`` (dicts; ``hi_res`` or ``large``).
``finefood``    SNAP Amazon Fine Food reviews as CSV (the Kaggle ``Reviews.csv``): ``Id``, ``ProductId``,
                ``UserId``, ``HelpfulnessNumerator`` (helpful votes), ``HelpfulnessDenominator`` (all votes),
                ``Score``, ``Time``, ``Summary``, ``Text``. There is no product text and no image.
``yelp``        Yelp Open Dataset reviews, JSON lines: ``review_id``, ``business_id`` (the product), ``text``,
                ``useful`` (votes), ``stars``; optional ``--business`` JSON lines (``business_id``, ``name``,
                ``categories``) give the product text ``name + " " + categories``.
``csv``         any CSV / TSV (``.csv``, ``.tsv``) or JSON-lines (``.jsonl``, ``.json``, ``.ndjson``) file with a
                column mapping (:func:`parse_column_mapping`): ``product``, ``text`` (one or more columns,
                joined by a newline) and ``votes`` are required; ``review`` (default: ``line N``), ``rating``,
                ``product_text`` and ``images`` / ``product_images`` (a JSON list, or ``|``-separated) optional.

Review text of the Amazon formats is ``summary + "\\n" + reviewText`` (the title is part of what a reader sees);
HTML line breaks (``<br />``, common in Fine Food) become newlines.

De-duplication (Amazon formats). The 2018 and 2014 dumps repeat one review once per style variant: the copies
share reviewer, time, summary and text but sit under several ``asin``\\ s (variants of one product) and sometimes
twice under the same one; Fine Food has the same duplicates. Copies are collapsed into one review (file order of
the first copy; votes = the largest count among the copies, and copies whose counts differ are counted), and the
ids that share a review are merged into one product (connected components; the product id is the smallest id),
so no review is in two products and no product is split across train and test.

Labels: ``votes_to_level`` (``--votes-scheme``: ``log2`` = ``min(4, floor(log2(1 + votes)))`` by default).
Products: at least ``min_reviews`` reviews; with ``drop_single_level`` the products whose reviews all share one
level are dropped too (every ranking of them scores the same). Split by product with
:func:`~mrhp.data.jsonl.split_products` (seeded). Image URLs are kept as references only: they cannot be fetched
offline, so those items have no image features, and the report says so.

Errors: a malformed line (bad JSON, bytes that are not UTF-8, a CSV record with the wrong number of fields), a
missing required field or a bad value raises ``DataError`` naming the file, the line and the field. With
``lenient=True`` such records are skipped instead, counted by reason, and the first ones listed in the report.
A missing column in a CSV header is always an error.
"""

from __future__ import annotations

import ast
import csv
import gzip
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mrhp.data.records import (
    SPLIT_NAMES,
    VOTE_SCHEMES,
    RawDataset,
    RawProduct,
    RawReview,
    RawSplit,
    split_products,
    votes_to_level,
)
from mrhp.errors import DataError, MrhpError

logger = logging.getLogger(__name__)

DUMP_FORMATS = ("amazon2018", "amazon2014", "amazon2023", "finefood", "yelp", "csv")
# Formats whose --metadata file gives the product side.
METADATA_FORMATS = ("amazon2018", "amazon2014", "amazon2023")
# Formats whose review copies are collapsed (and products sharing a copy merged): see merge_variants.
MERGED_FORMATS = ("amazon2018", "amazon2014", "amazon2023", "finefood")
COLUMN_KEYS = ("product", "review", "text", "votes", "rating", "product_text", "images", "product_images")
REQUIRED_COLUMNS = ("product", "text", "votes")
FINEFOOD_COLUMNS = ("Id", "ProductId", "UserId", "HelpfulnessNumerator", "HelpfulnessDenominator", "Score", "Time",
                    "Summary", "Text")

# How many skipped records the report lists (all are counted).
SKIPS_LISTED = 10

_BR_RE = re.compile(r"<br\s*/?>", re.IGNORECASE)
# A vote count: plain digits, or digits with thousands separators ("1,024").
_VOTES_RE = re.compile(r"\d{1,3}(?:,\d{3})+|\d+")


class RecordError(DataError):
    """A bad input record; ``reason`` is the short category under which lenient mode counts it."""

    def __init__(self, message: str, reason: str, *, file: object, line: int | None, field: str | None = None):
        super().__init__(message, file=file, line=line, field=field)
        self.reason = reason


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

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class DumpReview:
    """One review as read from a dump, before de-duplication and labelling.

    ``key`` identifies the copies of one review (reviewer, time, summary, text) in the Amazon formats, None when
    the review cannot have copies. ``where`` is ``"FILE line N"`` for messages.
    """

    product_id: str
    review_id: str
    text: str
    votes: int
    rating: float | None
    images: tuple[str, ...]
    where: str
    key: tuple | None = None


@dataclass
class DumpProduct:
    """Product side from a metadata / business file (or a csv column): text and image URL references."""

    text: str
    images: tuple[str, ...] = ()


@dataclass(frozen=True)
class ColumnMapping:
    """Which input column holds what (``csv`` format). ``text`` may name several columns (joined by newline)."""

    product: str
    text: tuple[str, ...]
    votes: str
    review: str | None = None
    rating: str | None = None
    product_text: str | None = None
    images: str | None = None
    product_images: str | None = None

    def columns(self) -> list[tuple[str, str]]:
        """``(key, column)`` for every mapped column."""
        pairs = [("product", self.product), *(("text", c) for c in self.text), ("votes", self.votes)]
        for key in ("review", "rating", "product_text", "images", "product_images"):
            if getattr(self, key) is not None:
                pairs.append((key, getattr(self, key)))
        return pairs


def parse_column_mapping(items: Sequence[str]) -> ColumnMapping:
    """Parse ``KEY=COLUMN`` items (e.g. ``product=asin text=title,body votes=helpful``) into a mapping.

    Keys are :data:`COLUMN_KEYS`; ``text`` takes a comma-separated list of columns. ``MrhpError`` for an unknown or
    repeated key, an empty column name, or a missing required key (:data:`REQUIRED_COLUMNS`).
    """
    values: dict[str, str | tuple[str, ...]] = {}
    for item in items:
        key, sep, column = item.partition("=")
        key, column = key.strip(), column.strip()
        if not sep or key not in COLUMN_KEYS:
            raise MrhpError(f"--columns {item!r}: expected KEY=COLUMN with KEY one of {', '.join(COLUMN_KEYS)}")
        if key in values:
            raise MrhpError(f"--columns: {key!r} given twice")
        names = tuple(c.strip() for c in column.split(",")) if key == "text" else (column,)
        if not names or any(not c for c in names):
            raise MrhpError(f"--columns {item!r}: empty column name")
        values[key] = names if key == "text" else names[0]
    missing = [key for key in REQUIRED_COLUMNS if key not in values]
    if missing:
        raise MrhpError(f"--columns needs {', '.join(k + '=COLUMN' for k in missing)} (required: "
                        f"{', '.join(REQUIRED_COLUMNS)})")
    return ColumnMapping(**values)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------------
# Reading lines and values


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


def _json_objects(path: Path, skips: SkipLog, python_literals: bool = False) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` per non-blank JSON line; malformed lines are errors or counted skips."""
    for line_no, line in _text_lines(path, skips):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
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


def _csv_records(path: Path, skips: SkipLog, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """``(first line number, {column: value})`` per CSV/TSV record (quoted fields may span lines).

    The header must hold every column of ``required`` (always an error otherwise, naming the missing ones). A
    record with a different number of fields than the header, or holding a line that is not UTF-8, is an error
    or a counted skip.
    """
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


def _parse_votes(value: object, path: Path, line: int, name: str) -> int:
    """A vote count >= 0 from an int, an integral float or a string such as ``"12"`` or ``"1,024"``."""
    if isinstance(value, bool):
        pass
    elif isinstance(value, int) and value >= 0:
        return value
    elif isinstance(value, float) and value >= 0 and value.is_integer():
        return int(value)
    elif isinstance(value, str) and _VOTES_RE.fullmatch(value.strip()):
        return int(value.strip().replace(",", ""))
    raise RecordError(f"expected a vote count (an integer >= 0, e.g. 12 or \"1,024\"), got {value!r}", f"bad {name}",
                      file=path, line=line, field=name)


def _parse_rating(value: object, path: Path, line: int, name: str) -> float | None:
    """A star rating (finite number), None for an absent or empty value."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        rating = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        rating = math.nan
    if not math.isfinite(rating):
        raise RecordError(f"expected a number, got {value!r}", f"bad {name}", file=path, line=line, field=name)
    return rating


def _required(obj: dict, name: str, path: Path, line: int) -> object:
    if name not in obj or obj[name] is None:
        raise RecordError("missing required field", f"missing {name}", file=path, line=line, field=name)
    return obj[name]


def _id_value(value: object, path: Path, line: int, name: str) -> str:
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise RecordError(f"expected a non-empty id, got {value!r}", f"bad {name}", file=path, line=line, field=name)


def _string(obj: dict, name: str, path: Path, line: int) -> str:
    """An optional string field ("" when absent or null)."""
    value = obj.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RecordError(f"expected a string, got {json.dumps(value)[:60]}", f"bad {name}", file=path, line=line,
                          field=name)
    return value


def _urls(value: object, path: Path, line: int, name: str) -> tuple[str, ...]:
    """Image references: a list of strings, a JSON list in a string, a ``|``-separated string, or empty."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                raise RecordError("not a JSON list of image references", f"bad {name}", file=path, line=line,
                                  field=name) from None
        else:
            return tuple(part.strip() for part in text.split("|") if part.strip())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(v.strip() for v in value if v.strip())
    raise RecordError(f"expected a list of image references, got {json.dumps(value)[:60]}", f"bad {name}",
                      file=path, line=line, field=name)


def _join(*parts: str) -> str:
    return "\n".join(part for part in (p.strip() for p in parts) if part)


def _clean_html(text: str) -> str:
    return _BR_RE.sub("\n", text)


# ----------------------------------------------------------------------------------------------------------------
# Format readers: each returns the reviews, the product side it knows, and counts for the report


def _read_amazon(path: Path, skips: SkipLog, version: int, notes: Counter) -> list[DumpReview]:
    """Reviews of an Amazon 2018 (``vote``) or 2014 (``helpful``) dump."""
    reviews: list[DumpReview] = []
    for line_no, obj in _json_objects(path, skips, python_literals=version == 2014):
        try:
            asin = _id_value(_required(obj, "asin", path, line_no), path, line_no, "asin")
            if version == 2018:
                votes = _parse_votes(obj["vote"], path, line_no, "vote") if obj.get("vote") is not None else 0
                notes["reviews without a vote field (0 votes)"] += obj.get("vote") is None
            else:
                helpful = _required(obj, "helpful", path, line_no)
                if not isinstance(helpful, list) or len(helpful) != 2:
                    raise RecordError(f"expected [helpful votes, total votes], got {json.dumps(helpful)[:60]}",
                                      "bad helpful", file=path, line=line_no, field="helpful")
                votes = _parse_votes(helpful[0], path, line_no, "helpful")
                total = _parse_votes(helpful[1], path, line_no, "helpful")
                notes["reviews with more helpful than total votes (kept)"] += votes > total
            summary = _string(obj, "summary", path, line_no)
            body = _string(obj, "reviewText", path, line_no)
            notes["reviews without reviewText (summary only)"] += "reviewText" not in obj
            rating = _parse_rating(obj.get("overall"), path, line_no, "overall")
            images = _urls(obj.get("image"), path, line_no, "image")
            reviewer = obj.get("reviewerID")
            time = obj.get("unixReviewTime")
        except RecordError as error:
            skips.skip(error)
            continue
        text = _clean_html(_join(summary, body))
        key = None if reviewer is None else (str(reviewer), str(time), summary, body)
        review_id = f"{asin}:{reviewer}:{time}" if reviewer is not None else f"{path.name}:line{line_no}"
        reviews.append(DumpReview(asin, review_id, text, votes, rating, images, f"{path} line {line_no}", key))
    return reviews


def _read_amazon_metadata(path: Path, skips: SkipLog, notes: Counter) -> dict[str, DumpProduct]:
    """Product text ``title + " " + description`` and image URLs from a 2018 or 2014 metadata file."""
    products: dict[str, DumpProduct] = {}
    for line_no, obj in _json_objects(path, skips, python_literals=True):
        try:
            asin = _id_value(_required(obj, "asin", path, line_no), path, line_no, "asin")
            title = _string(obj, "title", path, line_no)
            description = obj.get("description") or ""
            if isinstance(description, list) and all(isinstance(d, str) for d in description):
                description = " ".join(description)
            elif not isinstance(description, str):
                raise RecordError("expected a string or a list of strings", "bad description", file=path,
                                  line=line_no, field="description")
            images: tuple[str, ...] = ()
            for name in ("imageURLHighRes", "imageURL", "imUrl"):
                if obj.get(name):
                    images = _urls(obj[name], path, line_no, name)
                    break
        except RecordError as error:
            skips.skip(error)
            continue
        if asin in products:
            notes["metadata lines repeating an asin (first kept)"] += 1
            continue
        products[asin] = DumpProduct(_clean_html(_join(title, description)), images)
    return products


def _image_dict_urls(value: object, keys: Sequence[str], path: Path, line: int, name: str) -> tuple[str, ...]:
    """URLs from a 2023-style image list (``[{"large_image_url": ...}, ...]``): per image, the first of ``keys``
    that is set. An absent or empty list gives ``()``."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise RecordError(f"expected a list of image objects, got {json.dumps(value)[:60]}", f"bad {name}",
                          file=path, line=line, field=name)
    urls = []
    for image in value:
        url = next((image[k] for k in keys if isinstance(image.get(k), str) and image[k].strip()), None)
        if url is not None:
            urls.append(url.strip())
    return tuple(urls)


def _string_list(obj: dict, name: str, path: Path, line: int) -> str:
    """An optional field holding a list of strings (or one string), joined by spaces ("" when absent)."""
    value = obj.get(name)
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return " ".join(v.strip() for v in value if v.strip())
    raise RecordError("expected a string or a list of strings", f"bad {name}", file=path, line=line, field=name)


def _read_amazon2023(path: Path, skips: SkipLog, notes: Counter) -> list[DumpReview]:
    """Reviews of an Amazon Reviews'23 file, grouped by ``parent_asin``."""
    reviews: list[DumpReview] = []
    for line_no, obj in _json_objects(path, skips):
        try:
            parent = _id_value(_required(obj, "parent_asin", path, line_no), path, line_no, "parent_asin")
            votes = _parse_votes(_required(obj, "helpful_vote", path, line_no), path, line_no, "helpful_vote")
            title = _string(obj, "title", path, line_no)
            body = _string(obj, "text", path, line_no)
            rating = _parse_rating(obj.get("rating"), path, line_no, "rating")
            images = _image_dict_urls(obj.get("images"), ("large_image_url", "medium_image_url", "small_image_url"),
                                      path, line_no, "images")
            user = obj.get("user_id")
            time = obj.get("timestamp")
        except RecordError as error:
            skips.skip(error)
            continue
        notes["reviews without a user_id (never de-duplicated)"] += user is None
        key = None if user is None else (str(user), str(time), title, body)
        review_id = f"{parent}:{user}:{time}" if user is not None else f"{path.name}:line{line_no}"
        text = _clean_html(_join(title, body))
        reviews.append(DumpReview(parent, review_id, text, votes, rating, images, f"{path} line {line_no}", key))
    return reviews


def _read_amazon2023_metadata(path: Path, skips: SkipLog, notes: Counter, features: bool) -> dict[str, DumpProduct]:
    """Product text ``title + description`` (``+ features`` when asked) and image URLs of a ``meta_*.jsonl``."""
    products: dict[str, DumpProduct] = {}
    for line_no, obj in _json_objects(path, skips):
        try:
            parent = _id_value(_required(obj, "parent_asin", path, line_no), path, line_no, "parent_asin")
            title = _string(obj, "title", path, line_no)
            description = _string_list(obj, "description", path, line_no)
            listed = _string_list(obj, "features", path, line_no) if features else ""
            images = _image_dict_urls(obj.get("images"), ("hi_res", "large"), path, line_no, "images")
        except RecordError as error:
            skips.skip(error)
            continue
        if parent in products:
            notes["metadata lines repeating a parent_asin (first kept)"] += 1
            continue
        products[parent] = DumpProduct(_clean_html(_join(title, description, listed)), images)
    return products


def _read_finefood(path: Path, skips: SkipLog, notes: Counter) -> list[DumpReview]:
    reviews: list[DumpReview] = []
    for line_no, row in _csv_records(path, skips, FINEFOOD_COLUMNS):
        try:
            product = _id_value(row["ProductId"], path, line_no, "ProductId")
            review_id = _id_value(row["Id"], path, line_no, "Id")
            votes = _parse_votes(row["HelpfulnessNumerator"], path, line_no, "HelpfulnessNumerator")
            total = _parse_votes(row["HelpfulnessDenominator"], path, line_no, "HelpfulnessDenominator")
            rating = _parse_rating(row["Score"], path, line_no, "Score")
        except RecordError as error:
            skips.skip(error)
            continue
        notes["reviews with more helpful than total votes (kept)"] += votes > total
        notes["reviews without a Score (rating unknown)"] += rating is None
        text = _clean_html(_join(row["Summary"], row["Text"]))
        key = (row["UserId"], row["Time"], row["Summary"], row["Text"]) if row["UserId"].strip() else None
        reviews.append(DumpReview(product, review_id, text, votes, rating, (), f"{path} line {line_no}", key))
    return reviews


def _read_yelp(path: Path, skips: SkipLog) -> list[DumpReview]:
    reviews: list[DumpReview] = []
    for line_no, obj in _json_objects(path, skips):
        try:
            business = _id_value(_required(obj, "business_id", path, line_no), path, line_no, "business_id")
            review_id = _id_value(_required(obj, "review_id", path, line_no), path, line_no, "review_id")
            text = _required(obj, "text", path, line_no)
            if not isinstance(text, str):
                raise RecordError("expected a string", "bad text", file=path, line=line_no, field="text")
            votes = _parse_votes(_required(obj, "useful", path, line_no), path, line_no, "useful")
            rating = _parse_rating(obj.get("stars"), path, line_no, "stars")
        except RecordError as error:
            skips.skip(error)
            continue
        reviews.append(DumpReview(business, review_id, text, votes, rating, (), f"{path} line {line_no}"))
    return reviews


def _read_yelp_business(path: Path, skips: SkipLog) -> dict[str, DumpProduct]:
    products: dict[str, DumpProduct] = {}
    for line_no, obj in _json_objects(path, skips):
        try:
            business = _id_value(_required(obj, "business_id", path, line_no), path, line_no, "business_id")
            name = _string(obj, "name", path, line_no)
            categories = _string(obj, "categories", path, line_no)
        except RecordError as error:
            skips.skip(error)
            continue
        if business in products:
            skips.skip(RecordError(f"duplicate business {business!r}", "duplicate business", file=path, line=line_no,
                                   field="business_id"))
            continue
        products[business] = DumpProduct(_join(name, categories))
    return products


def _read_table(path: Path, skips: SkipLog, columns: ColumnMapping) -> tuple[list[DumpReview], dict[str, DumpProduct]]:
    """Reviews (and product text / images from their columns) of a CSV/TSV or JSON-lines file."""
    suffixes = [s for s in path.suffixes if s != ".gz"]
    kind = suffixes[-1].lower() if suffixes else ""
    if kind in (".csv", ".tsv"):
        records: Iterator[tuple[int, dict]] = _csv_records(path, skips, [c for _, c in columns.columns()])
    elif kind in (".jsonl", ".json", ".ndjson"):
        records = _json_objects(path, skips)
    else:
        raise DataError("--format csv reads .csv, .tsv, .jsonl, .json or .ndjson files (optionally .gz)", file=path)
    reviews: list[DumpReview] = []
    products: dict[str, DumpProduct] = {}
    for line_no, row in records:
        try:
            product = _id_value(_required(row, columns.product, path, line_no), path, line_no, columns.product)
            review_id = (_id_value(_required(row, columns.review, path, line_no), path, line_no, columns.review)
                         if columns.review is not None else f"line{line_no}")
            texts = []
            for column in columns.text:
                value = row.get(column)
                if value is not None and not isinstance(value, str):
                    raise RecordError("expected a string", f"bad {column}", file=path, line=line_no, field=column)
                texts.append(value or "")
            votes = _parse_votes(_required(row, columns.votes, path, line_no), path, line_no, columns.votes)
            rating = (_parse_rating(row.get(columns.rating), path, line_no, columns.rating)
                      if columns.rating is not None else None)
            images = _urls(row.get(columns.images), path, line_no, columns.images) if columns.images else ()
            side = None
            if columns.product_text is not None or columns.product_images is not None:
                side = DumpProduct(
                    _string(row, columns.product_text, path, line_no) if columns.product_text else "",
                    _urls(row.get(columns.product_images), path, line_no, columns.product_images)
                    if columns.product_images else (),
                )
                known = products.get(product)
                if known is not None and known != side:
                    raise RecordError(f"product {product!r} has another text or images than on an earlier line",
                                      "inconsistent product", file=path, line=line_no,
                                      field=columns.product_text or columns.product_images)
        except RecordError as error:
            skips.skip(error)
            continue
        if side is not None:
            products.setdefault(product, side)
        reviews.append(DumpReview(product, review_id, _join(*texts), votes, rating, images, f"{path} line {line_no}"))
    return reviews, products


# ----------------------------------------------------------------------------------------------------------------
# De-duplication, labels, filters, split


def merge_variants(reviews: Sequence[DumpReview]) -> tuple[list[DumpReview], dict[str, str], Counter]:
    """Collapse copies of one review (same ``key``) and merge the products that share a review.

    Returns ``(reviews, product_of, counts)``: each review once (the first copy, with the largest vote count of
    its copies and its product id replaced by the merged product's id), ``product_of`` mapping every input
    product id to its merged id (the smallest id of its connected component), and counts for the report.
    """
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # path halving keeps the trees flat
            x = parent[x]
        return x

    first: dict[tuple, DumpReview] = {}
    copies: dict[tuple, list[DumpReview]] = {}
    for review in reviews:
        find(review.product_id)
        if review.key is None:
            continue
        if review.key in first:
            a, b = find(first[review.key].product_id), find(review.product_id)
            if a != b:
                parent[max(a, b)] = min(a, b)
            copies[review.key].append(review)
        else:
            first[review.key] = review
            copies[review.key] = [review]
    product_of = {pid: find(pid) for pid in parent}
    counts: Counter = Counter()
    kept: list[DumpReview] = []
    for review in reviews:
        if review.key is not None and first[review.key] is not review:
            counts["duplicate review copies removed"] += 1
            continue
        group = copies[review.key] if review.key is not None else [review]
        votes = {c.votes for c in group}
        counts["duplicated reviews whose copies have different votes (largest kept)"] += len(votes) > 1
        kept.append(DumpReview(product_of[review.product_id], review.review_id, review.text, max(votes),
                               review.rating, review.images, review.where, review.key))
    merged = Counter(product_of.values())
    counts["products merged from several ids (variants)"] = sum(1 for n in merged.values() if n > 1)
    counts["ids merged into another product"] = sum(n - 1 for n in merged.values())
    return kept, product_of, counts


def _unique_review_ids(reviews: list[DumpReview]) -> int:
    """Make review ids unique by adding the line to a repeated id (Amazon ids are built from reviewer and
    time); returns how many were renamed. Formats with a review id column raise ``DataError`` instead."""
    seen: set[str] = set()
    renamed = 0
    for review in reviews:
        if review.review_id in seen:
            review.review_id = f"{review.review_id}:{review.where.rsplit(' ', 1)[-1]}"
            renamed += 1
        seen.add(review.review_id)
    return renamed


def _check_unique_review_ids(reviews: list[DumpReview], name: str) -> None:
    seen: dict[str, str] = {}
    for review in reviews:
        if review.review_id in seen:
            file, _, line = review.where.rpartition(" line ")
            raise DataError(f"duplicate review id {review.review_id!r} (also {seen[review.review_id]})", file=file,
                            line=int(line), field=name)
        seen[review.review_id] = review.where


def _split_report(split: RawSplit, threshold: int) -> dict:
    by_product: dict[str, list[int]] = {}
    for review in split.reviews:
        by_product.setdefault(review.product_id, []).append(review.label)
    sizes = np.array([len(v) for v in by_product.values()], dtype=np.int64)
    labels = np.array([r.label for r in split.reviews], dtype=np.int64)
    return {
        "products": len(split.products),
        "reviews": len(split.reviews),
        "reviews_per_product": {"min": int(sizes.min()), "mean": float(sizes.mean()), "max": int(sizes.max())},
        "label_histogram": [int(c) for c in np.bincount(labels, minlength=5)],
        "rankable_products": sum(1 for v in by_product.values() if len(set(v)) > 1),
        "products_with_a_relevant_review": sum(1 for v in by_product.values() if max(v) > threshold),
        "reviews_with_rating": sum(1 for r in split.reviews if r.rating is not None),
        "reviews_with_image_urls": sum(1 for r in split.reviews if r.image_refs),
        "products_with_image_urls": sum(1 for p in split.products if p.image_refs),
    }


def read_dump(
    fmt: str,
    input_path: str | Path,
    *,
    metadata: str | Path | None = None,
    metadata_features: bool = False,
    business: str | Path | None = None,
    columns: ColumnMapping | None = None,
    lenient: bool = False,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    votes_scheme: str = "log2",
    max_level: int = 4,
    min_reviews: int = 2,
    drop_single_level: bool = False,
    relevance_threshold: int = 1,
) -> RawDataset:
    """Read a public review dump (see the module docstring) into a raw dataset split by product.

    Args:
        fmt: one of :data:`DUMP_FORMATS`.
        input_path: the reviews file.
        metadata: Amazon metadata file (:data:`METADATA_FORMATS`), for product text and image URLs.
        metadata_features: ``amazon2023``: add the metadata's ``features`` list to the product text.
        business: Yelp business file (``yelp``), for product text.
        columns: the column mapping (``csv``; required there).
        lenient: skip and count malformed records instead of failing on the first.
        fractions, seed: train/dev/test fractions of products and the seed of the split.
        votes_scheme, max_level: vote count -> level mapping (:func:`~mrhp.data.jsonl.votes_to_level`).
        min_reviews: products with fewer reviews (after de-duplication) are dropped.
        drop_single_level: also drop products whose reviews all have the same level.
        relevance_threshold: only for the report's count of products with a relevant review (label > it).

    Returns:
        The raw dataset; ``notes`` holds the conversion report (:func:`format_dump_report`).
    """
    if fmt not in DUMP_FORMATS:
        raise MrhpError(f"unknown dump format {fmt!r} (choose from {', '.join(DUMP_FORMATS)})")
    if votes_scheme not in VOTE_SCHEMES:
        raise MrhpError(f"unknown votes scheme {votes_scheme!r} (choose from {', '.join(VOTE_SCHEMES)})")
    if min_reviews < 1:
        raise MrhpError(f"min_reviews must be >= 1, got {min_reviews}")
    if metadata is not None and fmt not in METADATA_FORMATS:
        raise MrhpError(f"--metadata is for the {' / '.join(METADATA_FORMATS)} formats, not {fmt}")
    if metadata_features and (fmt != "amazon2023" or metadata is None):
        raise MrhpError("--metadata-features is for --format amazon2023 with --metadata")
    if business is not None and fmt != "yelp":
        raise MrhpError(f"--business is for the yelp format, not {fmt}")
    if (columns is None) == (fmt == "csv"):
        raise MrhpError("--columns is required for --format csv and only used there")
    input_path = Path(input_path)
    skips = SkipLog(lenient)
    counts: Counter = Counter()
    products: dict[str, DumpProduct] = {}
    if fmt in ("amazon2018", "amazon2014"):
        reviews = _read_amazon(input_path, skips, 2018 if fmt == "amazon2018" else 2014, counts)
        if metadata is not None:
            products = _read_amazon_metadata(Path(metadata), skips, counts)
    elif fmt == "amazon2023":
        reviews = _read_amazon2023(input_path, skips, counts)
        if metadata is not None:
            products = _read_amazon2023_metadata(Path(metadata), skips, counts, metadata_features)
    elif fmt == "finefood":
        reviews = _read_finefood(input_path, skips, counts)
    elif fmt == "yelp":
        reviews = _read_yelp(input_path, skips)
        if business is not None:
            products = _read_yelp_business(Path(business), skips)
    else:
        assert columns is not None
        reviews, products = _read_table(input_path, skips, columns)
    read = len(reviews)

    if fmt in MERGED_FORMATS:
        reviews, product_of, merge_counts = merge_variants(reviews)
        counts.update(merge_counts)
        # A merged product takes the metadata of its smallest id that has some.
        merged_products: dict[str, DumpProduct] = {}
        for pid in sorted(product_of):
            if pid in products:
                merged_products.setdefault(product_of[pid], products[pid])
        products = merged_products
        counts["review ids made unique with the line number"] += _unique_review_ids(reviews)
    else:
        _check_unique_review_ids(reviews, "review_id" if fmt == "yelp" else columns.review or "review")
    if business is not None:
        unknown = [r for r in reviews if r.product_id not in products]
        for review in unknown:
            file, _, line = review.where.rpartition(" line ")
            skips.skip(RecordError(f"business {review.product_id!r} is not in {Path(business).name}",
                                   "unknown business", file=file, line=int(line), field="business_id"))
        reviews = [r for r in reviews if r.product_id in products]

    by_product: dict[str, list[DumpReview]] = {}
    for review in reviews:
        by_product.setdefault(review.product_id, []).append(review)
    levels = {pid: [votes_to_level(r.votes, votes_scheme, max_level) for r in rs] for pid, rs in by_product.items()}
    few = [pid for pid, rs in by_product.items() if len(rs) < min_reviews]
    single = [pid for pid in by_product if pid not in set(few) and len(set(levels[pid])) == 1]
    dropped = set(few) | (set(single) if drop_single_level else set())
    kept_ids = [pid for pid in by_product if pid not in dropped]
    if not kept_ids:
        raise DataError(f"no product is left after the filters ({len(by_product)} products read, {len(few)} with "
                        f"fewer than {min_reviews} reviews, {len(single)} with a single level)", file=input_path)
    try:
        assignment = split_products(kept_ids, fractions, seed)
    except ValueError as exc:
        raise MrhpError(f"--split-fractions: {exc}") from None
    if metadata is not None:
        counts["products without a metadata line (empty product text)"] = sum(p not in products for p in kept_ids)
    splits = {name: RawSplit(name, [], []) for name in SPLIT_NAMES}
    for pid in kept_ids:
        side = products.get(pid, DumpProduct(""))
        split = splits[assignment[pid]]
        split.products.append(RawProduct(pid, side.text, None, image_refs=side.images))
        for review, label in zip(by_product[pid], levels[pid]):
            split.reviews.append(RawReview(review.review_id, pid, review.text, label, None, rating=review.rating,
                                           image_refs=review.images))
    splits = {name: s for name, s in splits.items() if s.products}
    if "train" not in splits:
        raise DataError("the split leaves no product for train; give more products or other --split-fractions",
                        file=input_path)

    with_urls = sum(1 for s in splits.values() for item in [*s.products, *s.reviews] if item.image_refs)
    notes = {
        "dump": {
            "format": fmt,
            "records_read": read,
            "skipped": dict(skips.counts),
            "skipped_listed": list(skips.examples),
            "counts": {k: int(v) for k, v in counts.items() if v},
            "products_read": len(by_product),
            "products_dropped_min_reviews": len(few),
            "reviews_dropped_min_reviews": sum(len(by_product[p]) for p in few),
            "single_level_products": len(single),
            "single_level_products_dropped": len(single) if drop_single_level else 0,
            "reviews_dropped_single_level": sum(len(by_product[p]) for p in single) if drop_single_level else 0,
            "min_reviews": min_reviews,
            "votes_scheme": votes_scheme,
            "items_with_image_urls": with_urls,
            "image_note": ("image URLs are kept as references only: they cannot be fetched offline, so these items "
                           "have no image features") if with_urls else None,
            "splits": {name: _split_report(s, relevance_threshold) for name, s in splits.items()},
        }
    }
    raw = RawDataset(
        source={
            "format": fmt,
            "path": str(input_path),
            "metadata": str(metadata) if metadata is not None else None,
            "metadata_features": metadata_features,
            "business": str(business) if business is not None else None,
            "columns": dict(columns.columns()) if columns is not None else None,
            "fractions": list(fractions),
            "seed": seed,
            "votes_scheme": votes_scheme,
            "max_level": max_level,
            "min_reviews": min_reviews,
            "drop_single_level": drop_single_level,
            "lenient": lenient,
        },
        splits=splits,
        notes=notes,
    )
    raw.validate()
    logger.info("read %d reviews of %d products from %s (%d skipped)", read, len(by_product), input_path,
                skips.total)
    return raw
