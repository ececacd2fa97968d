"""Floors (mrhp.studies.floors) on tiny prepared datasets: hand-computed length floor, random floor, features, LambdaMART."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from mrhp.cli import main
from mrhp.data.prepare import prepare_dataset
from mrhp.data.prepared import PreparedDataset
from mrhp.data.records import RawDataset, RawProduct, RawReview, RawSplit
from mrhp.studies.floors import (
    BASE_FEATURES,
    TextSummary,
    evaluate_floor,
    random_floor,
    review_features,
    train_lambdamart,
)


def raw_split(name: str, products: dict[str, list[tuple[str, int, float | None]]]) -> RawSplit:
    """products: id -> [(text, label, rating)]"""
    reviews = [RawReview(f"{pid}-{k}", pid, text, label, rating=rating)
               for pid, rows in products.items() for k, (text, label, rating) in enumerate(rows)]
    return RawSplit(name, [RawProduct(pid, "") for pid in products], reviews)


@pytest.fixture(scope="module")
def hand(tmp_path_factory) -> PreparedDataset:
    """Test: product T1 with reviews of 1, 3 and 2 tokens (labels 0, 3, 2); T2 with 3, 1 tokens (labels 0, 2)."""
    splits = {
        "train": raw_split("train", {"A": [("a b", 1, 5.0), ("a", 0, 4.0)]}),
        "dev": raw_split("dev", {"D": [("a", 0, 3.0), ("a b", 2, None)]}),
        "test": raw_split("test", {"T1": [("x", 0, 1.0), ("x y z", 3, 5.0), ("x y", 2, 3.0)],
                                   "T2": [("x y z", 0, 2.0), ("x", 2, 4.0)]}),
    }
    path = tmp_path_factory.mktemp("hand") / "prepared"
    prepare_dataset(RawDataset({"format": "test"}, splits), path, min_count=1)
    return PreparedDataset.open(path)


def test_length_floor_by_hand(hand: PreparedDataset):
    summary, product_ids, values = evaluate_floor(hand, "length", "test", threshold=1, ties="pessimistic")
    assert product_ids == ["T1", "T2"]
    # T1 ranked 3, 2, 1 tokens = labels 3, 2, 0: perfect. T2 ranked labels 0, 2: the one relevant review at rank 2.
    assert values["map"].tolist() == pytest.approx([1.0, 0.5])
    dcg_t2 = 3 / math.log2(3)  # gain 2**2 - 1 at rank 2
    assert values["ndcg@3"].tolist() == pytest.approx([1.0, dcg_t2 / 3.0])
    assert summary["map"] == pytest.approx(75.0)


def test_random_floor_averages_shuffles(hand: PreparedDataset):
    split = hand.split("test")
    product_ids, values = random_floor(split, threshold=1, ties="pessimistic", shuffles=400, seed=0)
    # T2: the relevant review is first half of the time: expected AP (1 + 0.5) / 2.
    assert values["map"][1] == pytest.approx(0.75, abs=0.05)
    again = random_floor(split, threshold=1, ties="pessimistic", shuffles=400, seed=0)[1]
    assert np.array_equal(values["map"], again["map"])


def test_review_features_by_hand(tmp_path: Path):
    splits = {"train": raw_split("train", {"P": [("Good. Very good!! ok", 1, 5.0), ("bad", 0, None),
                                                 ("fine fine ...", 0, 2.0)]})}
    prepare_dataset(RawDataset({"format": "test"}, splits), tmp_path / "d", min_count=1)
    dataset = PreparedDataset.open(tmp_path / "d")
    split = dataset.split("train")
    end_ids = np.array([dataset.vocab.id(t) for t in (".", "!", "?")])
    features, names = review_features(split, end_ids, TextSummary("none", len(dataset.vocab)))
    assert names == list(BASE_FEATURES) and features.shape == (3, len(BASE_FEATURES))
    column = dict(zip(names, features.T))
    assert column["sentences"].tolist() == [3, 1, 1]  # "Good." "Very good!!" "ok" / "bad" / "fine fine ..."
    assert split.review_lengths.tolist() == [7, 1, 5]
    assert column["type_token_ratio"].tolist() == pytest.approx([5 / 7, 1.0, 2 / 5])  # good . very ! ok
    assert column["rating_dev"][[0, 2]].tolist() == pytest.approx([1.5, -1.5])  # product mean of known: 3.5
    assert np.isnan(column["rating"][1]) and np.isnan(column["abs_rating_dev"][1])
    assert column["log_list_size"].tolist() == pytest.approx([math.log(3)] * 3)


def length_signal_dataset(path: Path) -> PreparedDataset:
    """Products of 4 reviews with 1..4 words in shuffled order; the label is the length minus one."""
    rng = np.random.default_rng(0)
    splits = {}
    for name, count in (("train", 40), ("dev", 10), ("test", 10)):
        products = {}
        for p in range(count):
            lengths = rng.permutation(4) + 1
            products[f"{name}{p}"] = [(" ".join(rng.choice(["u", "v", "w", "x"], size=n)), int(n - 1),
                                       float(rng.integers(1, 6))) for n in lengths]
        splits[name] = raw_split(name, products)
    prepare_dataset(RawDataset({"format": "test"}, splits), path, min_count=1)
    return PreparedDataset.open(path)


def test_lambdamart_learns_the_length_signal(tmp_path: Path):
    dataset = length_signal_dataset(tmp_path / "d")
    for text_features in ("tfidf", "none"):
        model = train_lambdamart(dataset, threshold=1, ties="pessimistic", text_features=text_features,
                                 min_data_in_leaf=5, max_rounds=60, early_stopping_rounds=10)
        scores = model.scores(dataset.split("test"))
        assert scores.shape == (40,) and np.isfinite(scores).all()
        assert model.dev_map == pytest.approx(100.0)
        summary, _, _ = evaluate_floor(dataset, "length", "test", threshold=1, ties="pessimistic")
        assert summary["map"] == pytest.approx(100.0)
    with pytest.raises(Exception, match="need word vectors"):
        train_lambdamart(dataset, threshold=1, ties="pessimistic", text_features="vectors")


def test_cli_floor_writes_per_product(hand: PreparedDataset, tmp_path: Path, capsys):
    out = tmp_path / "floor.jsonl"
    assert main(["floor", "--data", str(hand.path), "--method", "length", "--per-product", str(out)]) == 0
    assert "test: MAP 75.00" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["product_id"], r["map"]) for r in rows] == [("T1", 1.0), ("T2", 0.5)]
    assert main(["floor", "--data", str(hand.path), "--method", "length", "--split", "nope"]) == 2
    assert "no split 'nope'" in capsys.readouterr().err


def test_old_datasets_without_ratings_still_open(hand: PreparedDataset, tmp_path: Path):
    import shutil

    copy = tmp_path / "old"
    shutil.copytree(hand.path, copy)
    (copy / "test" / "review_rating.npy").unlink()
    split = PreparedDataset.open(copy).split("test")
    assert np.isnan(split.review_rating).all() and split.review_rating.shape == (5,)
    assert hand.split("test").review_rating.tolist() == [1.0, 5.0, 3.0, 2.0, 4.0]
