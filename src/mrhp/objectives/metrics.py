"""Ranking metrics for review helpfulness (SPEC section 5). The paired tests over
per-list values live in `mrhp.studies.stats`.

Every metric is a pure function over padded ``[B, R]`` tensors: ``B`` lists (one product with its reviews each),
``R`` review slots per list, and a boolean ``mask[b, r]`` that is True for a real review. Padded slots never
take part in a sort result, a precision, a gain or a mean, whatever score or label they carry.

Definitions follow the MCR code family so that numbers are comparable with the published tables:

* a review is *relevant* iff ``label > threshold`` (threshold 1 for Amazon-MRHP, 0 for Lazada-MRHP);
* ``AP`` is the mean over relevant reviews of precision at that review's rank, 0 for a list with no relevant review;
* ``DCG@k = sum_{i<k} g_i / log2(i + 2)`` with gain ``g = 2**label - 1`` for relevant reviews and 0 otherwise,
  ``NDCG@k = DCG@k / IDCG@k``, and 0 when ``IDCG@k = 0``;
* the split-level numbers are means over *all* lists, times 100 (:func:`summarize`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "METRICS",
    "TIES",
    "average_precision",
    "ndcg_at_k",
    "rank_order",
    "ranking_metrics",
    "summarize",
]

METRICS = ("map", "ndcg@3", "ndcg@5")
"""The paper's metrics, the keys of :func:`ranking_metrics`, in the order every table reports them."""

TIES = ("pessimistic", "stable")
"""Tie policies of :func:`rank_order`."""

