"""Tests of mrhp.objectives.metrics: hand-computed MAP / NDCG cases, ties, padding, a ranx cross-check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mrhp.objectives.metrics import (
    average_precision,
    ndcg_at_k,
    rank_order,
    ranking_metrics,
    summarize,
)

LOG2_3 = math.log2(3.0)
LOG2_5 = math.log2(5.0)


def _batch(lists: list[tuple[list[float], list[int]]], slots: int | None = None, seed: int = 0):
    """Pad lists of (scores, labels) to [B, R]; padded slots get random scores (some +inf) and label 4."""
    rng = np.random.default_rng(seed)
    slots = slots or max(len(s) for s, _ in lists)
    scores = torch.as_tensor(rng.normal(size=(len(lists), slots)) * 10.0)
    scores[:, -1] = float("inf")  # a padded slot must not rise to the top even above every real score
    labels = torch.full((len(lists), slots), 4, dtype=torch.long)
    mask = torch.zeros(len(lists), slots, dtype=torch.bool)
    for b, (s, y) in enumerate(lists):
        scores[b, : len(s)] = torch.tensor(s, dtype=torch.float64)
        labels[b, : len(y)] = torch.tensor(y)
        mask[b, : len(s)] = True
    return scores, labels, mask


# List A: a constant model on a file sorted by label, labels [3, 2, 0], threshold 1 (relevant: labels 3 and 2).
#   stable      order = file order, labels [3, 2, 0]: AP = (1/1 + 2/2) / 2 = 1; NDCG@3 = NDCG@5 = 1.
#   pessimistic order = ascending label, labels [0, 2, 3]: AP = (1/2 + 2/3) / 2 = 7/12;
#               DCG@3 = 0 + 3/log2(3) + 7/log2(4); IDCG@3 = 7/1 + 3/log2(3); R = 3 so @5 = @3.
LIST_A = ([0.5, 0.5, 0.5], [3, 2, 0])
A_NDCG_PESS = (3 / LOG2_3 + 7 / 2) / (7 + 3 / LOG2_3)

# List B: scores [0.9, 0.4, 0.4, 0.1], labels [0, 4, 1, 2], threshold 1 (relevant: label 4 at index 1, label 2 at
# index 3; label 1 is not relevant, gain 0). The tie is between index 1 (label 4) and index 2 (label 1).
#   stable      order [0, 1, 2, 3], labels [0, 4, 1, 2]: relevant at ranks 2 and 4, AP = (1/2 + 2/4) / 2 = 1/2;
#               DCG@3 = 15/log2(3); DCG@5 = 15/log2(3) + 3/log2(5).
#   pessimistic order [0, 2, 1, 3], labels [0, 1, 4, 2]: relevant at ranks 3 and 4, AP = (1/3 + 2/4) / 2 = 5/12;
#               DCG@3 = 15/log2(4); DCG@5 = 15/2 + 3/log2(5).
#   ideal labels [4, 2, 1, 0], gains [15, 3, 0, 0]: IDCG@3 = IDCG@5 = 15 + 3/log2(3).
LIST_B = ([0.9, 0.4, 0.4, 0.1], [0, 4, 1, 2])
B_IDCG = 15 + 3 / LOG2_3
B_EXPECTED = {
    "stable": {"map": 0.5, "ndcg@3": (15 / LOG2_3) / B_IDCG, "ndcg@5": (15 / LOG2_3 + 3 / LOG2_5) / B_IDCG},
    "pessimistic": {"map": 5 / 12, "ndcg@3": 7.5 / B_IDCG, "ndcg@5": (7.5 + 3 / LOG2_5) / B_IDCG},
}

# List C: no relevant review at threshold 1 (labels [1, 0, 1]): AP = 0 and NDCG = 0 (IDCG = 0), still counted.
LIST_C = ([0.3, 0.2, 0.1], [1, 0, 1])
# Lists D, E: a single review; relevant (label 3) gives 1 everywhere, non-relevant (label 1) gives 0.
LIST_D = ([-2.0], [3])
LIST_E = ([5.0], [1])


def _close(got: torch.Tensor, expected: list[float]) -> None:
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("slots", [None, 7])
def test_hand_computed_cases_and_padding(slots: int | None) -> None:
    # slots=7 adds padded slots with random (one +inf) scores and label 4 to every list: nothing may change.
    scores, labels, mask = _batch([LIST_A, LIST_B, LIST_C, LIST_D, LIST_E], slots=slots)
    stable = ranking_metrics(scores, labels, mask, threshold=1, ties="stable")
    pess = ranking_metrics(scores, labels, mask, threshold=1)  # pessimistic is the default
    _close(stable["map"], [1.0, 0.5, 0.0, 1.0, 0.0])
    _close(pess["map"], [7 / 12, 5 / 12, 0.0, 1.0, 0.0])
    _close(stable["ndcg@3"], [1.0, B_EXPECTED["stable"]["ndcg@3"], 0.0, 1.0, 0.0])
    _close(stable["ndcg@5"], [1.0, B_EXPECTED["stable"]["ndcg@5"], 0.0, 1.0, 0.0])
    _close(pess["ndcg@3"], [A_NDCG_PESS, B_EXPECTED["pessimistic"]["ndcg@3"], 0.0, 1.0, 0.0])
    _close(pess["ndcg@5"], [A_NDCG_PESS, B_EXPECTED["pessimistic"]["ndcg@5"], 0.0, 1.0, 0.0])
    # The single-metric functions agree with the combined one.
    _close(average_precision(scores, labels, mask, 1), pess["map"].tolist())
    _close(ndcg_at_k(scores, labels, mask, 5, 1, ties="stable"), stable["ndcg@5"].tolist())


def test_pessimistic_ties_are_a_lower_bound() -> None:
    # Pessimistic ties are the worst case: no stable order of the same scores (any file order) does worse.
    torch.manual_seed(0)
    scores = torch.randint(0, 3, (40, 8)).double()  # heavy ties
    labels = torch.randint(0, 5, (40, 8))
    mask = torch.rand(40, 8) < 0.8
    pess = ranking_metrics(scores, labels, mask, threshold=1)
    for _ in range(5):
        perm = torch.randperm(8)
        stable = ranking_metrics(scores[:, perm], labels[:, perm], mask[:, perm], threshold=1, ties="stable")
        for key in pess:
            assert bool((pess[key] <= stable[key] + 1e-12).all())


def test_rank_order() -> None:
    scores, labels, mask = _batch([LIST_B, LIST_D], slots=6)
    assert rank_order(scores, labels, mask, ties="stable")[0, :4].tolist() == [0, 1, 2, 3]
    assert rank_order(scores, labels, mask, ties="pessimistic")[0, :4].tolist() == [0, 2, 1, 3]
    order = rank_order(scores, labels, mask)
    assert order.dtype == torch.long
    # Padded slots last (in input order), even the +inf one; every row is a permutation.
    assert order[0, 4:].tolist() == [4, 5]
    assert order[1].tolist() == [0, 1, 2, 3, 4, 5]
    # A real -inf score still ranks ahead of padding.
    scores[1, 0] = float("-inf")
    assert rank_order(scores, labels, mask)[1, 0].item() == 0
    with pytest.raises(ValueError, match="ties"):
        rank_order(scores, labels, mask, ties="optimistic")
    with pytest.raises(ValueError, match="NaN"):
        rank_order(torch.full_like(scores, float("nan")), labels, mask)


def test_summarize_counts_every_list() -> None:
    scores, labels, mask = _batch([LIST_A, LIST_B, LIST_C, LIST_D, LIST_E], slots=6)
    per_list = ranking_metrics(scores, labels, mask, threshold=1)
    summary = summarize(per_list)
    assert set(summary) == {"map", "ndcg@3", "ndcg@5"}
    # MAP = (7/12 + 5/12 + 0 + 1 + 0) / 5 * 100 = 40: the two zero lists (C, E) count in the denominator.
    assert summary["map"] == pytest.approx(40.0, abs=1e-9)
    assert all(isinstance(v, float) for v in summary.values())
    assert summarize({"x": np.array([0.0, 1.0])}) == {"x": 50.0}
    with pytest.raises(ValueError):
        summarize({"x": np.array([])})


def test_threshold_and_k() -> None:
    # Lazada's threshold 0 makes label 1 relevant: list C (labels [1, 0, 1], scores descending) then has relevant
    # reviews at ranks 1 and 3: AP = (1/1 + 2/3) / 2 = 5/6; DCG@3 = 1 + 1/log2(4), IDCG@3 = 1 + 1/log2(3).
    scores, labels, mask = _batch([LIST_C])
    _close(average_precision(scores, labels, mask, 0), [5 / 6])
    _close(ndcg_at_k(scores, labels, mask, 3, 0), [(1 + 0.5) / (1 + 1 / LOG2_3)])
    # NDCG@1 of list B: the top review (label 0) has no gain.
    scores, labels, mask = _batch([LIST_B])
    _close(ndcg_at_k(scores, labels, mask, 1, 1), [0.0])
    with pytest.raises(ValueError):
        ndcg_at_k(scores, labels, mask, 0, 1)


def test_cross_check_with_ranx() -> None:
    ranx = pytest.importorskip("ranx")
    rng = np.random.default_rng(1)
    n_lists, slots, threshold = 50, 12, 1
    lengths = rng.integers(1, slots + 1, size=n_lists)
    scores = torch.as_tensor(rng.normal(size=(n_lists, slots)))  # continuous: no ties
    labels = torch.as_tensor(rng.integers(0, 5, size=(n_lists, slots)))
    mask = torch.arange(slots)[None, :] < torch.as_tensor(lengths)[:, None]
    ours = ranking_metrics(scores, labels, mask, threshold=threshold)

    qrels, run, with_relevant = {}, {}, []
    for b in range(n_lists):
        rel = {f"d{r}": int(labels[b, r]) for r in range(lengths[b]) if labels[b, r] > threshold}
        if not rel:
            continue  # ranx cannot hold a query without relevant documents
        with_relevant.append(b)
        qrels[f"q{b}"] = rel
        run[f"q{b}"] = {f"d{r}": float(scores[b, r]) for r in range(lengths[b])}
    assert 10 < len(with_relevant) < n_lists  # both kinds of list are exercised
    ranx_qrels = ranx.Qrels(qrels)
    theirs = ranx.evaluate(ranx_qrels, ranx.Run(run), ["map", "ndcg_burges@3", "ndcg_burges@5"], return_mean=False)
    # ranx returns per-query values in the order of its own (sorted) query ids: map them back.
    position = {qid: i for i, qid in enumerate(ranx_qrels.keys())}
    idx = [position[f"q{b}"] for b in with_relevant]
    for ours_key, ranx_key in (("map", "map"), ("ndcg@3", "ndcg_burges@3"), ("ndcg@5", "ndcg_burges@5")):
        np.testing.assert_allclose(ours[ours_key][with_relevant].numpy(), theirs[ranx_key][idx], atol=1e-6)
    without = sorted(set(range(n_lists)) - set(with_relevant))
    for key in ours:
        assert bool((ours[key][without] == 0).all())


def test_ranx_query_order_assumption() -> None:
    # Guard for the mapping in the cross-check: per-query values come in the order of Qrels.keys().
    ranx = pytest.importorskip("ranx")
    qrels = ranx.Qrels({"q2": {"a": 1}, "q10": {"b": 1}})
    run = ranx.Run({"q2": {"a": 1.0, "x": 2.0}, "q10": {"b": 1.0, "y": 0.5}})
    values = ranx.evaluate(qrels, run, "map", return_mean=False)
    assert dict(zip(qrels.keys(), values.tolist())) == {"q2": 0.5, "q10": 1.0}
