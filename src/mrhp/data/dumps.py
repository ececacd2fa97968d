"""Readers of public review dumps with vote counts; :func:`read_dump` turns one into a
:class:`~mrhp.data.records.RawDataset` through :mod:`mrhp.data.dump_pipeline` (de-duplication, labels, filters,
split and report).

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
``steam``       Steam store reviews as the ``steamreviews`` package writes them: a folder of
                ``review_<appid>.json`` files and their store pages ``appdetails/appID_<appid>.json``
                (:mod:`mrhp.data.steam`; ``voted_up`` becomes the rating 5, a review that does not recommend the
                game 1).
``csv``         any CSV / TSV (``.csv``, ``.tsv``) or JSON-lines (``.jsonl``, ``.json``, ``.ndjson``) file with a
                column mapping (:func:`parse_column_mapping`): ``product``, ``text`` (one or more columns,
                joined by a newline) and ``votes`` are required; ``review`` (default: ``line N``), ``rating``,
                ``time`` (an integer, seconds since 1970 UTC), ``product_text`` and ``images`` /
                ``product_images`` (a JSON list, or ``|``-separated) optional.

Review times (seconds since the epoch, UTC; kept per review in the prepared dataset): ``unixReviewTime`` (2018,
2014), ``timestamp`` (2023, milliseconds, divided by 1000), ``Time`` (Fine Food), ``date`` (Yelp, an ISO date read
as UTC), ``timestamp_created`` (Steam), the ``time`` column (csv). Verified purchase: ``verified`` (2018),
``verified_purchase`` (2023), ``steam_purchase`` (Steam); unknown elsewhere.

Review text of the Amazon formats is ``summary + "\\n" + reviewText`` (the title is part of what a reader sees);
HTML line breaks (``<br />``, common in Fine Food) become newlines.

De-duplication of the copies of a review, labels, product filters and the split: see
:mod:`mrhp.data.dump_pipeline`. Image URLs are kept as references only.

Errors: a malformed line (bad JSON, bytes that are not UTF-8, a CSV record with the wrong number of fields), a
missing required field or a bad value raises ``DataError`` naming the file, the line and the field. With
``lenient=True`` such records are skipped instead, counted by reason, and the first ones listed in the report.
A missing column in a CSV header is always an error.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from mrhp.data.dump_files import SkipLog
from mrhp.data.dump_formats import (
    ColumnMapping,
    read_amazon,
    read_amazon2023,
    read_amazon2023_metadata,
    read_amazon_metadata,
    read_finefood,
    read_table,
    read_yelp,
    read_yelp_business,
)
from mrhp.data.dump_pipeline import (
    SPLIT_BY,
    DumpProduct,
    DumpReview,
    check_unique_review_ids,
    drop_young_reviews,
    merge_products,
    merge_variants,
    split_reviews,
    unique_review_ids,
)
from mrhp.data.records import (
    VOTE_SCHEMES,
    RawDataset,
    RecordError,
    describe_source,
)
from mrhp.data.steam import read_steam
from mrhp.errors import MrhpError

logger = logging.getLogger(__name__)

DUMP_FORMATS = ("amazon2018", "amazon2014", "amazon2023", "finefood", "yelp", "steam", "csv")
# Formats whose --metadata file gives the product side.
METADATA_FORMATS = ("amazon2018", "amazon2014", "amazon2023")
# Formats whose review copies are collapsed (and products sharing a copy merged): see merge_variants.
MERGED_FORMATS = ("amazon2018", "amazon2014", "amazon2023", "finefood")


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
    split_by: str = "product",
    dump_date: int | None = None,
    min_review_age_days: float = 30,
    votes_scheme: str = "log2",
    max_level: int = 4,
    min_reviews: int = 2,
    drop_single_level: bool = False,
    relevance_threshold: int = 1,
) -> RawDataset:
    """Read a public review dump (see the module docstring) into a raw dataset split by product.

    Args:
        fmt: one of :data:`DUMP_FORMATS`.
        input_path: the reviews file (``steam``: the folder of ``review_<appid>.json`` files).
        metadata: Amazon metadata file (:data:`METADATA_FORMATS`), for product text and image URLs.
        metadata_features: ``amazon2023``: add the metadata's ``features`` list to the product text.
        business: Yelp business file (``yelp``), for product text.
        columns: the column mapping (``csv``; required there).
        lenient: skip and count malformed records instead of failing on the first.
        fractions, seed: train/dev/test fractions (of products, or of reviews with ``split_by="time"``) and the
            seed of the product split.
        split_by: ``"product"`` or ``"time"`` (:data:`~mrhp.data.dump_pipeline.SPLIT_BY`; see
            :mod:`mrhp.data.dump_pipeline`).
        dump_date: when the dump was collected (seconds since the epoch, UTC), None = unknown; reviews written
            less than ``min_review_age_days`` before it are left out (too young to have collected votes).
        votes_scheme, max_level: vote count -> level mapping (:func:`~mrhp.data.records.votes_to_level`).
        min_reviews: products with fewer reviews (after de-duplication) are dropped.
        drop_single_level: also drop products whose reviews all have the same level.
        relevance_threshold: only for the report's count of products with a relevant review (label > it).

    Returns:
        The raw dataset; ``notes`` holds the conversion report (:func:`~mrhp.data.prepare.format_dump_report`).
    """
    _check_dump_options(fmt, metadata=metadata, metadata_features=metadata_features, business=business,
                        columns=columns, split_by=split_by, min_review_age_days=min_review_age_days,
                        votes_scheme=votes_scheme, min_reviews=min_reviews)
    input_path = Path(input_path)
    skips = SkipLog(lenient)
    counts: Counter = Counter()
    reviews, products = _read_format(fmt, input_path, skips, counts, metadata=metadata,
                                     metadata_features=metadata_features, business=business, columns=columns)
    read = len(reviews)
    reviews, products = _unique_reviews(fmt, reviews, products, skips, counts, business=business, columns=columns)
    if dump_date is not None:
        reviews, young = drop_young_reviews(reviews, dump_date, min_review_age_days)
        counts.update(young)
    splits, report = split_reviews(
        reviews, products, input_path, split_by=split_by, fractions=fractions, seed=seed, votes_scheme=votes_scheme,
        max_level=max_level, min_reviews=min_reviews, drop_single_level=drop_single_level,
        relevance_threshold=relevance_threshold,
    )
    if metadata is not None:
        counts["products without a metadata line (empty product text)"] = sum(
            p.id not in products for split in splits.values() for p in split.products)
    notes = _dump_notes(fmt, read, skips, counts, report)
    source = describe_source(
        fmt, input_path, metadata=metadata, metadata_features=metadata_features, business=business,
        columns=dict(columns.columns()) if columns is not None else None, fractions=fractions, seed=seed,
        split_by=split_by, dump_date=dump_date, min_review_age_days=min_review_age_days if dump_date else None,
        votes_scheme=votes_scheme, max_level=max_level, min_reviews=min_reviews, drop_single_level=drop_single_level,
        lenient=lenient,
    )
    raw = RawDataset(source=source, splits=splits, notes=notes)
    raw.validate()
    logger.info("read %d reviews of %d products from %s (%d skipped)", read, report["products_read"], input_path,
                skips.total)
    return raw


def _check_dump_options(
    fmt: str, *, metadata: str | Path | None, metadata_features: bool, business: str | Path | None,
    columns: ColumnMapping | None, split_by: str, min_review_age_days: float, votes_scheme: str, min_reviews: int,
) -> None:
    """Before reading: the options of :func:`read_dump` fit each other and the format."""
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
    if split_by not in SPLIT_BY:
        raise MrhpError(f"unknown --split-by {split_by!r} (choose from {', '.join(SPLIT_BY)})")
    if min_review_age_days < 0:
        raise MrhpError(f"--min-review-age must be >= 0 days, got {min_review_age_days}")
    if (columns is None) == (fmt == "csv"):
        raise MrhpError("--columns is required for --format csv and only used there")


def _read_format(
    fmt: str, input_path: Path, skips: SkipLog, counts: Counter, *, metadata: str | Path | None,
    metadata_features: bool, business: str | Path | None, columns: ColumnMapping | None,
) -> tuple[list[DumpReview], dict[str, DumpProduct]]:
    """The reviews and the product side read by the format's reader (and its product file, when given)."""
    products: dict[str, DumpProduct] = {}
    if fmt in ("amazon2018", "amazon2014"):
        reviews = read_amazon(input_path, skips, 2018 if fmt == "amazon2018" else 2014, counts)
        if metadata is not None:
            products = read_amazon_metadata(Path(metadata), skips, counts)
    elif fmt == "amazon2023":
        reviews = read_amazon2023(input_path, skips, counts)
        if metadata is not None:
            products = read_amazon2023_metadata(Path(metadata), skips, counts, metadata_features)
    elif fmt == "finefood":
        reviews = read_finefood(input_path, skips, counts)
    elif fmt == "yelp":
        reviews = read_yelp(input_path, skips)
        if business is not None:
            products = read_yelp_business(Path(business), skips)
    elif fmt == "steam":
        reviews, products = read_steam(input_path, skips, counts)
    else:
        assert columns is not None
        reviews, products = read_table(input_path, skips, columns)
    return reviews, products


