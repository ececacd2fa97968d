"""Options beyond the paper for real data: the side channel of review length and rating, and token states of a
pretrained text encoder stored when preparing (a deterministic stand-in encoder here; the real one is tested in
test_text_encoder.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from mrhp.config import ModelConfig, ModelInputs
from mrhp.data.batching import (
    SIDE_FEATURES,
    Item,
    RankingList,
    collate,
    side_features,
    split_item_lists,
)
from mrhp.data.prepare import prepare_dataset
from mrhp.data.prepared import PreparedDataset
from mrhp.data.records import RawDataset, RawProduct, RawReview, RawSplit
from mrhp.models.paper import HelpfulnessModel

VOCAB, FEATURES, STATE_DIM = 40, 4, 6


def test_side_features_by_hand():
    assert side_features(0, float("nan")) == (0.0, 0.0, 0.0)
    words, known, rating = side_features(9, 5.0)
    assert math.isclose(words, math.log(10)) and known == 1.0 and rating == 1.0
    assert side_features(3, 1.0)[2] == -1.0


def model(**overrides) -> HelpfulnessModel:
    torch.manual_seed(0)
    text_state_dim = overrides.pop("text_state_dim", 0)
    config = ModelConfig(hidden_size=8, embedding_dim=8, num_heads=2, interaction_layers=1, feedforward_size=16,
                         dropout=0.0, **overrides)
    inputs = ModelInputs(vocab_size=VOCAB, image_dim=FEATURES, embedding_dim=8, text_state_dim=text_state_dim)
    return HelpfulnessModel(config, inputs).eval()


def ranking(rng: np.random.Generator, sizes: Sequence[int], ratings: Sequence[float], states: bool = False):
    def item(n: int, rating: float = float("nan")) -> Item:
        return Item(rng.integers(2, VOCAB, size=n), np.zeros((0, FEATURES), dtype=np.float32),
                    rng.standard_normal((max(n, 1), STATE_DIM)).astype(np.float32) if states else None, rating)

    return RankingList(item(5), [item(n, r) for n, r in zip(sizes, ratings)], [0] * len(sizes),
                       list(range(len(sizes))), 0)


def test_collate_gives_side_features_of_the_uncut_text():
    rng = np.random.default_rng(0)
    batch = collate([ranking(rng, [3, 50], [4.0, float("nan")])], max_tokens=8, max_regions=4, feature_dim=FEATURES)
    assert batch.review_side.shape == (2, len(SIDE_FEATURES))
    # 50 words, not the 8 kept for the encoder: the channel sees what the cut hides.
    expected = torch.tensor([side_features(3, 4.0), side_features(50, float("nan"))])
    assert torch.allclose(batch.review_side, expected)


@pytest.mark.parametrize("enabled", [True, False])
def test_side_channel_reaches_the_score_only_when_enabled(enabled):
    rng = np.random.default_rng(1)
    batch = collate([ranking(rng, [3, 7], [4.0, 2.0])], max_tokens=8, max_regions=4, feature_dim=FEATURES)
    net = model(side_features=enabled)
    with torch.no_grad():
        before = net(batch).row_scores
        batch.review_side[:, 0] += 3.0  # longer reviews, same tokens
        after = net(batch).row_scores
    assert torch.allclose(before, after) != enabled


def test_states_model_ignores_padding_and_tokens():
    rng = np.random.default_rng(2)
    target = ranking(rng, [3, 5, 2], [5.0, 1.0, 3.0], states=True)
    longer = ranking(rng, [20, 30], [5.0, 5.0], states=True)
    longer.group = 1
    net = model(text_encoder="minilm", text_state_dim=STATE_DIM)  # top layers: none, so no package is needed
    with torch.no_grad():
        alone = net(collate([target], 32, 4, FEATURES)).row_scores
        together = net(collate([target, longer], 32, 4, FEATURES)).row_scores[:3]
        # The token ids are not what a states model reads.
        target.reviews[0].tokens = rng.integers(2, VOCAB, size=3)
        retokenized = net(collate([target], 32, 4, FEATURES)).row_scores
    assert torch.allclose(alone, together, atol=1e-5)
    assert torch.allclose(alone, retokenized)
    # ...but its states are.
    target.reviews[0].states = target.reviews[0].states + 1.0
    with torch.no_grad():
        assert not torch.allclose(alone, net(collate([target], 32, 4, FEATURES)).row_scores)


class FakeEncoder:
    """A deterministic stand-in: one state per character (at most 4), value = the character's code."""

    def describe(self) -> dict:
        return {"name": "fake", "layer": -1, "dim": STATE_DIM, "max_tokens": 4}

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.repeat(np.array([[ord(c)] for c in (text or " ")[:4]], dtype=np.float32), STATE_DIM, axis=1)
                for text in texts]


