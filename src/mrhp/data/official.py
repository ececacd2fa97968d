"""Reader of the official Amazon-MRHP / Lazada-MRHP benchmark format (Liu et al., ACL 2021; SPEC 2.1).

Per category ``cat`` and split in (train, dev, test), three JSON documents in one folder:

- ``{cat}.prd.{split}``: products, fields ``product_id``, ``name``, ``description``, ``img_url``;
- ``{cat}.rvw.{split}``: reviews, fields ``review_id``, ``content``, ``img_url`` (Amazon also ``time``, kept as
  the review's time when it can be read: see :func:`review_time`);
- ``{cat}.rel.{split}``: relations, fields ``product_id``, ``review_id``, ``upvotes`` (already the helpfulness
  level 0..4, used as the label as it is).

The documents are what ``pandas.read_json`` reads by default: either a list of records or a dict of columns
(``{"field": {"0": v, "1": v, ...}}``); both are read here with the standard ``json`` module. Errors name the file,
the record (its row index: the position in a list of records, the row key in a dict of columns) and the field.

Image features live in ``{features}/{split}/{item_id}/{item_id}.pth``; product and review features may be in
different folders. See :class:`PthFeatures` for the file content and the region caps.
"""

from __future__ import annotations

import ast
import json
import logging
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from mrhp import jsontext
from mrhp.data.records import (
    SPLIT_NAMES,
    FeatureProblem,
    FeatureSource,
    Fields,
    LoadedFeatures,
    RawDataset,
    RawProduct,
    RawReview,
    RawSplit,
    cap_regions,
    describe_source,
    unique_ids,
)
from mrhp.errors import DataError
from mrhp.files import open_regular

logger = logging.getLogger(__name__)

PRODUCT_TEXT_CHOICES = ("name+description", "name")
MAX_LABEL = 4
# The reference implementation keeps the first 32 regions of each image.
DEFAULT_MAX_REGIONS_PER_IMAGE = 32

