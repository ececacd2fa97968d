"""The floor + model blend (mrhp.studies.blend) on a hand-made prepared dataset: within-list standardization, the
weight picked on dev, and the edges a wrong implementation gets wrong (padding or other products in a list's mean,
a constant list dividing by zero, ties going to the model)."""

from __future__ import annotations

import numpy as np
import pytest

from mrhp.data.prepare import prepare_dataset
from mrhp.data.prepared import PreparedDataset
from mrhp.data.records import RawDataset, RawProduct, RawReview, RawSplit
from mrhp.studies.blend import (
    WEIGHTS,
    BlendSource,
    blend,
    pick_weight,
    standardize_per_product,
)


def _split(tmp_path, lists: dict[str, list[int]]):
    """One prepared dev split: product id -> the labels of its reviews (in that order)."""
    reviews = [RawReview(f"{pid}-{k}", pid, "a b", label) for pid, labels in lists.items()
               for k, label in enumerate(labels)]
    raw = RawSplit("dev", [RawProduct(pid, "") for pid in lists], reviews)
    prepare_dataset(RawDataset({"format": "test"}, {"train": raw, "dev": raw}), tmp_path / "d", min_count=1)
    return PreparedDataset.open(tmp_path / "d").split("dev")


def test_standardize_uses_each_products_own_reviews(tmp_path):
    split = _split(tmp_path, {"P": [0, 1, 2], "Q": [0, 1], "R": [1, 0]})
    scores = np.array([1.0, 2.0, 3.0, 10.0, 30.0, 5.0, 5.0])
    standard = standardize_per_product(split, scores)
    # P: mean 2, population sd sqrt(2/3); Q: mean 20, sd 10; R: all equal, 0 (no division by zero).
    assert standard[:3] == pytest.approx([-np.sqrt(1.5), 0.0, np.sqrt(1.5)])
    assert standard[3:5] == pytest.approx([-1.0, 1.0])
    assert standard[5:].tolist() == [0.0, 0.0]


def test_blend_ends_are_the_two_rankers():
    floor, model = np.array([1.0, -1.0]), np.array([-2.0, 2.0])
    assert blend(floor, model, 0.0).tolist() == [1.0, -1.0]
    assert blend(floor, model, 1.0).tolist() == [-2.0, 2.0]
    assert blend(floor, model, 0.25).tolist() == pytest.approx([0.25, -0.25])
    assert WEIGHTS[0] == 0.0 and WEIGHTS[-1] == 1.0


def test_pick_weight_by_hand(tmp_path):
    # P: labels 0, 2 (the second review relevant at threshold 1); Q: labels 2, 0.
    split = _split(tmp_path, {"P": [0, 2], "Q": [2, 0]})
    # The floor ranks P right and Q wrong, strongly for P (+-1 either way after standardizing, so equal);
    # the model ranks both right. With equal standardized margins the blend is right on Q only once the model's
    # share passes 1/2: a > 0.5 gives MAP 1.0 on both.
    floor = standardize_per_product(split, np.array([0.0, 1.0, 0.0, 1.0]))
    model = standardize_per_product(split, np.array([0.0, 1.0, 1.0, 0.0]))
    weight, maps = pick_weight([BlendSource(split, floor, model, 1)], ties="pessimistic")
    assert maps[0.0] == pytest.approx(75.0)  # P: AP 1, Q: AP 1/2
    # At a = 0.5 Q's two reviews tie; pessimistic ties put the relevant one last.
    assert maps[0.5] == pytest.approx(75.0)
    assert maps[0.6] == pytest.approx(100.0) and maps[1.0] == pytest.approx(100.0)
    assert weight == 0.6  # the smallest share reaching the best dev MAP


def test_pick_weight_keeps_the_floor_when_the_model_adds_nothing(tmp_path):
    split = _split(tmp_path, {"P": [0, 2], "Q": [2, 0]})
    floor = standardize_per_product(split, np.array([0.0, 1.0, 1.0, 0.0]))  # right on both
    model = standardize_per_product(split, np.array([1.0, 0.0, 0.0, 1.0]))  # wrong on both
    weight, maps = pick_weight([BlendSource(split, floor, model, 1)], ties="pessimistic")
    assert weight == 0.0 and maps[0.0] == pytest.approx(100.0) and maps[1.0] == pytest.approx(50.0)


def test_pick_weight_pools_products_not_sources(tmp_path):
    """Two sources of 1 and 3 products: the pooled dev MAP is the mean over the 4 products, not of the two sources'
    means (which would weigh the one-product source's product three times as much)."""
    one = _split(tmp_path / "one", {"A": [0, 2]})
    three = _split(tmp_path / "three", {"B": [0, 2], "C": [0, 2], "D": [0, 2]})

    def right(split):  # the relevant second review first
        return standardize_per_product(split, np.tile([0.0, 1.0], split.num_products))

    def wrong(split):
        return standardize_per_product(split, np.tile([1.0, 0.0], split.num_products))

    # The floor is right on the three-product source, the model on the one-product source.
    sources = [BlendSource(one, wrong(one), right(one), 1), BlendSource(three, right(three), wrong(three), 1)]
    weight, maps = pick_weight(sources, ties="pessimistic")
    assert maps[0.0] == pytest.approx(100 * (0.5 + 3) / 4) and maps[1.0] == pytest.approx(100 * (1 + 1.5) / 4)
    assert weight == 0.0
