"""The format readers of the public review dumps (the formats are described in :mod:`mrhp.data.dumps`): the record
of a dump with its value parsers (vote counts, times, ratings, image references), the column mapping of the ``csv``
format, and one reader per format, each returning the reviews, the product side it knows, and counts for the report.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from mrhp import jsontext
from mrhp.data.dump_files import SkipLog, csv_records, json_objects
from mrhp.data.dump_pipeline import DumpProduct, DumpReview
from mrhp.data.records import Fields, RecordError
from mrhp.errors import DataError, MrhpError

COLUMN_KEYS = ("product", "review", "text", "votes", "rating", "time", "product_text", "images", "product_images")
REQUIRED_COLUMNS = ("product", "text", "votes")
FINEFOOD_COLUMNS = ("Id", "ProductId", "UserId", "HelpfulnessNumerator", "HelpfulnessDenominator", "Score", "Time",
                    "Summary", "Text")

_BR_RE = re.compile(r"<br\s*/?>", re.IGNORECASE)
# A vote count: plain digits, or digits with thousands separators ("1,024").
_VOTES_RE = re.compile(r"\d{1,3}(?:,\d{3})+|\d+")


@dataclass(frozen=True)
class ColumnMapping:
    """Which input column holds what (``csv`` format). ``text`` may name several columns (joined by newline)."""

    product: str
    text: tuple[str, ...]
    votes: str
    review: str | None = None
    rating: str | None = None
    time: str | None = None
    product_text: str | None = None
    images: str | None = None
    product_images: str | None = None

    def columns(self) -> list[tuple[str, str]]:
        """``(key, column)`` for every mapped column."""
        pairs = [("product", self.product), *(("text", c) for c in self.text), ("votes", self.votes)]
        for key in ("review", "rating", "time", "product_text", "images", "product_images"):
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
# Reading records and values


def _parse_votes(value: object, path: Path, line: int, name: str) -> int:
    """A vote count >= 0 from an int, an integral float or a string such as ``"12"`` or ``"1,024"``; ``value`` is
    field ``name`` or, as in ``helpful: [votes, total]``, a part of it."""
    if isinstance(value, bool):
        pass
    elif isinstance(value, int) and value >= 0:
        return value
    elif isinstance(value, float) and value >= 0 and value.is_integer():
        return int(value)
    elif isinstance(value, str) and _VOTES_RE.fullmatch(value.strip()) and jsontext.integer_text_fits(value):
        return int(value.strip().replace(",", ""))
    raise RecordError(f"expected a vote count (an integer >= 0, e.g. 12 or \"1,024\"), got {value!r}", f"bad {name}",
                      file=path, line=line, field=name)


class _DumpFields(Fields):
    """A record of a dump: the dumps write null for "no value" and pad their ids, so null is absent and ids are
    stripped; plus the dumps' own values (vote counts, ratings, image URL references)."""

    __slots__ = ()

    def __init__(self, values: Mapping[str, object], file: Path, line: int) -> None:
        super().__init__(values, file, line, null_is_absent=True, strip_ids=True)

    @property
    def where(self) -> str:
        """``"FILE line N"``: where a review came from (:attr:`DumpReview.where`)."""
        return f"{self.file} line {self.line}"

    def text(self, name: str) -> str:
        """An optional string field, "" when absent."""
        return self.string(name, required=False) or ""

    def votes(self, name: str) -> int:
        return _parse_votes(self.required(name), self.file, self.line, name)

    def time(self, name: str, per_second: int = 1) -> int | None:
        """A review time in whole seconds since the epoch (UTC) from an integer count of ``1 / per_second``
        seconds (``per_second=1000`` for milliseconds); None for an absent or empty value."""
        value = self.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        elif isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.error(f"expected a time as an integer >= 0 (since 1970, UTC), got {json.dumps(value)[:60]}",
                             name)
        return value // per_second

    def date_time(self, name: str) -> int | None:
        """A time written as an ISO date (``"2016-03-09 00:44:42"``, UTC) in seconds since the epoch; None for an
        absent or empty value."""
        value = self.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        try:
            moment = datetime.fromisoformat(value.strip()) if isinstance(value, str) else None
        except ValueError:
            moment = None
        if moment is None:
            raise self.error(f"expected a date such as \"2016-03-09 00:44:42\", got {json.dumps(value)[:60]}", name)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return int(moment.timestamp())

    def flag(self, name: str) -> bool | None:
        """An optional true/false field (None when absent)."""
        value = self.get(name)
        if value is None or isinstance(value, bool):
            return value
        raise self.error(f"expected true or false, got {json.dumps(value)[:60]}", name)

    def rating(self, name: str) -> float | None:
        """A star rating (finite number), None for an absent or empty value."""
        value = self.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        try:
            rating = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond float's range
            rating = math.nan
        if not math.isfinite(rating):
            raise self.error(f"expected a number, got {value!r}", name)
        return rating

    def urls(self, name: str) -> tuple[str, ...]:
        """Image references: a list of strings, a JSON list in a string, a ``|``-separated string, or empty."""
        value = self.get(name)
        if value is None or value == "":
            return ()
        if isinstance(value, str):
            text = value.strip()
            if not text.startswith("["):
                return tuple(part.strip() for part in text.split("|") if part.strip())
            try:
                value = jsontext.loads(text)
            except (json.JSONDecodeError, RecursionError):
                raise self.error("not a JSON list of image references", name) from None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(v.strip() for v in value if v.strip())
        raise self.error(f"expected a list of image references, got {json.dumps(value)[:60]}", name)

    def image_dict_urls(self, name: str, keys: Sequence[str]) -> tuple[str, ...]:
        """URLs from a 2023-style image list (``[{"large_image_url": ...}, ...]``): per image, the first of ``keys``
        that is set. An absent or empty list gives ``()``."""
        value = self.get(name)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.error(f"expected a list of image objects, got {json.dumps(value)[:60]}", name)
        urls = []
        for image in value:
            url = next((image[k] for k in keys if isinstance(image.get(k), str) and image[k].strip()), None)
            if url is not None:
                urls.append(url.strip())
        return tuple(urls)

    def string_list(self, name: str) -> str:
        """An optional field holding a list of strings (or one string), joined by spaces ("" when absent)."""
        value = self.get(name)
        if value is None:
            return ""
        if isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return " ".join(v.strip() for v in value if v.strip())
        raise self.error("expected a string or a list of strings", name)


