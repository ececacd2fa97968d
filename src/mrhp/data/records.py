"""Records shared by every reader: the raw dataset the readers produce, lazily loaded image features, the split
and vote-level helpers, the one JSON-lines line parser and the one set of field validators (:class:`Fields`).

A reader (:mod:`mrhp.data.official`, :mod:`mrhp.data.jsonl`, :mod:`mrhp.data.dumps`) produces a :class:`RawDataset`;
:func:`mrhp.data.prepare.prepare_dataset` writes it as a prepared dataset.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mrhp import jsontext
from mrhp.errors import DataError

SPLIT_NAMES = ("train", "dev", "test")
KINDS = ("product", "review")
VOTE_SCHEMES = ("log2", "linear-cap")


@dataclass(frozen=True)
class FeatureProblem:
    """A feature file that should have given image regions but did not (the image is masked)."""

    file: str
    reason: str


@dataclass
class LoadedFeatures:
    """Regions of one item: ``regions`` float32 ``[n, F]`` (n may be 0) and the files that failed (masked)."""

    regions: np.ndarray
    problems: list[FeatureProblem] = field(default_factory=list)


class FeatureSource(ABC):
    """Lazily loaded image region features of one item (a product or a review).

    An item gets a source only when it is supposed to have images (its record lists images, or a feature file
    exists for it); an item without a source simply has no image. :meth:`load` is called once, while preparing,
    so features stream from the source files straight into the feature store.
    """

    @abstractmethod
    def describe(self) -> str:
        """The feature file(s), for messages and the report."""

    @abstractmethod
    def missing_files(self) -> list[FeatureProblem]:
        """Feature files that do not exist (a cheap check by file status, done before the long conversion)."""

    @abstractmethod
    def load(self) -> LoadedFeatures:
        """Read the regions (capped as configured).

        Missing or unreadable files are returned as problems, never raised: the item is masked and reported.
        Inconsistent data that cannot be masked meaningfully raises ``DataError``.
        """


def cap_regions(
    images: Sequence[np.ndarray], max_per_image: int | None, max_per_item: int | None, *, where: str
) -> np.ndarray:
    """Concatenate per-image region arrays ``[n_k, F]`` into float32 ``[n, F]`` keeping the first regions.

    Keeps the first ``max_per_image`` regions of each image (in file order, which for bottom-up attention features
    is detection-confidence order) and then the first ``max_per_item`` of the item; ``None`` = no cap. All images
    of an item must have the same feature size ``F`` (else ``DataError`` naming ``where``).
    """
    kept: list[np.ndarray] = []
    dim: int | None = None
    total = 0
    for k, image in enumerate(images):
        if image.ndim != 2:
            raise DataError(f"image {k}: region features must be [n_regions, F], got shape {image.shape}", file=where)
        if dim is None:
            dim = image.shape[1]
        elif image.shape[1] != dim:
            raise DataError(f"image {k} has feature size {image.shape[1]}, an earlier image {dim}", file=where)
        part = image if max_per_image is None else image[:max_per_image]
        if max_per_item is not None:
            part = part[: max(0, max_per_item - total)]
        total += part.shape[0]
        kept.append(np.asarray(part, dtype=np.float32))
    if dim is None:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(kept, axis=0)


@dataclass(slots=True)
class RawProduct:
    """A product: ``id``, model ``text`` (may be empty) and its image ``features`` (None = no image).

    ``image_refs``: image URLs kept as references only (not features: e.g. URLs of a dump that cannot be fetched
    offline); saved in ``{split}/product_image_refs.json`` when some item has them.
    """

    id: str
    text: str
    features: FeatureSource | None = None
    image_refs: tuple[str, ...] = ()


@dataclass(slots=True)
class RawReview:
    """A review of product ``product_id`` with helpfulness level ``label`` (an integer >= 0).

    ``rating``: the reviewer's star rating when the source has one (None = unknown), for the floors
    (:mod:`mrhp.studies.floors`); ``image_refs`` as for :class:`RawProduct`. ``time``: when the review was written,
    in whole seconds since the epoch (UTC), None = unknown; ``verified``: a verified purchase, None = unknown.
    """

    id: str
    product_id: str
    text: str
    label: int
    features: FeatureSource | None = None
    rating: float | None = None
    image_refs: tuple[str, ...] = ()
    time: int | None = None
    verified: bool | None = None


@dataclass
class RawSplit:
    """One split: products and reviews in file order (review order within a product is kept)."""

    name: str
    products: list[RawProduct]
    reviews: list[RawReview]


@dataclass
class RawDataset:
    """What the readers produce and :func:`prepare_dataset` consumes.

    Attributes:
        source: a JSON-serialisable description of where the data came from (format, paths, options; see
            :func:`describe_source`); saved in ``dataset.json``.
        splits: split name -> split, in order (``train`` first by convention).
        max_missing_image_rate: the largest tolerated fraction, per split and kind, of items that should have
            images but whose feature files are missing or unreadable.
        notes: reader-specific counts for the report (e.g. null text fields of the official files).
    """

    source: dict
    splits: dict[str, RawSplit]
    max_missing_image_rate: float = 0.05
    notes: dict = field(default_factory=dict)

    def validate(self) -> None:
        """Check the invariants the readers guarantee (a ``ValueError`` here is a reader bug, not bad data)."""
        for name, split in self.splits.items():
            product_ids = [p.id for p in split.products]
            if len(set(product_ids)) != len(product_ids):
                raise ValueError(f"split {name}: duplicate product ids")
            known = set(product_ids)
            seen: set[str] = set()
            for review in split.reviews:
                if review.id in seen:
                    raise ValueError(f"split {name}: duplicate review id {review.id!r}")
                seen.add(review.id)
                if review.product_id not in known:
                    raise ValueError(f"split {name}: review {review.id!r} of unknown product {review.product_id!r}")
                if not isinstance(review.label, int) or review.label < 0:
                    raise ValueError(f"split {name}: review {review.id!r} has label {review.label!r}")

    def check_feature_files(self) -> dict[str, dict[str, dict[str, int]]]:
        """Fail early (by file status only) when too many feature files are missing.

        Returns ``{split: {kind: {"expected": n, "missing": m}}}``. Raises ``DataError`` when, for some split and
        kind, ``missing / expected`` exceeds :attr:`max_missing_image_rate`. Unreadable files are found only while
        preparing, which checks the rate again.
        """
        summary: dict[str, dict[str, dict[str, int]]] = {}
        for name, split in self.splits.items():
            summary[name] = {}
            for kind, items in (("product", split.products), ("review", split.reviews)):
                expected = 0
                missing: list[tuple[str, FeatureProblem]] = []
                for item in items:
                    if item.features is None:
                        continue
                    expected += 1
                    problems = item.features.missing_files()
                    if problems:
                        missing.append((item.id, problems[0]))
                summary[name][kind] = {"expected": expected, "missing": len(missing)}
                check_missing_rate(name, kind, len(missing), expected, self.max_missing_image_rate, missing)
        return summary


def describe_source(fmt: str, path: str | Path, **options: object) -> dict:
    """:attr:`RawDataset.source` of a reader: its format, its input path and the options it read with, paths written
    as strings and tuples as lists, as JSON will hold them."""

    def plain(value: object) -> object:
        if isinstance(value, Path):
            return str(value)
        return list(value) if isinstance(value, tuple) else value

    return {"format": fmt, "path": str(path), **{name: plain(value) for name, value in options.items()}}


def check_missing_rate(
    split: str, kind: str, missing: int, expected: int, max_rate: float, examples: Sequence[tuple[str, FeatureProblem]]
) -> None:
    """Raise ``DataError`` when ``missing / expected > max_rate``."""
    if expected == 0 or missing <= max_rate * expected:
        return
    shown = "; ".join(f"{item_id} ({p.file}: {p.reason})" for item_id, p in examples[:5])
    raise DataError(
        f"{split} split: {missing} of {expected} {kind}s that should have images have missing or unreadable "
        f"feature files ({missing / expected:.1%} > max_missing_image_rate {max_rate:.1%}); first: {shown}. "
        "Check the feature folders, or raise the maximum to accept masking these images.",
        file=examples[0][1].file if examples else None,
    )


def votes_to_level(votes: int, scheme: str = "log2", max_level: int = 4) -> int:
    """Helpfulness level of a helpful-vote count.

    ``"log2"``: ``min(max_level, floor(log2(1 + votes)))`` (0 -> 0, 1-2 -> 1, 3-6 -> 2, 7-14 -> 3, >= 15 -> 4),
    which spreads Amazon-like vote counts over 0..4. ``"linear-cap"``: ``min(max_level, votes)``.
    """
    if votes < 0:
        raise ValueError(f"votes must be >= 0, got {votes}")
    if scheme == "log2":
        # Integer arithmetic: floor(log2(1 + v)) is the bit length of 1 + v minus one (no float rounding).
        return min(max_level, (votes + 1).bit_length() - 1)
    if scheme == "linear-cap":
        return min(max_level, votes)
    raise ValueError(f"unknown votes scheme {scheme!r} (choose from {', '.join(VOTE_SCHEMES)})")


def split_products(
    ids: Sequence[str], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, str]:
    """Assign each product id to ``train``/``dev``/``test`` at random, deterministically.

    The ids are sorted first, so the result depends only on the set of ids and the seed, not on file order. Dev
    and test get ``round(fraction * n)`` products each (at least one when their fraction is > 0 and there are at
    least 3 products) and train the rest.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}")
    ordered = sorted(set(ids))
    if len(ordered) != len(ids):
        raise ValueError("split_products: duplicate ids")
    n = len(ordered)
    sizes = []
    for f in fractions[1:]:
        size = int(round(f * n))
        if f > 0 and n >= 3:
            size = max(size, 1)
        sizes.append(size)
    n_dev, n_test = sizes
    n_train = max(0, n - n_dev - n_test)
    permutation = np.random.default_rng(seed).permutation(n)
    assignment: dict[str, str] = {}
    for rank, k in enumerate(permutation.tolist()):
        assignment[ordered[k]] = "train" if rank < n_train else "dev" if rank < n_train + n_dev else "test"
    return assignment