def _unique_reviews(
    fmt: str, reviews: list[DumpReview], products: dict[str, DumpProduct], skips: SkipLog, counts: Counter, *,
    business: str | Path | None, columns: ColumnMapping | None,
) -> tuple[list[DumpReview], dict[str, DumpProduct]]:
    """Collapse the copies of a review (merging the products that share one) or check the review ids are unique;
    skip the Yelp reviews of a business the business file lacks."""
    if fmt in MERGED_FORMATS:
        reviews, product_of, merge_counts = merge_variants(reviews)
        counts.update(merge_counts)
        products = merge_products(products, product_of)
        counts["review ids made unique with the line number"] += unique_review_ids(reviews)
    elif fmt != "steam":  # the steam reader checks its ids itself (its reviews have no line)
        check_unique_review_ids(reviews, "review_id" if fmt == "yelp" else columns.review or "review")
    if business is not None:
        for review in reviews:
            if review.product_id not in products:
                file, _, line = review.where.rpartition(" line ")
                skips.skip(RecordError(f"business {review.product_id!r} is not in {Path(business).name}",
                                       "unknown business", file=file, line=int(line), field="business_id"))
        reviews = [r for r in reviews if r.product_id in products]
    return reviews, products


def _dump_notes(fmt: str, read: int, skips: SkipLog, counts: Counter, report: dict) -> dict:
    """The conversion report (``RawDataset.notes``): what was read, skipped and counted, and the pipeline's
    report."""
    return {
        "dump": {
            "format": fmt,
            "records_read": read,
            "skipped": dict(skips.counts),
            "skipped_listed": list(skips.examples),
            "counts": {k: int(v) for k, v in counts.items() if v},
            **report,
        }
    }