def _json_records(path: Path, skips: SkipLog, python_literals: bool = False) -> Iterator[_DumpFields]:
    """The records of a JSON-lines file (:func:`~mrhp.data.dump_files.json_objects`)."""
    return (_DumpFields(obj, path, line) for line, obj in json_objects(path, skips, python_literals))


def _csv_records(path: Path, skips: SkipLog, required: Sequence[str]) -> Iterator[_DumpFields]:
    """The records of a CSV/TSV file (:func:`~mrhp.data.dump_files.csv_records`)."""
    return (_DumpFields(row, path, line) for line, row in csv_records(path, skips, required))


def _join(*parts: str) -> str:
    return "\n".join(part for part in (p.strip() for p in parts) if part)


def _clean_html(text: str) -> str:
    return _BR_RE.sub("\n", text)


# ----------------------------------------------------------------------------------------------------------------
# Format readers: each returns the reviews, the product side it knows, and counts for the report


def read_amazon(path: Path, skips: SkipLog, version: int, notes: Counter) -> list[DumpReview]:
    """Reviews of an Amazon 2018 (``vote``) or 2014 (``helpful``) dump."""
    reviews: list[DumpReview] = []
    for f in _json_records(path, skips, python_literals=version == 2014):
        with skips.guard():
            asin = f.id("asin")
            if version == 2018:
                votes = f.votes("vote") if f.has("vote") else 0
                notes["reviews without a vote field (0 votes)"] += not f.has("vote")
            else:
                helpful = f.required("helpful")
                if not isinstance(helpful, list) or len(helpful) != 2:
                    raise f.error(f"expected [helpful votes, total votes], got {json.dumps(helpful)[:60]}", "helpful")
                votes = _parse_votes(helpful[0], path, f.line, "helpful")
                total = _parse_votes(helpful[1], path, f.line, "helpful")
                notes["reviews with more helpful than total votes (kept)"] += votes > total
            summary = f.text("summary")
            body = f.text("reviewText")
            notes["reviews without reviewText (summary only)"] += "reviewText" not in f.values
            rating = f.rating("overall")
            images = f.urls("image")
            reviewer = f.get("reviewerID")
            time = f.get("unixReviewTime")
            key = None if reviewer is None else (str(reviewer), str(time), summary, body)
            review_id = f"{asin}:{reviewer}:{time}" if reviewer is not None else f"{path.name}:line{f.line}"
            text = _clean_html(_join(summary, body))
            seconds = f.time("unixReviewTime")
            notes["reviews without unixReviewTime (time unknown)"] += seconds is None
            verified = f.flag("verified") if version == 2018 else None
            reviews.append(DumpReview(asin, review_id, text, votes, rating, images, f.where, key, seconds, verified))
    return reviews


