"""Training losses (SPEC section 4; paper section 3, eqs. 30-35, Appendix A).

Pure functions over tensors with explicit masks; the trainer adds them up (eq. 35).

* :func:`pairwise_ranking_loss`: the margin ranking loss of eq. 34 over every ordered pair of reviews of the same
  product whose labels differ by at least ``min_gap``, on padded ``[B, R]`` lists.
* :func:`cross_modal_contrastive_loss`: the cross-modal contrastive loss of eqs. 32-33 over the max-pooled
  (eqs. 30-31) text and image vectors of the helpful rows of a batch, with the adaptive weighting of eq. 33
  (default), no weighting (eq. 32) or the Circle-loss variant of the authors' code.
"""

from __future__ import annotations

from itertools import combinations
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "MODALITY_KEYS",
    "PRODUCT_KEYS",
    "REDUCTIONS",
    "WEIGHTINGS",
    "pairwise_ranking_loss",
    "cross_modal_contrastive_loss",
]

MODALITY_KEYS = ("product_text", "review_text", "product_image", "review_image")
"""The four pooled vectors of eqs. 30-31: ``h^p``, ``h^r``, ``v^p``, ``v^r``."""

PRODUCT_KEYS = frozenset({"product_text", "product_image"})
"""Vectors shared by every row of the same product."""

REDUCTIONS = ("sum", "mean")
"""How both losses reduce over their pairs: eqs. 33-34 as printed (sum) or averaged (mean)."""

WEIGHTINGS = ("adaptive", "none", "circle")
"""Contrastive weightings: eq. 33 (adaptive), eq. 32 (none), the authors' code (Circle loss)."""

_COSINE_EPS = 1e-8