def parse_object_line(raw: bytes, path: Path, line_no: int) -> dict | None:
    """One line of a JSON-lines file as a JSON object, or None for a blank line; ``DataError`` naming the file
    and line for bytes that are not UTF-8, bad JSON or a JSON value that is not an object. A UTF-8 byte order
    mark on line 1 is allowed."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", file=path, line=line_no) from None
    if line_no == 1:
        line = line.lstrip("\ufeff")
    if not line.strip():
        return None
    try:
        obj = jsontext.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON ({exc.msg}, column {exc.colno})", file=path, line=line_no) from None
    except RecursionError:
        raise DataError("JSON nested too deeply to read", file=path, line=line_no) from None
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}", file=path, line=line_no)
    return obj


def not_unicode(value: object) -> str | None:
    """Why ``value`` (a string, or strings inside lists and objects) is not Unicode text, or None when it is.

    JSON's ``"\\ud800"`` escape decodes to a lone UTF-16 surrogate: Python holds it in a str, but it is no
    character and cannot be written as UTF-8, so every writer downstream (the vocabulary, a response) would fail."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            return (f"holds a lone UTF-16 surrogate (\\u{ord(value[error.start]):04x}) at character {error.start}, "
                    "which is not Unicode text")
        return None
    if isinstance(value, list | tuple):
        return next((problem for item in value if (problem := not_unicode(item)) is not None), None)
    if isinstance(value, Mapping):
        return next((problem for key, item in value.items()
                     if (problem := not_unicode(key) or not_unicode(item)) is not None), None)
    return None


