"""From the reviews read from a public dump (:mod:`mrhp.data.dumps`) to the splits of a raw dataset: de-duplication,
labels, product filters, the split by product and the conversion report.

De-duplication (Amazon formats). The 2018 and 2014 dumps repeat one review once per style variant: the copies
share reviewer, time, summary and text but sit under several ``asin``\\ s (variants of one product) and sometimes
twice under the same one; Fine Food has the same duplicates. Copies are collapsed into one review (file order of
the first copy; votes = the largest count among the copies, and copies whose counts differ are counted), and the
ids that share a review are merged into one product (connected components; the product id is the smallest id),
so no review is in two products and no product is split across train and test.

Labels: :func:`~mrhp.data.records.votes_to_level` (``--votes-scheme``: ``log2`` = ``min(4, floor(log2(1 +
votes)))`` by default). Products: at least ``min_reviews`` reviews; with ``drop_single_level`` the products whose
reviews all share one level are dropped too (every ranking of them scores the same).

Split (``--split-by``, :data:`SPLIT_BY`). ``product`` (the default, as in the paper's benchmarks): whole products
at random with :func:`~mrhp.data.records.split_products` (seeded). ``time``: global date cut-offs, so that test
holds the newest reviews of the dump (``fractions[2]`` of them), dev the next newest, train the rest; a product
then has a list in every split it has reviews in, and a part too small to rank (fewer than ``min_reviews``
reviews, or single-level with ``drop_single_level``) is dropped from that split and counted. Why global cut-offs
rather than the newest reviews of each product: it is the use the split measures, a model trained at some date
ranking the reviews written after it. No training review is newer than any dev or test review, so nothing of the
later period (its products, its wording, its vote dynamics) reaches training through other products, as it does
when each product keeps its own newest reviews (train reviews of an old product can then be years newer than test
reviews of another). The reviews of a test list also come from one short, recent window, so their ages, and with
them their exposure to voters, differ far less than across a product's whole history: the time split is where
ranking by content is measured with exposure controlled. The price: products without recent reviews have no test
list, and the newest reviews have had the least time to collect votes, hence ``--dump-date`` with
:func:`drop_young_reviews`.

Image URLs are kept as references only: they cannot be fetched offline, so those items have no image features,
and the report says so.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from mrhp.data.records import (
    SPLIT_NAMES,
    RawProduct,
    RawReview,
    RawSplit,
    split_products,
    votes_to_level,
)
from mrhp.errors import DataError, MrhpError

# How ``mrhp prepare --split-by`` forms train/dev/test: by product (random, seeded) or by review time.
SPLIT_BY = ("product", "time")


@dataclass
class DumpReview:
    """One review as read from a dump, before de-duplication and labelling.

    ``key`` identifies the copies of one review (reviewer, time, summary, text) in the Amazon formats, None when
    the review cannot have copies. ``where`` is ``"FILE line N"`` (``"FILE, review ID"`` for a JSON document of
    reviews) for messages. ``time``: when the review was written, in seconds since the epoch (UTC), None when the
    dump does not say; ``verified``: a verified purchase (None = the dump does not say).
    """

    product_id: str
    review_id: str
    text: str
    votes: int
    rating: float | None
    images: tuple[str, ...]
    where: str
    key: tuple | None = None
    time: int | None = None
    verified: bool | None = None


@dataclass
class DumpProduct:
    """Product side from a metadata / business file (or a csv column): text and image URL references."""

    text: str
    images: tuple[str, ...] = ()


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
        kept.append(replace(review, product_id=product_of[review.product_id], votes=max(votes)))
    merged = Counter(product_of.values())
    counts["products merged from several ids (variants)"] = sum(1 for n in merged.values() if n > 1)
    counts["ids merged into another product"] = sum(n - 1 for n in merged.values())
    return kept, product_of, counts


def merge_products(products: dict[str, DumpProduct], product_of: dict[str, str]) -> dict[str, DumpProduct]:
    """The product sides by merged product id (:func:`merge_variants`): each takes the side of its smallest id
    that has one."""
    merged: dict[str, DumpProduct] = {}
    for pid in sorted(product_of):
        if pid in products:
            merged.setdefault(product_of[pid], products[pid])
    return merged


def unique_review_ids(reviews: list[DumpReview]) -> int:
    """Make review ids unique by adding the line to a repeated id (Amazon ids are built from reviewer and
    time); returns how many were renamed. Formats with a review id column check them instead
    (:func:`check_unique_review_ids`)."""
    seen: set[str] = set()
    renamed = 0
    for review in reviews:
        if review.review_id in seen:
            review.review_id = f"{review.review_id}:{review.where.rsplit(' ', 1)[-1]}"
            renamed += 1
        seen.add(review.review_id)
    return renamed


def check_unique_review_ids(reviews: list[DumpReview], name: str) -> None:
    """``DataError`` naming both lines for a review id (column ``name``) given twice."""
    seen: dict[str, str] = {}
    for review in reviews:
        if review.review_id in seen:
            file, _, line = review.where.rpartition(" line ")
            raise DataError(f"duplicate review id {review.review_id!r} (also {seen[review.review_id]})", file=file,
                            line=int(line), field=name)
        seen[review.review_id] = review.where


def split_reviews(
    reviews: Sequence[DumpReview],
    products: dict[str, DumpProduct],
    input_path: Path,
    *,
    split_by: str = "product",
    fractions: Sequence[float],
    seed: int,
    votes_scheme: str,
    max_level: int,
    min_reviews: int,
    drop_single_level: bool,
    relevance_threshold: int,
) -> tuple[dict[str, RawSplit], dict]:
    """Label the reviews, drop the products the filters reject and split the others (``split_by`` in
    :data:`SPLIT_BY`; see the module docstring).

    Returns the splits that have products (train always does, else ``DataError``) and the conversion report's
    counts of products and reviews, overall and per split. ``input_path`` names the input in errors.
    """
    if split_by not in SPLIT_BY:
        raise MrhpError(f"unknown --split-by {split_by!r} (choose from {', '.join(SPLIT_BY)})")
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
        if split_by == "product":
            assignment = split_products(kept_ids, fractions, seed)
            split_of = {pid: [assignment[pid]] * len(by_product[pid]) for pid in kept_ids}
            cutoffs = None
        else:
            split_of, cutoffs = _split_by_time({pid: by_product[pid] for pid in kept_ids}, fractions)
    except ValueError as exc:
        raise MrhpError(f"--split-fractions: {exc}") from None
    splits, short = _fill_splits(kept_ids, split_of, by_product, levels, products, min_reviews, drop_single_level)
    splits = {name: s for name, s in splits.items() if s.products}
    if "train" not in splits:
        raise DataError("the split leaves no product for train; give more products or other --split-fractions",
                        file=input_path)

    with_urls = sum(1 for s in splits.values() for item in [*s.products, *s.reviews] if item.image_refs)
    report = {
        "split_by": split_by,
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
    if split_by == "time":
        report["time_cutoffs"] = cutoffs
        report["split_lists_dropped"] = int(short["lists"])
        report["reviews_dropped_in_split_lists"] = int(short["reviews"])
    return splits, report


def _fill_splits(
    kept_ids: list[str], split_of: dict[str, list[str]], by_product: dict[str, list[DumpReview]],
    levels: dict[str, list[int]], products: dict[str, DumpProduct], min_reviews: int, drop_single_level: bool,
) -> tuple[dict[str, RawSplit], Counter]:
    """The splits' products and labelled reviews (each split's reviews of a product form its list), and the count
    of the lists (and their reviews) dropped as too small to rank or single-level."""
    # The reviews of each product in each split; under the time split a product's part of a split can be too
    # small to rank (or single-level), and is then dropped from that split like a product from the dataset.
    lists: dict[str, dict[str, list[int]]] = {name: {} for name in SPLIT_NAMES}
    for pid in kept_ids:
        for k, name in enumerate(split_of[pid]):
            lists[name].setdefault(pid, []).append(k)
    short = Counter()
    splits = {name: RawSplit(name, [], []) for name in SPLIT_NAMES}
    for name in SPLIT_NAMES:
        for pid, members in lists[name].items():
            if len(members) < min_reviews or (drop_single_level and len({levels[pid][k] for k in members}) == 1):
                short["lists"] += 1
                short["reviews"] += len(members)
                continue
            side = products.get(pid, DumpProduct(""))
            splits[name].products.append(RawProduct(pid, side.text, None, image_refs=side.images))
            for k in members:
                review = by_product[pid][k]
                splits[name].reviews.append(RawReview(review.review_id, pid, review.text, levels[pid][k], None,
                                                      rating=review.rating, image_refs=review.images,
                                                      time=review.time, verified=review.verified))
    return splits, short


def _split_by_time(by_product: dict[str, list[DumpReview]],
                   fractions: Sequence[float]) -> tuple[dict[str, list[str]], dict[str, str | None]]:
    """The split of every review under global date cut-offs: test holds the newest ``fractions[2]`` of the
    reviews, dev the next newest ``fractions[1]``, train the rest; reviews at a cut-off's exact time go to the
    later split, so one moment is never split. Returns the split names per product (in review order) and the
    cut-offs (UTC times, None for an empty split). ``DataError`` for a review without a time."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}")
    for reviews in by_product.values():
        for review in reviews:
            if review.time is None:
                raise DataError("--split-by time needs every review's time, and this review has none",
                                file=review.where)
    times = np.sort(np.array([r.time for rs in by_product.values() for r in rs], dtype=np.int64))  # [N]
    n = len(times)
    n_test = round(fractions[2] * n)
    n_dev = round(fractions[1] * n)
    # A cut-off is the time of the oldest review of the later split; beyond the newest time when it is empty.
    after_all = int(times[-1]) + 1
    test_from = int(times[n - n_test]) if n_test > 0 else after_all
    dev_from = int(times[max(0, n - n_test - n_dev)]) if n_dev > 0 else test_from
    split_of = {
        pid: ["test" if r.time >= test_from else "dev" if r.time >= dev_from else "train" for r in reviews]
        for pid, reviews in by_product.items()
    }
    cutoffs = {"dev": utc_moment(dev_from) if n_dev > 0 else None,
               "test": utc_moment(test_from) if n_test > 0 else None}
    return split_of, cutoffs


def utc_moment(seconds: int) -> str:
    """``YYYY-MM-DD HH:MM:SS`` (UTC) of a time in seconds since the epoch."""
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def drop_young_reviews(reviews: list[DumpReview], dump_date: int,
                       min_age_days: float) -> tuple[list[DumpReview], Counter]:
    """The reviews written at least ``min_age_days`` before ``dump_date`` (seconds, UTC): younger reviews have had
    too little time to collect votes, so their label says more about their age than about them. Reviews of
    unknown time are kept (and counted); a review written after the dump date is an error (the date is wrong)."""
    limit = dump_date - int(min_age_days * 86_400)
    counts: Counter = Counter()
    kept = []
    for review in reviews:
        if review.time is not None and review.time > dump_date:
            raise DataError(f"written {utc_moment(review.time)} UTC, after --dump-date {utc_moment(dump_date)}: "
                            "give the date the dump was collected", file=review.where)
        if review.time is not None and review.time > limit:
            counts[f"reviews younger than {min_age_days:g} days at the dump date (dropped)"] += 1
            continue
        counts["reviews of unknown time (kept whatever the dump date)"] += review.time is None
        kept.append(review)
    return kept, counts


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