def read_amazon_metadata(path: Path, skips: SkipLog, notes: Counter) -> dict[str, DumpProduct]:
    """Product text ``title + " " + description`` and image URLs from a 2018 or 2014 metadata file."""
    products: dict[str, DumpProduct] = {}
    for f in _json_records(path, skips, python_literals=True):
        with skips.guard():
            asin = f.id("asin")
            title = f.text("title")
            description = f.get("description") or ""
            if isinstance(description, list) and all(isinstance(d, str) for d in description):
                description = " ".join(description)
            elif not isinstance(description, str):
                raise f.error("expected a string or a list of strings", "description")
            name = next((n for n in ("imageURLHighRes", "imageURL", "imUrl") if f.get(n)), None)
            images = f.urls(name) if name is not None else ()
            if asin in products:
                notes["metadata lines repeating an asin (first kept)"] += 1
            else:
                products[asin] = DumpProduct(_clean_html(_join(title, description)), images)
    return products


def read_amazon2023(path: Path, skips: SkipLog, notes: Counter) -> list[DumpReview]:
    """Reviews of an Amazon Reviews'23 file, grouped by ``parent_asin``."""
    reviews: list[DumpReview] = []
    for f in _json_records(path, skips):
        with skips.guard():
            parent = f.id("parent_asin")
            votes = f.votes("helpful_vote")
            title, body = f.text("title"), f.text("text")
            rating = f.rating("rating")
            images = f.image_dict_urls("images", ("large_image_url", "medium_image_url", "small_image_url"))
            user, time = f.get("user_id"), f.get("timestamp")
            notes["reviews without a user_id (never de-duplicated)"] += user is None
            key = None if user is None else (str(user), str(time), title, body)
            review_id = f"{parent}:{user}:{time}" if user is not None else f"{path.name}:line{f.line}"
            text = _clean_html(_join(title, body))
            seconds = f.time("timestamp", per_second=1000)
            notes["reviews without a timestamp (time unknown)"] += seconds is None
            reviews.append(DumpReview(parent, review_id, text, votes, rating, images, f.where, key, seconds,
                                      f.flag("verified_purchase")))
    return reviews


def read_amazon2023_metadata(path: Path, skips: SkipLog, notes: Counter, features: bool) -> dict[str, DumpProduct]:
    """Product text ``title + description`` (``+ features`` when asked) and image URLs of a ``meta_*.jsonl``."""
    products: dict[str, DumpProduct] = {}
    for f in _json_records(path, skips):
        with skips.guard():
            parent = f.id("parent_asin")
            text = _join(f.text("title"), f.string_list("description"), f.string_list("features") if features else "")
            images = f.image_dict_urls("images", ("hi_res", "large"))
            if parent in products:
                notes["metadata lines repeating a parent_asin (first kept)"] += 1
            else:
                products[parent] = DumpProduct(_clean_html(text), images)
    return products