class RecordError(DataError):
    """A bad input record or field; ``reason`` is the short category under which lenient readers count skips."""

    def __init__(self, message: str, reason: str, *, file: object, line: int | None, field: str | None = None):
        super().__init__(message, file=file, line=line, field=field)
        self.reason = reason


_ABSENT = object()


def _shown(value: object) -> str:
    """A bad value as it appears in a JSON file, cut short for messages."""
    return json.dumps(value, default=repr)[:60]


class Fields:
    """The fields of one input record, read through typed validators.

    Every error is a :class:`RecordError` naming ``file``, the ``line`` (JSON lines, CSV) or the ``record`` (a
    document of records: ``"FILE, record K"``) and the field, with the reason ``"missing NAME"`` or ``"bad NAME"``.
    The readers differ in what they accept, so these are options of the record rather than of each call:

    - ``null_is_absent``: a JSON null counts as an absent field (the public dumps write null for "no value"); else
      null is a value, which the validators refuse unless they say otherwise.
    - ``strip_ids``: ids lose surrounding white space (dump columns are padded; the project's own formats keep
      ids as written).
    - ``integral_floats``: an integral float (``3.0``) is accepted as an integer or an integer id, as
      ``pandas.to_json`` writes integer columns that had a gap.
    """

    __slots__ = ("file", "integral_floats", "line", "null_is_absent", "record", "strip_ids", "values")

    def __init__(self, values: Mapping[str, object], file: object, line: int | None = None, *,
                 record: str | None = None, null_is_absent: bool = False, strip_ids: bool = False,
                 integral_floats: bool = False) -> None:
        self.values = values
        self.file = file
        self.line = line
        self.record = record
        self.null_is_absent = null_is_absent
        self.strip_ids = strip_ids
        self.integral_floats = integral_floats

    @property
    def place(self) -> str:
        """Where the record is in its file, for messages that point back to it: ``"line N"`` or ``"record K"``."""
        return f"line {self.line}" if self.line is not None else f"record {self.record}"

    def error(self, message: str, name: str, reason: str | None = None) -> RecordError:
        """The error to raise for field ``name``; ``reason`` defaults to ``"bad NAME"``."""
        file = self.file if self.record is None else f"{self.file}, record {self.record}"
        return RecordError(message, reason or f"bad {name}", file=file, line=self.line, field=name)

    def _value(self, name: str) -> object:
        value = self.values.get(name, _ABSENT)
        if value is None and self.null_is_absent:
            return _ABSENT
        if (problem := not_unicode(value)) is not None:
            raise self.error(problem, name)
        return value

    def has(self, name: str) -> bool:
        return self._value(name) is not _ABSENT

    def get(self, name: str) -> object:
        """The value, None when absent."""
        value = self._value(name)
        return None if value is _ABSENT else value

    def required(self, name: str) -> object:
        value = self._value(name)
        if value is _ABSENT:
            raise self.error("missing required field", name, f"missing {name}")
        return value

    def id(self, name: str) -> str:
        """A required id: a string that is not blank or an integer (never a bool), as a string."""
        value = self.required(name)
        if isinstance(value, str) and value.strip():
            return value.strip() if self.strip_ids else value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if self.integral_floats and isinstance(value, float) and value.is_integer():
            return str(int(value))
        raise self.error(f"expected a non-empty string or an integer id, got {_shown(value)}", name)

    def string(self, name: str, *, required: bool = True, nullable: bool = False) -> str | None:
        """A string (may be empty); None when it is absent and not ``required``, or null and ``nullable``."""
        if not required and not self.has(name):
            return None
        value = self.required(name)
        if isinstance(value, str) or (value is None and nullable):
            return value
        raise self.error(f"expected a string{' or null' if nullable else ''}, got {_shown(value)}", name)

    def integer(self, name: str) -> int:
        """A required integer (never a bool)."""
        value = self.required(name)
        if self.integral_floats and isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"expected an integer, got {_shown(value)}", name)
        return value

    def level(self, name: str, max_level: int) -> int:
        """A required helpfulness level, an integer in ``0..max_level``."""
        value = self.integer(name)
        if not 0 <= value <= max_level:
            raise self.error(f"level {value} out of range 0..{max_level}", name)
        return value