def _check_inputs(scores: Tensor, labels: Tensor, mask: Tensor) -> None:
    if scores.dim() != 2:
        raise ValueError(f"scores must be [B, R], got shape {tuple(scores.shape)}")
    if labels.shape != scores.shape or mask.shape != scores.shape:
        raise ValueError(
            "scores, labels and mask must have the same [B, R] shape, got "
            f"{tuple(scores.shape)}, {tuple(labels.shape)}, {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
    if scores.is_floating_point() and bool(torch.isnan(scores[mask]).any()):
        # NaN has no place in a descending order; ranking it silently would hide a diverged model.
        raise ValueError("scores contain NaN at real (unmasked) positions")


def rank_order(scores: Tensor, labels: Tensor, mask: Tensor, ties: str = "pessimistic") -> Tensor:
    """Per list, the review indices sorted by score, descending, with padded slots last (SPEC section 5).

    Args:
        scores: ``[B, R]`` model scores (any real unit; only their order matters).
        labels: ``[B, R]`` graded helpfulness levels (0..4 in the benchmarks); used only to break ties.
        mask: ``[B, R]`` bool, True for a real review.
        ties: ``"pessimistic"`` (default): among equal scores the lower label comes first, the worst case for
            every metric, so a constant model cannot score well by the order of the input file.
            ``"stable"``: equal scores keep their input order, like the reference code's stable sort
            (only to reproduce reference numbers).

    Returns:
        ``LongTensor[B, R]``: ``order[b, i]`` is the index (into ``R``) of the review at rank ``i`` of list ``b``;
        the indices of padded slots fill the tail, in input order.
    """
    if ties not in TIES:
        raise ValueError(f"unknown ties policy {ties!r}; expected one of {TIES}")
    _check_inputs(scores, labels, mask)
    batch, slots = scores.shape
    # Constant keys in padded slots: whatever the caller left there (even NaN) cannot reorder them.
    scores = scores.masked_fill(~mask, 0)
    labels = labels.masked_fill(~mask, 0)
    order = torch.arange(slots, device=scores.device).expand(batch, slots)
    # Chained stable sorts, least significant key first: each later sort keeps the order of the earlier among its
    # own ties. Padding is the most significant key, so it lands last even under a real score of -inf.
    if ties == "pessimistic":
        order = torch.sort(labels, dim=1, stable=True).indices
    order = order.gather(1, torch.sort(scores.gather(1, order), dim=1, descending=True, stable=True).indices)
    pad = (~mask).gather(1, order).to(torch.uint8)
    order = order.gather(1, torch.sort(pad, dim=1, stable=True).indices)
    return order


def _relevance_and_gain(labels: Tensor, mask: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """``[B, R]`` relevance (float64 0/1) and gain ``2**label - 1`` (float64, 0 where not relevant or padded)."""
    relevant = mask & (labels > threshold)
    gain = torch.where(relevant, torch.exp2(labels.to(torch.float64)) - 1.0, 0.0)
    return relevant.to(torch.float64), gain


def _average_precision_from_order(relevant: Tensor, order: Tensor) -> Tensor:
    ranked = relevant.gather(1, order)
    ranks = torch.arange(1, ranked.shape[1] + 1, device=ranked.device, dtype=torch.float64)
    precision = ranked.cumsum(1) / ranks
    n_relevant = ranked.sum(1)
    # Dividing by max(n, 1) gives exactly 0 for lists with no relevant review (their numerator is 0).
    return (precision * ranked).sum(1) / n_relevant.clamp_min(1.0)


def _dcg_at_k(ranked_gain: Tensor, k: int) -> Tensor:
    top = ranked_gain[:, :k]
    discount = 1.0 / torch.log2(torch.arange(top.shape[1], device=top.device, dtype=torch.float64) + 2.0)
    return (top * discount).sum(1)


def _ndcg_from_order(gain: Tensor, order: Tensor, k: int) -> Tensor:
    dcg = _dcg_at_k(gain.gather(1, order), k)
    # The gain is 0 off the relevant set and increasing in the label on it, so sorting gains descending is the
    # ideal order "labels descending" of the definition; padded slots have gain 0 and cannot move ahead of a gain.
    idcg = _dcg_at_k(torch.sort(gain, dim=1, descending=True).values, k)
    return torch.where(idcg > 0, dcg / idcg.clamp_min(torch.finfo(torch.float64).tiny), 0.0)


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")


def average_precision(
    scores: Tensor, labels: Tensor, mask: Tensor, threshold: float, ties: str = "pessimistic"
) -> Tensor:
    """Average precision per list (SPEC section 5, "AP"; MAP is its mean over lists).

    ``AP_b = (1 / n_b) * sum_{relevant r} precision@rank(r)``, where ``n_b`` is the number of relevant reviews of
    list ``b`` (relevant iff ``label > threshold``), and ``AP_b = 0`` when ``n_b = 0``.

    Args:
        scores: ``[B, R]`` model scores.
        labels: ``[B, R]`` graded helpfulness levels.
        mask: ``[B, R]`` bool, True for a real review.
        threshold: relevance threshold on the label (1 for Amazon-MRHP, 0 for Lazada-MRHP).
        ties: tie policy, see :func:`rank_order`.

    Returns:
        ``float64 Tensor[B]`` with values in ``[0, 1]``.
    """
    order = rank_order(scores, labels, mask, ties)
    relevant, _ = _relevance_and_gain(labels, mask, threshold)
    return _average_precision_from_order(relevant, order)


def ndcg_at_k(
    scores: Tensor, labels: Tensor, mask: Tensor, k: int, threshold: float, ties: str = "pessimistic"
) -> Tensor:
    """NDCG@k per list with exponential gain (SPEC section 5).

    ``DCG@k = sum_{i<k} g_i / log2(i + 2)`` over ranks ``i`` (0-based) of the model's order, ``g = 2**label - 1``
    for relevant reviews (``label > threshold``) and 0 otherwise; ``IDCG@k`` is the same sum in the ideal order
    (labels descending); ``NDCG@k = DCG@k / IDCG@k``, and 0 when ``IDCG@k = 0``.

    Args:
        scores: ``[B, R]`` model scores.
        labels: ``[B, R]`` graded helpfulness levels.
        mask: ``[B, R]`` bool, True for a real review.
        k: cut-off (positive; a ``k`` beyond ``R`` is the same as ``R``).
        threshold: relevance threshold on the label.
        ties: tie policy, see :func:`rank_order`.

    Returns:
        ``float64 Tensor[B]`` with values in ``[0, 1]``.
    """
    _check_k(k)
    order = rank_order(scores, labels, mask, ties)
    _, gain = _relevance_and_gain(labels, mask, threshold)
    return _ndcg_from_order(gain, order, k)


def ranking_metrics(
    scores: Tensor, labels: Tensor, mask: Tensor, threshold: float, ties: str = "pessimistic"
) -> dict[str, Tensor]:
    """The paper's three metrics per list: ``"map"`` (AP), ``"ndcg@3"``, ``"ndcg@5"`` (SPEC section 5).

    One sort serves all three. Shapes and arguments as in :func:`average_precision`.

    Returns:
        ``{"map": Tensor[B], "ndcg@3": Tensor[B], "ndcg@5": Tensor[B]}``, float64 per-list values in ``[0, 1]``;
        feed them to :func:`summarize` for the split-level percentages and to
        `mrhp.studies.stats.paired_test`.
    """
    order = rank_order(scores, labels, mask, ties)
    relevant, gain = _relevance_and_gain(labels, mask, threshold)
    return {
        "map": _average_precision_from_order(relevant, order),
        "ndcg@3": _ndcg_from_order(gain, order, 3),
        "ndcg@5": _ndcg_from_order(gain, order, 5),
    }


def _as_numpy_1d(values: Tensor | np.ndarray | list[float], name: str) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one value per list (1-D), got shape {array.shape}")
    return array


def summarize(per_list: Mapping[str, Tensor | np.ndarray]) -> dict[str, float]:
    """Split-level numbers as the paper reports them: per key, the mean over all lists times 100 (SPEC section 5).

    Every list counts, including lists with no relevant review (their 0 lowers the mean, as in the reference).

    Args:
        per_list: per-list metric values in ``[0, 1]``, e.g. the output of :func:`ranking_metrics` (one 1-D tensor
            or array per key, possibly concatenated over batches).

    Returns:
        ``{key: percentage}`` as Python floats.

    Raises:
        ValueError: a key has no list (an empty split has no mean) or its values are not 1-D.
    """
    summary: dict[str, float] = {}
    for key, values in per_list.items():
        array = _as_numpy_1d(values, key)
        if array.size == 0:
            raise ValueError(f"metric {key!r} has no lists to average")
        summary[key] = float(array.mean() * 100.0)
    return summary