def test_prepare_stores_states_and_batches_read_them(tmp_path):
    products = [RawProduct("p1", "abc"), RawProduct("p2", "")]
    reviews = [RawReview("r1", "p1", "hello", 2, rating=4.0), RawReview("r2", "p1", "no", 0),
               RawReview("r3", "p2", "yes!", 1)]
    raw = RawDataset({"format": "test"}, {"train": RawSplit("train", products, reviews)})
    report = prepare_dataset(raw, tmp_path / "p", min_count=1, text_encoder=FakeEncoder())
    assert report["text_states"]["texts"] == 5 and report["text_states"]["name"] == "fake"
    data = PreparedDataset.open(tmp_path / "p")
    assert data.text_encoder == FakeEncoder().describe()
    split = data.split("train")
    assert split.review_states(0)[:, 0].tolist() == [ord(c) for c in "hell"]
    assert split.product_states(1)[:, 0].tolist() == [ord(" ")]  # an empty text still has a state...
    empty = collate(split_item_lists(split, [(1, split.reviews_of(1))]), max_tokens=3, max_regions=4, feature_dim=0)
    assert not empty.product_state_mask.any()  # ...which is masked: an absent product text, as for the LSTM
    lists = split_item_lists(split, [(0, split.reviews_of(0))])
    batch = collate(lists, max_tokens=3, max_regions=4, feature_dim=0)
    assert batch.review_states.shape == (2, 3, STATE_DIM)
    assert batch.review_state_mask.tolist() == [[True, True, True], [True, True, False]]
    assert batch.review_side[0].tolist() == pytest.approx(list(side_features(1, 4.0)))


def test_dataset_without_states_has_none(tmp_path):
    raw = RawDataset({"format": "test"}, {"train": RawSplit("train", [RawProduct("p", "x")],
                                                            [RawReview("r", "p", "y", 0)])})
    prepare_dataset(raw, tmp_path / "p", min_count=1)
    data = PreparedDataset.open(tmp_path / "p")
    assert data.text_encoder is None and data.split("train").review_states(0) is None


@pytest.mark.parametrize("side", [False, True])
def test_length_anchor_adds_a_fixed_share_of_log_words_and_the_explanation_still_adds_up(side):
    """model.length_anchor = a: each score gains exactly a * log(1 + words) (of the uncut text) over the same model
    without it; `bias + side + parts` stays the score. A wrong anchor (on the cut length, learned, or left out of
    the explanation's side) fails."""
    rng = np.random.default_rng(3)
    batch = collate([ranking(rng, [3, 50, 9], [4.0, 2.0, float("nan")])], max_tokens=8, max_regions=4,
                    feature_dim=FEATURES)
    plain, anchored = model(side_features=side), model(side_features=side, length_anchor=0.75)
    assert sum(p.numel() for p in anchored.parameters()) == sum(p.numel() for p in plain.parameters())
    with torch.no_grad():
        base = plain(batch).row_scores
        output = anchored(batch, explain=True)
    words = torch.tensor([3.0, 50.0, 9.0])
    torch.testing.assert_close(output.row_scores - base, 0.75 * torch.log1p(words))
    explanation = output.explanation
    total = explanation.bias + explanation.side + explanation.parts.sum(1)
    torch.testing.assert_close(total, output.row_scores, atol=1e-5, rtol=1e-5)


def test_length_anchor_belongs_to_the_papers_model():
    from mrhp.config import Config
    from mrhp.errors import MrhpError

    with pytest.raises(MrhpError, match="model.length_anchor is a setting of the paper's model"):
        Config(model=ModelConfig(name="mcr", length_anchor=1.0)).validate()