class ItemFields(Fields):
    """A product or a review of the project's own record shape, read by the same code wherever it comes from: a
    line of ``products.jsonl``/``reviews.jsonl`` (:mod:`mrhp.data.jsonl`) or a ranking request
    (:mod:`mrhp.ranking.request`). What an image entry is differs (a path or URL in files; inline features, base64
    or a path in requests), so :meth:`images` checks the list and leaves its entries to the reader."""

    __slots__ = ()

    def product_text(self) -> str:
        """``text``, or ``name`` + " " + ``description`` (either may be absent, not both with ``text``)."""
        text = self.string("text", required=False)
        name = self.string("name", required=False)
        description = self.string("description", required=False)
        if text is not None:
            if name is not None or description is not None:
                raise self.error("give either 'text' or 'name'/'description', not both", "text")
            return text
        if name is None and description is None:
            raise self.error("missing product text: give 'text' (or 'name' and/or 'description')", "text",
                             "missing text")
        return " ".join(part for part in (name, description) if part is not None)

    def review_text(self) -> str:
        """The required review ``text`` (may be empty)."""
        text = self.string("text")
        assert text is not None
        return text

    def images(self) -> list:
        """The ``images`` entries as given, ``[]`` when absent."""
        value = self.get("images")
        if value is None:
            return []
        if not isinstance(value, list | tuple):
            raise self.error(f"expected a list of images, got {type(value).__name__}", "images")
        return list(value)


def unique_ids(records: Iterable[Fields], kind: str) -> Iterator[tuple[Fields, str]]:
    """Each record with its id, the field ``{kind}_id``; an id seen before is an error naming both places."""
    name = f"{kind}_id"
    first: dict[str, str] = {}
    for fields in records:
        item_id = fields.id(name)
        if item_id in first:
            raise fields.error(f"duplicate {kind} id {item_id!r} (also {first[item_id]})", name)
        first[item_id] = fields.place
        yield fields, item_id