_MISSING = object()
# Integer times above this are milliseconds (1e11 seconds is the year 5138).
_MILLISECONDS_FROM = 10**11
# Date spellings of review times: Amazon's reviewTime ("06 15, 2015") and ISO dates.
_DATE_FORMATS = ("%m %d, %Y", "%Y-%m-%d", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S")


def review_time(value: object) -> int | None:
    """A review's ``time`` in seconds since the epoch (UTC), None when it cannot be read. The format does not fix
    how the time is written, so this accepts seconds or milliseconds (an integer or a string of digits) and the
    date spellings of :data:`_DATE_FORMATS` (read as UTC); anything else is unknown and counted, not an error."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        return None if value < 0 else value // 1000 if value >= _MILLISECONDS_FROM else value
    if isinstance(value, str):
        for spelling in _DATE_FORMATS:
            try:
                moment = datetime.strptime(value.strip(), spelling)
            except ValueError:
                continue
            return int(moment.replace(tzinfo=UTC).timestamp())
    return None


def parse_image_urls(value: object) -> list[str]:
    """The image URLs of an ``img_url`` value (only used to know whether an item should have images).

    Accepts: None or "" (no image); a URL string; a list of URLs; a list of objects with key ``"url"`` (Lazada
    reviews); and any of these lists encoded as a JSON string (Lazada stores ``img_url`` as a JSON string). A
    string list that is not valid JSON is also tried as a Python literal (single quotes), which some dumps use.
    Empty URL strings are not images and are left out. Anything else raises ``ValueError``.
    """
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        if text[0] in "[{":
            try:
                decoded = jsontext.loads(text)
            except RecursionError:
                raise ValueError("img_url is a JSON list nested too deeply to read") from None
            except json.JSONDecodeError:
                try:
                    decoded = ast.literal_eval(text)
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    raise ValueError(f"img_url starts like a list but is neither JSON nor a literal: {text[:80]!r}") from None
            return parse_image_urls(decoded if isinstance(decoded, list) else [decoded])
        return [text]
    if isinstance(value, (list, tuple)):
        urls: list[str] = []
        for k, entry in enumerate(value):
            if isinstance(entry, dict):
                entry = entry.get("url", _MISSING)
                if entry is _MISSING:
                    raise ValueError(f"img_url entry {k} is an object without the key 'url'")
            if entry is None:
                continue
            if not isinstance(entry, str):
                raise ValueError(f"img_url entry {k} is a {type(entry).__name__}, not a URL string")
            if entry.strip():
                urls.append(entry.strip())
        return urls
    raise ValueError(f"img_url is a {type(value).__name__}, expected a URL string, a list or a JSON string")


def read_json_document(path: Path) -> list[tuple[str, dict]]:
    """Records of a JSON document in a layout ``pandas.read_json`` reads by default.

    Returns ``(record_label, record)`` pairs in order: for a list of records the label is the 0-based position;
    for a dict of columns (``{"field": {"row": value}}`` or ``{"field": [values]}``) it is the row key, and the
    rows follow the key order of the first column. A field absent from a record is absent from its dict.
    """
    try:
        data = jsontext.loads(path.read_bytes())
    except FileNotFoundError:
        raise DataError("file not found", file=path) from None
    except OSError as exc:
        raise DataError(f"cannot read file ({exc})", file=path) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", file=path) from None
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON ({exc.msg}, column {exc.colno})", file=path, line=exc.lineno) from None
    except RecursionError:
        raise DataError("JSON nested too deeply to read", file=path) from None
    if isinstance(data, list):
        records = []
        for k, record in enumerate(data):
            if not isinstance(record, dict):
                raise DataError(f"record {k} is a {type(record).__name__}, expected an object", file=path)
            records.append((str(k), record))
        return records
    if isinstance(data, dict):
        if not data:
            return []
        columns: dict[str, dict[str, object]] = {}
        for name, column in data.items():
            if isinstance(column, dict):
                columns[name] = column
            elif isinstance(column, list):
                columns[name] = {str(k): v for k, v in enumerate(column)}
            else:
                raise DataError("a dict of columns needs an object or a list per field", file=path, field=name)
        first = next(iter(columns.values()))
        keys = list(first)
        key_set = set(keys)
        for name, column in columns.items():
            extra = set(column) - key_set
            if extra:
                raise DataError(f"row {sorted(extra)[0]!r} is not in the first column's rows", file=path, field=name)
        return [(key, {name: col[key] for name, col in columns.items() if key in col}) for key in keys]
    raise DataError(f"the document is a {type(data).__name__}, expected a list of records or a dict of columns",
                    file=path)


def _records(path: Path) -> Iterator[Fields]:
    # pandas writes integer columns that had a gap as floats, so integral floats are integers here.
    return (Fields(row, path, record=key, integral_floats=True) for key, row in read_json_document(path))


def _text(fields: Fields, name: str, nulls: dict[str, int]) -> str:
    """A text field; null is read as an empty text and counted (the official files have null descriptions)."""
    text = fields.string(name, nullable=True)
    if text is None:
        nulls[name] = nulls.get(name, 0) + 1
        return ""
    return text


def _has_image_urls(fields: Fields) -> bool:
    try:
        return bool(parse_image_urls(fields.required("img_url")))
    except ValueError as exc:
        raise fields.error(str(exc), "img_url") from None


class PthFeatures(FeatureSource):
    """Region features of one item from an official ``.pth`` file.

    The file is a ``torch.save``d list with one dict per image whose key ``"x"`` holds that image's region
    features ``[n_regions, 2048]`` (a tensor). It is read with ``torch.load(..., weights_only=True)``, which
    unpickles tensors and plain containers only; a file holding anything else (numpy arrays, classes) is refused,
    because unpickling it can run code from the file, unless ``unsafe_unpickle`` (``--unsafe-unpickle-features``)
    says the files are trusted. Keeps the first ``max_regions_per_image`` regions of each image and at most
    ``max_regions_per_item`` regions in all (reference: 32 and 128).
    """

    def __init__(self, path: Path, max_regions_per_image: int | None = DEFAULT_MAX_REGIONS_PER_IMAGE,
                 max_regions_per_item: int | None = 128, unsafe_unpickle: bool = False):
        self.path = path
        self.unsafe_unpickle = unsafe_unpickle
        self.max_regions_per_image = max_regions_per_image
        self.max_regions_per_item = max_regions_per_item

    def describe(self) -> str:
        return str(self.path)

    def missing_files(self) -> list[FeatureProblem]:
        return [] if self.path.is_file() else [FeatureProblem(str(self.path), "file not found")]

    def load(self) -> LoadedFeatures:
        import torch  # noqa: PLC0415 (heavy import, needed only for this format)

        if not self.path.is_file():
            return LoadedFeatures(np.zeros((0, 0), dtype=np.float32), [FeatureProblem(str(self.path),
                                                                                      "file not found")])
        try:
            with open_regular(self.path) as handle:
                content = torch.load(handle, map_location="cpu", weights_only=not self.unsafe_unpickle)
        except pickle.UnpicklingError as exc:
            if not self.unsafe_unpickle and str(exc).startswith("Weights only load failed"):
                raise DataError("holds objects other than tensors, lists and dicts; loading it would unpickle them, "
                                "which can run code from the file. Rerun with --unsafe-unpickle-features only if you "
                                "trust the feature files", file=self.path) from None
            return self._problem(f"unreadable ({type(exc).__name__}: {str(exc)[:200]})")
        except Exception as exc:  # noqa: BLE001 (any failure to unpickle means an unreadable file: masked, listed)
            return self._problem(f"unreadable ({type(exc).__name__}: {str(exc)[:200]})")
        if not isinstance(content, (list, tuple)):
            return self._problem(f"expected a list of per-image dicts, got {type(content).__name__}")
        images: list[np.ndarray] = []
        for k, entry in enumerate(content):
            if not isinstance(entry, dict) or "x" not in entry:
                return self._problem(f"image {k} is not a dict with key 'x'")
            x = entry["x"]
            if isinstance(x, torch.Tensor):
                x = x.detach().cpu()
                if self.max_regions_per_image is not None and x.ndim == 2:
                    x = x[: self.max_regions_per_image]
                x = x.float().numpy()
            if (not isinstance(x, np.ndarray) or x.ndim != 2 or not np.issubdtype(x.dtype, np.number)
                    or x.shape[1] < 1):
                shape = getattr(x, "shape", None)
                return self._problem(f"image {k}: 'x' is not a numeric [n_regions, F] array (shape {shape})")
            images.append(x)
        regions = cap_regions(images, self.max_regions_per_image, self.max_regions_per_item, where=str(self.path))
        return LoadedFeatures(regions)

    def _problem(self, reason: str) -> LoadedFeatures:
        return LoadedFeatures(np.zeros((0, 0), dtype=np.float32), [FeatureProblem(str(self.path), reason)])


@dataclass(frozen=True)
class _FeatureFolder:
    """Where the features of one kind of item are: ``{root}/{split}/{item_id}/{item_id}.pth`` (root None: none)."""

    root: Path | None
    max_regions_per_image: int | None
    max_regions_per_item: int | None
    unsafe_unpickle: bool

    def source(self, split: str, fields: Fields, kind: str, item_id: str, has_urls: bool) -> PthFeatures | None:
        """The item's feature source, or None when it has no image (no URL and no feature file)."""
        if self.root is None:
            return None
        if item_id in (".", "..") or any(c in item_id for c in "/\\\0"):
            raise fields.error(f"id {item_id!r} cannot name a feature folder", f"{kind}_id")
        path = self.root / split / item_id / f"{item_id}.pth"
        # A feature file is used even when img_url is empty; an item with URLs but no file is a missing image.
        if has_urls or path.is_file():
            return PthFeatures(path, self.max_regions_per_image, self.max_regions_per_item, self.unsafe_unpickle)
        return None


@dataclass
class _Item:
    """A product or a review as its own file gives it (reviews get their product and label from the relations)."""

    fields: Fields
    text: str
    features: PthFeatures | None
    has_urls: bool
    time: int | None = None


def _read_items(path: Path, kind: str, text_fields: Sequence[str], folder: _FeatureFolder, split: str,
                nulls: dict[str, int]) -> dict[str, _Item]:
    """The products or reviews of one file by id, in file order; the text joins ``text_fields`` with a space."""
    items: dict[str, _Item] = {}
    for fields, item_id in unique_ids(_records(path), kind):
        text = " ".join(_text(fields, name, nulls) for name in text_fields)
        has_urls = _has_image_urls(fields)
        item = _Item(fields, text, folder.source(split, fields, kind, item_id, has_urls), has_urls)
        if kind == "review":
            item.time = review_time(fields.get("time"))
        items[item_id] = item
    return items


def _relate(paths: dict[str, Path], products: dict[str, _Item], reviews: dict[str, _Item]) -> list[RawReview]:
    """The reviews in the order of the relation file, with their product and label; every review must be related
    to exactly one product."""
    related: dict[str, tuple[str, str]] = {}  # review id -> (product id, relation record)
    relations: list[RawReview] = []
    for fields in _records(paths["rel"]):
        pid = fields.id("product_id")
        rid = fields.id("review_id")
        label = fields.level("upvotes", MAX_LABEL)
        if pid not in products:
            raise fields.error(f"unknown product {pid!r} (not in {paths['prd'].name})", "product_id")
        if rid not in reviews:
            raise fields.error(f"unknown review {rid!r} (not in {paths['rvw'].name})", "review_id")
        if rid in related:
            other_pid, other_record = related[rid]
            what = "duplicate relation" if other_pid == pid else f"review related to two products ({other_pid!r})"
            raise fields.error(f"{what}: review {rid!r} already related to product {other_pid!r} in record "
                               f"{other_record}", "review_id")
        related[rid] = (pid, fields.record)
        review = reviews[rid]
        relations.append(RawReview(rid, pid, review.text, label, review.features, time=review.time))
    for rid, review in reviews.items():
        if rid not in related:
            raise review.fields.error(f"review {rid!r} has no relation in {paths['rel'].name}", "review_id")
    return relations


def _read_split(
    data_dir: Path, category: str, split: str, product_fields: tuple[str, ...], folders: dict[str, _FeatureFolder],
) -> tuple[RawSplit, dict]:
    """Read one split's three files; returns the split and its notes (null text fields, review times, image URLs
    without a feature folder)."""
    paths = {kind: data_dir / f"{category}.{kind}.{split}" for kind in ("prd", "rvw", "rel")}
    for path in paths.values():
        if not path.is_file():
            raise DataError(f"file not found (expected {category}.{{prd,rvw,rel}}.{split} in {data_dir})",
                            file=path)
    nulls: dict[str, int] = {}
    items = {
        "product": _read_items(paths["prd"], "product", product_fields, folders["product"], split, nulls),
        "review": _read_items(paths["rvw"], "review", ("content",), folders["review"], split, nulls),
    }
    products = [RawProduct(pid, item.text, item.features) for pid, item in items["product"].items()]
    raw_split = RawSplit(split, products, _relate(paths, items["product"], items["review"]))
    urls_without_folder = {
        kind: sum(item.has_urls for item in items[kind].values()) if folders[kind].root is None else 0
        for kind in ("product", "review")
    }
    notes = {
        "null_text_fields": nulls,
        "reviews_with_time": sum(item.time is not None for item in items["review"].values()),
        "unreadable_review_times": sum(item.time is None and item.fields.get("time") is not None
                                       for item in items["review"].values()),
        "items_with_image_urls_but_no_feature_folder": urls_without_folder,
    }
    for kind, n in urls_without_folder.items():
        if n:
            logger.warning("%s: %d %ss have image URLs but no %s feature folder was given: read as text-only",
                           split, n, kind, kind)
    return raw_split, notes


def read_official(
    data_dir: str | Path,
    category: str,
    *,
    product_features: str | Path | None = None,
    review_features: str | Path | None = None,
    splits: Sequence[str] = SPLIT_NAMES,
    product_text: str = "name+description",
    max_regions_per_image: int | None = DEFAULT_MAX_REGIONS_PER_IMAGE,
    max_regions_per_item: int | None = 128,
    max_missing_image_rate: float = 0.05,
    unsafe_unpickle_features: bool = False,
) -> RawDataset:
    """Read one category of Amazon-MRHP / Lazada-MRHP.

    Args:
        data_dir: the folder with ``{category}.{prd,rvw,rel}.{split}``.
        category: e.g. ``"clothing"``, ``"electronics"``, ``"home"``.
        product_features: folder with ``{split}/{product_id}/{product_id}.pth``; None = products without images.
        review_features: the same for reviews (may be the same folder).
        splits: splits to read (all their files must exist).
        product_text: ``"name+description"`` (``name + " " + description``) or ``"name"`` (the reference uses the
            name alone for Lazada clothing).
        max_regions_per_image, max_regions_per_item: region caps (None = no cap).
        max_missing_image_rate: largest tolerated fraction, per split and kind, of items that should have images
            (non-empty ``img_url`` or an existing feature file) whose feature file is missing or unreadable.
            Missing files are checked here already (fails early); unreadable ones when preparing.
        unsafe_unpickle_features: load feature files with full unpickling, which can run code from them (see
            `PthFeatures`); only for trusted files that hold more than tensors.

    Returns:
        The raw dataset; reviews of a product keep the order of the relation file.
    """
    if product_text not in PRODUCT_TEXT_CHOICES:
        raise ValueError(f"product_text must be one of {PRODUCT_TEXT_CHOICES}, got {product_text!r}")
    if not 0.0 <= max_missing_image_rate <= 1.0:
        raise ValueError(f"max_missing_image_rate must be in [0, 1], got {max_missing_image_rate}")
    data_dir = Path(data_dir)
    folders = {
        kind: _FeatureFolder(Path(root) if root is not None else None, max_regions_per_image, max_regions_per_item,
                             unsafe_unpickle_features)
        for kind, root in (("product", product_features), ("review", review_features))
    }
    product_fields = ("name", "description") if product_text == "name+description" else ("name",)
    raw_splits: dict[str, RawSplit] = {}
    notes: dict = {}
    for split in splits:
        raw_splits[split], notes[split] = _read_split(data_dir, category, split, product_fields, folders)
    source = describe_source(
        "mrhp-official", data_dir, category=category, product_features=folders["product"].root,
        review_features=folders["review"].root, product_text=product_text,
        max_regions_per_image=max_regions_per_image, max_regions_per_item=max_regions_per_item,
    )
    raw = RawDataset(source, raw_splits, max_missing_image_rate=max_missing_image_rate, notes=notes)
    raw.check_feature_files()
    logger.info("read %s/%s: %s", data_dir, category,
                ", ".join(f"{n} {len(s.products)} products / {len(s.reviews)} reviews" for n, s in raw_splits.items()))
    return raw