def pairwise_ranking_loss(
    scores: Tensor,
    labels: Tensor,
    mask: Tensor,
    margin: float = 1.0,
    label_gap_margin: bool = False,
    min_gap: float = 1,
    reduction: str = "mean",
) -> Tensor:
    """Pairwise margin ranking loss within each list (paper eq. 34, SPEC section 4).

    Over all ordered pairs ``(i, j)`` of real reviews of the same list with ``labels[i] - labels[j] >= min_gap``:
    ``max(0, m - s_i + s_j)``, where ``m = margin``, or ``m = (labels[i] - labels[j]) * margin`` when
    ``label_gap_margin`` (the reference code's variant).

    Args:
        scores: ``[B, R]`` model scores ``f(p, r)`` (same unit as ``margin``).
        labels: ``[B, R]`` graded helpfulness levels (integer or float).
        mask: ``[B, R]`` bool, True for a real review; padded slots are in no pair.
        margin: ``beta`` of eq. 34 (1 in the paper), or the margin per label level with ``label_gap_margin``.
        label_gap_margin: scale the margin by the label gap of the pair.
        min_gap: smallest label gap that makes a pair; must be > 0 (the reference code used 2, SPEC 2.2 says 1).
        reduction: ``"sum"`` (eq. 34 as printed) or ``"mean"`` over the valid pairs of the whole batch.

    Returns:
        A scalar tensor. With no valid pair it is a zero that stays attached to ``scores`` (its gradient is 0).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")
    if not min_gap > 0:
        # A non-positive gap would pair a review with itself and pairs of equal labels in both directions.
        raise ValueError(f"min_gap must be > 0, got {min_gap!r}")
    if scores.dim() != 2 or labels.shape != scores.shape or mask.shape != scores.shape:
        raise ValueError(
            "scores, labels and mask must have the same [B, R] shape, got "
            f"{tuple(scores.shape)}, {tuple(labels.shape)}, {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
    gap = (labels[:, :, None] - labels[:, None, :]).to(scores.dtype)  # [B, R, R], gap[b, i, j] = y_i - y_j
    valid = (mask[:, :, None] & mask[:, None, :]) & (gap >= min_gap)
    pair_margin = gap * margin if label_gap_margin else torch.full_like(gap, margin)
    hinge = torch.relu(pair_margin - scores[:, :, None] + scores[:, None, :])
    # where(), not a product with the mask: a non-finite score in a padded slot must not turn the sum into NaN.
    total = torch.where(valid, hinge, 0.0).sum()
    if reduction == "sum":
        return total
    return total / valid.sum().clamp_min(1).to(total.dtype)


def _unit_rows(x: Tensor, present: Tensor) -> Tensor:
    # Absent rows are zeroed before normalising, so whatever the caller left there (zeros, -inf from an empty
    # max-pool) can reach neither the value nor the gradient; the eps keeps zero vectors at cosine 0, not NaN.
    x = torch.where(present[:, None], x, 0.0)
    return F.normalize(x, p=2.0, dim=1, eps=_COSINE_EPS)


def _pair_masks(
    present1: Tensor, present2: Tensor, group: Tensor, shares_product: bool
) -> tuple[Tensor, Tensor]:
    """Positive mask ``[N]`` (diagonal) and negative mask ``[N, N]`` (off-diagonal) of one pair type."""
    n = present1.shape[0]
    positive = present1 & present2
    negative = present1[:, None] & present2[None, :]
    negative = negative & ~torch.eye(n, dtype=torch.bool, device=present1.device)
    if shares_product:
        # Two rows of one product share h^p and v^p: pairing them would push a vector away from itself.
        negative = negative & (group[:, None] != group[None, :])
    return positive, negative


def _weighted_pair_loss(
    sim: Tensor,
    positive: Tensor,
    negative: Tensor,
    weighting: str,
    o_p: float,
    o_n: float,
    detach_weights: bool,
    reduction: str,
) -> Tensor:
    sim_pos = sim.diagonal()
    if weighting == "adaptive":
        eps_p = torch.relu(o_p - sim_pos)
        eps_n = torch.relu(sim - o_n)
        if detach_weights:
            eps_p, eps_n = eps_p.detach(), eps_n.detach()
        pos_terms, neg_terms = eps_p * sim_pos, eps_n * sim
    else:
        pos_terms, neg_terms = sim_pos, sim
    pos_sum = torch.where(positive, pos_terms, 0.0).sum()
    neg_sum = torch.where(negative, neg_terms, 0.0).sum()
    if reduction == "mean":
        pos_sum = pos_sum / positive.sum().clamp_min(1).to(pos_sum.dtype)
        neg_sum = neg_sum / negative.sum().clamp_min(1).to(neg_sum.dtype)
    return neg_sum - pos_sum


def _circle_pair_loss(sim: Tensor, positive: Tensor, negative: Tensor, margin: float, scale: float) -> Tensor:
    sim_pos = sim.diagonal()
    # Circle loss (Sun et al. 2020): self-paced weights from the detached similarity, optimum at S_p = 1 + m and
    # S_n = -m, decision margins Delta_p = 1 - m and Delta_n = m.
    alpha_p = torch.relu(1.0 + margin - sim_pos).detach()
    alpha_n = torch.relu(sim + margin).detach()
    logit_p = -scale * alpha_p * (sim_pos - (1.0 - margin))
    logit_n = scale * alpha_n * (sim - margin)
    has_negative = negative.any(dim=1)
    # Rows without a negative are filled with 0 (not -inf) so their logsumexp, and its backward, stay finite;
    # they are dropped below.
    fill = torch.where(has_negative, float("-inf"), 0.0).to(sim.dtype)[:, None]
    lse_n = torch.logsumexp(torch.where(negative, logit_n, fill), dim=1)
    row_loss = F.softplus(logit_p + lse_n)
    # A row with no positive has an empty positive sum in log(1 + sum_n * sum_p): its loss is 0, so it is left out.
    rows = positive & has_negative
    return torch.where(rows, row_loss, 0.0).sum() / rows.sum().clamp_min(1).to(sim.dtype)


def cross_modal_contrastive_loss(
    features: Mapping[str, Tensor],
    present: Mapping[str, Tensor],
    group: Tensor,
    weighting: str = "adaptive",
    o_p: float = 2.0,
    o_n: float = 0.0,
    detach_weights: bool = False,
    reduction: str = "sum",
    circle_margin: float = 0.25,
    circle_scale: float = 256.0,
) -> Tensor:
    """Cross-modal contrastive loss over the helpful rows of a batch (paper eqs. 30-33, SPEC section 4).

    For each of the 6 unordered pairs ``(t1, t2)`` of :data:`MODALITY_KEYS`, ``S[j, k] = cos(t1_j, t2_k)``
    (``[N, N]``, unitless in ``[-1, 1]``); positives are ``S[i, i]``, negatives ``S[j, k]`` with ``j != k``, except,
    for a pair type involving a product vector, rows of the same ``group`` (they share that product). A pair that
    involves an absent modality is neither positive nor negative. The six pair-type losses are summed.

    ``weighting``:

    * ``"adaptive"`` (eq. 33): ``-sum_i eps_p_i * S_ii + sum_{j != k} eps_n_jk * S_jk`` with
      ``eps_p = [o_p - S_ii]_+`` and ``eps_n = [S_jk - o_n]_+``. By default the weights stay in the graph, and
      then the loss equals Theorem 1's hyperspherical form ``sum_i (S_ii - o_p/2)^2 + sum_{j != k} (S_jk - o_n/2)^2
      - C`` in value and in gradient wherever no ``[.]_+`` clips (Appendix A, eq. 38); ``detach_weights`` keeps
      the value and changes the gradient.
    * ``"none"`` (eq. 32, the "w/o adaptive weighting" ablation): ``-sum_i S_ii + sum_{j != k} S_jk``.
    * ``"circle"`` (the authors' code, Circle loss of Sun et al. 2020): per row ``i`` of ``S``,
      ``softplus(logit_p_i + logsumexp_k logit_n_ik)`` with ``logit_p = -gamma * alpha_p * (S_ii - (1 - m))``,
      ``logit_n = gamma * alpha_n * (S_ik - m)``, detached ``alpha_p = [1 + m - S_ii]_+``,
      ``alpha_n = [S_ik + m]_+``, ``m = circle_margin``, ``gamma = circle_scale``; mean over the rows that have a
      positive and at least one negative. ``o_p``, ``o_n``, ``detach_weights`` and ``reduction`` do not apply.

    Args:
        features: ``{key: Tensor[N, d]}`` for exactly the four :data:`MODALITY_KEYS`: the masked max-pooled
            ``h^p, h^r, v^p, v^r`` (eqs. 30-31) of the ``N`` helpful rows (pooling is the caller's).
        present: ``{key: BoolTensor[N]}``: the modality exists for that row (e.g. False for a review without
            images). Feature values of absent rows are ignored, even if non-finite.
        group: ``LongTensor[N]``, the product index of each row.
        weighting: ``"adaptive"``, ``"none"`` or ``"circle"``.
        o_p, o_n: the optima offsets of eq. 33 (2 and 0 in the paper: optimum at ``S_ii = 1``, ``S_jk = 0``).
        detach_weights: detach ``eps_p`` and ``eps_n`` (changes the gradient, not the value).
        reduction: for ``"adaptive"`` and ``"none"``: ``"sum"`` as the paper prints it, or ``"mean"``, i.e. per
            pair type (positive sum / number of positives) + (negative sum / number of negatives).
        circle_margin, circle_scale: ``m`` and ``gamma`` of the Circle variant.

    Returns:
        A scalar tensor. Without any valid positive or negative it is a zero still attached to the features.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; expected one of {WEIGHTINGS}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")
    for name, mapping in (("features", features), ("present", present)):
        if set(mapping) != set(MODALITY_KEYS):
            raise ValueError(f"{name} must have exactly the keys {MODALITY_KEYS}, got {sorted(mapping)}")
    if group.dim() != 1:
        raise ValueError(f"group must be [N], got shape {tuple(group.shape)}")
    n = group.shape[0]
    for key in MODALITY_KEYS:
        if features[key].dim() != 2 or features[key].shape[0] != n:
            raise ValueError(f"features[{key!r}] must be [N={n}, d], got shape {tuple(features[key].shape)}")
        if present[key].shape != (n,) or present[key].dtype != torch.bool:
            raise ValueError(f"present[{key!r}] must be a bool [N={n}] tensor")

    units = {key: _unit_rows(features[key], present[key]) for key in MODALITY_KEYS}
    losses = []
    for key1, key2 in combinations(MODALITY_KEYS, 2):
        sim = units[key1] @ units[key2].T  # [N, N] cosine, S[j, k] = cos(t1_j, t2_k)
        positive, negative = _pair_masks(
            present[key1], present[key2], group, shares_product=bool({key1, key2} & PRODUCT_KEYS)
        )
        if weighting == "circle":
            losses.append(_circle_pair_loss(sim, positive, negative, circle_margin, circle_scale))
        else:
            losses.append(
                _weighted_pair_loss(sim, positive, negative, weighting, o_p, o_n, detach_weights, reduction)
            )
    return torch.stack(losses).sum()
