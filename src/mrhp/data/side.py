"""Per-review side features computed when a dataset is prepared, stored in ``{split}/review_side.npy`` (float32
``[N, len(STORED_SIDE_FEATURES)]``, NaN = unknown) beside ``{split}/review_time.npy``; models read them when
``model.extra_side_features`` names them (:mod:`mrhp.data.batching`) and the floors always do
(:mod:`mrhp.studies.floors`).

None is derived from the votes (the label), so they can be given to a model without leaking it: e.g. MDSD's
``total_vote`` is the label's denominator and is never read. Each is computed over all of a product's reviews in
the prepared dataset, whatever split they are in (under ``--split-by time`` a product's reviews are spread over
the splits):

====================  ==============================================================================================
``age_rank``          how many of the product's reviews are strictly older (the oldest is 0; equal times share a
                      rank); NaN when the review's time is unknown. Older reviews have been exposed to voters for
                      longer: a feature for *predicting votes*, a shortcut for *ranking by quality*.
``age``               ``age_rank / (n - 1)``, ``n`` the product's reviews with a known time (0 when ``n = 1``), so
                      0 = oldest and 1 = newest whatever the product's size.
``verified``          1 for a verified purchase, 0 for one that is not, NaN when the source does not say.
``has_images``        1 when the review has images (features or image URLs), else 0.
``rating_deviation``  the rating minus the mean rating of the product's reviews with a known rating; NaN when the
                      review's rating is unknown.
====================  ==============================================================================================
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mrhp.data.records import RawSplit

STORED_SIDE_FEATURES = ("age_rank", "age", "verified", "has_images", "rating_deviation")
# When a review's time is unknown: review_time.npy holds this (the smallest int64, which no real time reaches).
NO_TIME = int(np.iinfo(np.int64).min)


def parse_side_names(text: str) -> tuple[int, ...]:
    """The columns of the comma-separated :data:`STORED_SIDE_FEATURES` names in ``text`` ("" = none), in the
    order given; ``ValueError`` for an unknown or repeated name."""
    names = [name.strip() for name in text.split(",")] if text.strip() else []
    for name in names:
        if name not in STORED_SIDE_FEATURES:
            raise ValueError(f"unknown side feature {name!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"a side feature is named twice in {text!r}")
    return tuple(STORED_SIDE_FEATURES.index(name) for name in names)


def review_times(split: RawSplit) -> np.ndarray:
    """int64 ``[N]`` review times in seconds since the epoch (UTC), :data:`NO_TIME` where unknown."""
    return np.array([NO_TIME if r.time is None else r.time for r in split.reviews], dtype=np.int64)


def stored_side_features(splits: Mapping[str, RawSplit]) -> dict[str, np.ndarray]:
    """The :data:`STORED_SIDE_FEATURES` of every review: ``{split: float32 [N, 5]}`` (see the module docstring)."""
    # Every review as (split, row), grouped by product across the splits.
    by_product: dict[str, list[tuple[str, int]]] = {}
    for name, split in splits.items():
        for row, review in enumerate(split.reviews):
            by_product.setdefault(review.product_id, []).append((name, row))
    out = {name: np.full((len(split.reviews), len(STORED_SIDE_FEATURES)), np.nan, dtype=np.float32)
           for name, split in splits.items()}
    for members in by_product.values():
        reviews = [splits[name].reviews[row] for name, row in members]
        times = np.array([np.nan if r.time is None else float(r.time) for r in reviews])  # [n]
        known_times = np.sort(times[~np.isnan(times)])
        # Reviews strictly older: the left insertion point among the sorted known times.
        ranks = np.where(np.isnan(times), np.nan, np.searchsorted(known_times, np.nan_to_num(times), side="left"))
        ages = ranks / max(1, len(known_times) - 1)
        ratings = np.array([np.nan if r.rating is None else r.rating for r in reviews])  # [n]
        known_ratings = ratings[~np.isnan(ratings)]
        deviation = ratings - known_ratings.mean() if known_ratings.size else ratings
        for k, ((name, row), review) in enumerate(zip(members, reviews)):
            verified = np.nan if review.verified is None else float(review.verified)
            has_images = float(review.features is not None or bool(review.image_refs))
            out[name][row] = (ranks[k], ages[k], verified, has_images, deviation[k])
    return out
