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
reviews all share one level are dropped too (every ranking of them scores the same). Split by product with
:func:`~mrhp.data.records.split_products` (seeded). Image URLs are kept as references only: they cannot be fetched
offline, so those items have no image features, and the report says so.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
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


def split_by_product(
    reviews: Sequence[DumpReview],
    products: dict[str, DumpProduct],
    input_path: Path,
    *,
    fractions: Sequence[float],
    seed: int,
    votes_scheme: str,
    max_level: int,
    min_reviews: int,
    drop_single_level: bool,
    relevance_threshold: int,
) -> tuple[dict[str, RawSplit], dict]:
    """Label the reviews, drop the products the filters reject and split the others (see the module docstring).

    Returns the splits that have products (train always does, else ``DataError``) and the conversion report's
    counts of products and reviews, overall and per split. ``input_path`` names the input in errors.
    """
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
    splits = {name: RawSplit(name, [], []) for name in SPLIT_NAMES}
    for pid in kept_ids:
        side = products.get(pid, DumpProduct(""))
        split = splits[assignment[pid]]
        split.products.append(RawProduct(pid, side.text, None, image_refs=side.images))
        for review, label in zip(by_product[pid], levels[pid]):
            split.reviews.append(RawReview(review.review_id, pid, review.text, label, None, rating=review.rating,
                                           image_refs=review.images, time=review.time, verified=review.verified))
    splits = {name: s for name, s in splits.items() if s.products}
    if "train" not in splits:
        raise DataError("the split leaves no product for train; give more products or other --split-fractions",
                        file=input_path)

    with_urls = sum(1 for s in splits.values() for item in [*s.products, *s.reviews] if item.image_refs)
    report = {
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
    return splits, report


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
