"""The Python API (`mrhp.prepare`, `mrhp.train`, `mrhp.load_ranker`) and the one request parser, on a tiny model
trained here from a JSON-lines dataset: `Ranker.rank` gives exactly the scores of `mrhp predict`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mrhp
from mrhp.cli import main
from mrhp.errors import DataError
from mrhp.ranking.request import RequestError

WORDS = ["great", "pot", "lid", "steel", "bad", "handle", "cheap", "heavy", "ok", "love", "it", "rust"]
F = 6  # region feature size of the dataset
TINY = [
    "model.hidden_size=16", "model.embedding_dim=8", "model.num_heads=2", "model.interaction_layers=2",
    "model.feedforward_size=16", "train.lr=0.003", "data.batch_rows=16", "train.threads=1", "train.epochs=2",
]


def write_dataset(folder: Path) -> tuple[Path, Path]:
    """16 products (10 train, 3 dev, 3 test) with 3..5 reviews; a review's level is how often it says "great"."""
    rng = np.random.default_rng(0)
    (folder / "features").mkdir(parents=True)
    products, reviews = [], []
    for p in range(16):
        np.save(folder / "features" / f"p{p}.npy", rng.standard_normal((4, F)).astype(np.float32))
        split = "train" if p < 10 else "dev" if p < 13 else "test"
        products.append({"product_id": f"p{p}", "text": " ".join(rng.choice(WORDS, 5)), "split": split,
                         "images": [f"features/p{p}.npy"]})
        for k in range(3 + p % 3):
            words = list(rng.choice(WORDS, 1 + k)) + ["great"] * k
            reviews.append({"review_id": f"p{p}-r{k}", "product_id": f"p{p}", "text": " ".join(words),
                            "label": min(k, 4)})
    for name, rows in (("products", products), ("reviews", reviews)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder / "products.jsonl", folder / "reviews.jsonl"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("api")
    products, reviews = write_dataset(root / "data")
    report = mrhp.prepare(products, reviews, root / "prepared", min_count=1)
    assert report["features"]["dim"] == F
    best = mrhp.train(root / "prepared", root / "run", overrides=TINY, progress=False)
    assert best["epoch"] in (1, 2)
    assert callable(mrhp.train)  # the function: the training module is mrhp.training.loop
    return root / "run" / "best.safetensors"


@pytest.fixture(scope="module")
def ranker(checkpoint: Path) -> mrhp.Ranker:
    return mrhp.load_ranker(checkpoint)


def test_import_is_light():
    loaded = subprocess.run([sys.executable, "-c", "import sys, mrhp; print('torch' in sys.modules)"],
                            capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "False"


def test_rank_gives_the_scores_of_predict(ranker: mrhp.Ranker, checkpoint: Path, tmp_path: Path):
    np.save(tmp_path / "p.npy", np.ones((3, F), dtype=np.float32))
    np.save(tmp_path / "r.npy", np.full((2, F), 0.5, dtype=np.float32))
    product = {"product_id": "x", "name": "steel pot", "description": "glass lid", "images": [str(tmp_path / "p.npy")]}
    reviews = [
        {"review_id": "a", "text": "great great pot", "images": [str(tmp_path / "r.npy")]},
        {"review_id": "b", "text": "bad handle"},
        {"review_id": 7, "text": "", "images": [{"regions": np.zeros((1, F)).tolist()}]},
        {"review_id": "d", "text": "great lid love it"},
    ]
    (tmp_path / "in.jsonl").write_text(json.dumps({**product, "reviews": reviews}) + "\n")
    assert main(["predict", "--checkpoint", str(checkpoint), "--input", str(tmp_path / "in.jsonl"),
                 "--output", str(tmp_path / "out.jsonl"), "--no-progress"]) == 0
    predicted = json.loads((tmp_path / "out.jsonl").read_text())["reviews"]

    ranked = ranker.rank(product, reviews)
    assert ranked.review_ids == ["a", "b", "7", "d"] and ranked.scores.dtype == np.float64
    assert ranked.in_rank_order() == predicted  # same ids, scores and ranks, bit for bit
    assert sorted(ranked.ranks.tolist()) == [1, 2, 3, 4]
    order = np.argsort(ranked.ranks)
    assert np.all(np.diff(ranked.scores[order]) <= 0)  # rank 1 has the highest score

    by_text = ranker.rank("steel pot glass lid", ["great great pot", "bad handle"])
    assert by_text.review_ids == ["0", "1"] and len(by_text.scores) == 2


def test_equal_scores_keep_the_given_order():
    ranked = mrhp.RankedReviews.of(["a", "b", "c", "d"], np.array([0.5, 2.0, 0.5, -1.0]))
    assert ranked.ranks.tolist() == [2, 1, 3, 4]
    assert [review["review_id"] for review in ranked.in_rank_order()] == ["b", "a", "c", "d"]


BAD_INPUTS = {
    "text not a string": ({"text": "pot"}, [{"review_id": "a", "text": 5}], "field 'reviews[0].text': expected a string, got 5"),
    "no review id": ({"text": "pot"}, [{"text": "ok"}], "field 'reviews[0].review_id': missing required field"),
    "duplicate id": ({"text": "pot"}, ["ok", {"review_id": "0", "text": "ok"}],
                     "field 'reviews[1].review_id': duplicate review id '0'"),
    "no product text": ({"images": []}, ["ok"], "field 'text': missing product text"),
    "two product texts": ({"text": "pot", "name": "pot"}, ["ok"], "field 'text': give either 'text' or 'name'"),
    "feature size": ({"text": "pot", "images": [{"regions": [[0.0] * 3]}]}, ["ok"],
                     "field 'images[0].regions': region feature size 3, the model takes 6"),
    "ragged regions": ({"text": "pot"}, [{"review_id": "a", "text": "", "images": [{"regions": [[0.0] * F, [0.0]]}]}],
                       "field 'reviews[0].images[0].regions': rows of unequal length"),
    "not finite": ({"text": "pot", "images": [{"regions": [[float("nan")] * F]}]}, [],
                   "field 'images[0].regions': region features hold NaN"),
    "missing file": ({"text": "pot", "images": ["nowhere.npy"]}, [], "field 'images[0]': feature file not found"),
    "not an image": ({"text": "pot", "images": ["notes.txt"]}, [], "field 'images[0]': notes.txt is neither"),
    "bad base64": ({"text": "pot", "images": [{"data": "not base64!"}]}, [], "field 'images[0].data': not valid base64"),
    "reviews not a list": ({"text": "pot"}, None, "field 'reviews': expected a list of review objects"),
    "reviews in the product": ({"text": "pot", "reviews": []}, [], "field 'reviews': give the reviews as the second"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_names_the_field(ranker: mrhp.Ranker, case: str):
    product, reviews, message = BAD_INPUTS[case]
    with pytest.raises(RequestError) as error:
        ranker.rank(product, reviews)
    assert message in str(error.value)


def test_parse_a_request_line(ranker: mrhp.Ranker, tmp_path: Path):
    (tmp_path / "feat").mkdir()
    np.save(tmp_path / "feat" / "A0.npy", np.ones((49, F), dtype=np.float32))
    np.save(tmp_path / "feat" / "a1.npy", np.ones((7, F), dtype=np.float16))
    np.save(tmp_path / "feat" / "wide.npy", np.ones((2, F + 1), dtype=np.float32))
    line = {"product_id": "A", "name": "Pot", "description": "steel", "images": ["feat/A0.npy"],
            "reviews": [{"review_id": "x", "text": "good", "images": ["feat/a1.npy"]}, {"review_id": 2, "text": ""}]}
    parsed = ranker.parse(line, where="input.jsonl line 3", base_dir=tmp_path)
    assert parsed.product_id == "A" and parsed.review_ids == ["x", "2"]
    assert len(parsed.ranking.product.tokens) == 2  # "Pot steel"
    shapes = [item.regions.shape for item in (parsed.ranking.product, *parsed.ranking.reviews)]
    assert shapes == [(49, F), (7, F), (0, F)]
    assert all(item.regions.dtype == np.float32 for item in parsed.ranking.reviews)

    def error_of(request: dict) -> str:
        with pytest.raises(DataError) as error:
            ranker.parse(request, where="input.jsonl line 3", base_dir=tmp_path)
        return str(error.value)

    missing = {**line, "reviews": [{"review_id": "x", "text": "", "images": ["feat/none.npy"]}]}
    assert error_of(missing).startswith("input.jsonl line 3, field 'reviews[0].images[0]': feature file not found")
    wide = {**line, "images": ["feat/wide.npy"]}
    assert error_of(wide) == "input.jsonl line 3, field 'images[0]': region feature size 7, the model takes 6"
    assert error_of({"text": "x"}) == "input.jsonl line 3, field 'reviews': missing required field"
    with pytest.raises(RequestError, match="field 'images\\[0\\]': expected an image"):
        ranker.parse({**line, "reviews": []})  # no base folder (the service): file paths are refused
