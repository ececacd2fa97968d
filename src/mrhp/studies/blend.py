"""A floor blended with the model: what the model adds to the best cheap ranker.

A model that loses to the LambdaMART floor may still know something the floor does not. The blend measures it:
both rankers' scores are standardized within each product's list, because their scales differ (LambdaMART gives
unbounded margins, the model hinge scores), and mixed as ``(1 - a) * floor + a * model`` with one weight ``a``
from ``WEIGHTS``, picked on the dev MAP of every dev product of every source pooled. ``a = 0`` is the floor
alone, so on dev the blend is never below the floor; on test it may be. Equal dev MAPs go to the smaller ``a``.

Written here rather than taken from a library: it is a within-list z-score and one grid search over our split
layout, and no stacking library works with product lists and our relevance and ties rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from mrhp.data.prepared import PreparedSplit
from mrhp.scoring.evaluate import per_product_metrics

WEIGHTS = tuple(k / 10 for k in range(11))  # the model's share a: 0 (floor alone) to 1 (model alone)


def standardize_per_product(split: PreparedSplit, scores: np.ndarray) -> np.ndarray:
    """float64 ``[N]``: each review's score minus its product's mean, over the product's standard deviation (over
    that product's reviews only); a product whose reviews all score the same gets 0 for each."""
    scores = np.asarray(scores, dtype=np.float64)
    standard = np.zeros(split.num_reviews)
    for product in range(split.num_products):
        reviews = np.asarray(split.reviews_of(product), dtype=np.int64)
        if reviews.size == 0:
            continue
        values = scores[reviews]
        spread = values.std()
        standard[reviews] = (values - values.mean()) / spread if spread > 0 else 0.0
    return standard


def blend(floor: np.ndarray, model: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - a) * floor + a * model`` over standardized ``[N]`` scores, ``a = weight``."""
    return (1.0 - weight) * floor + weight * model


class BlendSource(NamedTuple):
    """One source's split with both rankers' standardized scores (``[N]`` each) and its relevance rule."""

    split: PreparedSplit
    floor: np.ndarray
    model: np.ndarray
    threshold: int


def pick_weight(dev: Sequence[BlendSource], ties: str) -> tuple[float, dict[float, float]]:
    """The weight of ``WEIGHTS`` with the highest MAP over all dev products of ``dev`` pooled (each product
    counts once, whatever its source), and the pooled dev MAP x100 of every weight."""
    maps = {}
    for weight in WEIGHTS:
        values = [per_product_metrics(s.split, blend(s.floor, s.model, weight), s.threshold, ties)[1]["map"]
                  for s in dev]
        maps[weight] = 100.0 * float(np.concatenate(values).mean())
    best = max(maps.values())
    return next(w for w in WEIGHTS if maps[w] == best), maps