def read_finefood(path: Path, skips: SkipLog, notes: Counter) -> list[DumpReview]:
    reviews: list[DumpReview] = []
    for f in _csv_records(path, skips, FINEFOOD_COLUMNS):
        with skips.guard():
            product, review_id = f.id("ProductId"), f.id("Id")
            votes, total = f.votes("HelpfulnessNumerator"), f.votes("HelpfulnessDenominator")
            rating = f.rating("Score")
            notes["reviews with more helpful than total votes (kept)"] += votes > total
            notes["reviews without a Score (rating unknown)"] += rating is None
            summary, body, user = f.text("Summary"), f.text("Text"), f.text("UserId")
            key = (user, f.text("Time"), summary, body) if user.strip() else None
            text = _clean_html(_join(summary, body))
            reviews.append(DumpReview(product, review_id, text, votes, rating, (), f.where, key, f.time("Time")))
    return reviews


def read_yelp(path: Path, skips: SkipLog) -> list[DumpReview]:
    reviews: list[DumpReview] = []
    for f in _json_records(path, skips):
        with skips.guard():
            business, review_id, text = f.id("business_id"), f.id("review_id"), f.string("text")
            reviews.append(DumpReview(business, review_id, text, f.votes("useful"), f.rating("stars"), (), f.where,
                                      time=f.date_time("date")))
    return reviews


def read_yelp_business(path: Path, skips: SkipLog) -> dict[str, DumpProduct]:
    products: dict[str, DumpProduct] = {}
    for f in _json_records(path, skips):
        with skips.guard():
            business, name, categories = f.id("business_id"), f.text("name"), f.text("categories")
            if business in products:
                raise f.error(f"duplicate business {business!r}", "business_id", "duplicate business")
            products[business] = DumpProduct(_join(name, categories))
    return products


def read_table(path: Path, skips: SkipLog, columns: ColumnMapping) -> tuple[list[DumpReview], dict[str, DumpProduct]]:
    """Reviews (and product text / images from their columns) of a CSV/TSV or JSON-lines file."""
    suffixes = [s for s in path.suffixes if s != ".gz"]
    kind = suffixes[-1].lower() if suffixes else ""
    if kind in (".csv", ".tsv"):
        records = _csv_records(path, skips, [c for _, c in columns.columns()])
    elif kind in (".jsonl", ".json", ".ndjson"):
        records = _json_records(path, skips)
    else:
        raise DataError("--format csv reads .csv, .tsv, .jsonl, .json or .ndjson files (optionally .gz)", file=path)
    with_product_side = columns.product_text is not None or columns.product_images is not None
    reviews: list[DumpReview] = []
    products: dict[str, DumpProduct] = {}
    for f in records:
        with skips.guard():
            product = f.id(columns.product)
            review_id = f.id(columns.review) if columns.review is not None else f"line{f.line}"
            text = _join(*(f.text(column) for column in columns.text))
            votes = f.votes(columns.votes)
            rating = f.rating(columns.rating) if columns.rating is not None else None
            images = f.urls(columns.images) if columns.images else ()
            time = f.time(columns.time) if columns.time is not None else None
            if with_product_side:
                side = DumpProduct(f.text(columns.product_text) if columns.product_text else "",
                                   f.urls(columns.product_images) if columns.product_images else ())
                if products.setdefault(product, side) != side:
                    raise f.error(f"product {product!r} has another text or images than on an earlier line",
                                  columns.product_text or columns.product_images, "inconsistent product")
            reviews.append(DumpReview(product, review_id, text, votes, rating, images, f.where, time=time))
    return reviews, products
