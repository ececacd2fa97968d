"""Training losses (SPEC section 4; paper section 3, eqs. 30-35, Appendix A).

Pure functions over tensors with explicit masks; the trainer adds them up (eq. 35).

* :func:`pairwise_ranking_loss`: the margin ranking loss of eq. 34 over every ordered pair of reviews of the same
  product whose labels differ by at least ``min_gap``, on padded ``[B, R]`` lists.
* :func:`cross_modal_contrastive_loss`: the cross-modal contrastive loss of eqs. 32-33 over the max-pooled
  (eqs. 30-31) text and image vectors of the helpful rows of a batch, with the adaptive weighting of eq. 33
  (default), no weighting (eq. 32) or the Circle-loss variant of the authors' code.
* :func:`set_contrastive_loss`: not in the paper (its Limitation 2): eq. 33 over sets of reviews and sets of
  product information rather than single pairs (eqs. S1-S4, README "Set-level contrastive learning").
* :func:`listwise_softmax_loss`: not in the paper either: ListNet's top-one cross-entropy over each whole list
  (``loss.listwise_weight``), for long lists such as Steam's where pairs number in the hundreds of thousands.
"""

from __future__ import annotations

import math
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
    "set_contrastive_loss",
    "listwise_softmax_loss",
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
    sim_pos: Tensor,
    positive: Tensor,
    sim_neg: Tensor,
    negative: Tensor,
    weighting: str,
    o_p: float,
    o_n: float,
    detach_weights: bool,
    reduction: str,
) -> Tensor:
    """Eq. 33 (or eq. 32 with ``weighting="none"``) over the similarities ``sim_pos`` where ``positive`` and
    ``sim_neg`` where ``negative`` (each mask the shape of its similarities)."""
    if weighting == "adaptive":
        eps_p = torch.relu(o_p - sim_pos)
        eps_n = torch.relu(sim_neg - o_n)
        if detach_weights:
            eps_p, eps_n = eps_p.detach(), eps_n.detach()
        pos_terms, neg_terms = eps_p * sim_pos, eps_n * sim_neg
    else:
        pos_terms, neg_terms = sim_pos, sim_neg
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


def _check_cross_modal_inputs(features: Mapping[str, Tensor], present: Mapping[str, Tensor], group: Tensor,
                              weighting: str, reduction: str) -> None:
    """``ValueError`` for arguments of :func:`cross_modal_contrastive_loss` of the wrong keys, shapes or kinds."""
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
    _check_cross_modal_inputs(features, present, group, weighting, reduction)
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
                _weighted_pair_loss(
                    sim.diagonal(), positive, sim, negative, weighting, o_p, o_n, detach_weights, reduction
                )
            )
    return torch.stack(losses).sum()


def _set_means(members: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
    """Eq. S1 for ``X`` sets at once: the mean of the unit vectors of each set's present members.

    ``members [X, M, d]``, ``present [X, M]`` -> (``[X, d]``, ``[X]`` bool: the set has a member). Absent
    members are zeroed before normalising and weighted 0, so they reach neither the mean nor its gradient."""
    x, m, d = members.shape
    units = _unit_rows(members.reshape(x * m, d), present.reshape(x * m)).reshape(x, m, d)  # [X, M, d]
    weights = present.to(units.dtype)[..., None]  # [X, M, 1]
    means = (units * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)  # [X, d]
    return means, present.any(dim=1)


def _check_set_inputs(product_vectors: Tensor, product_present: Tensor, review_vectors: Tensor,
                      review_present: Tensor, helpful: Tensor, group: Tensor, reduction: str) -> None:
    """``ValueError`` for arguments of :func:`set_contrastive_loss` of the wrong shapes or kinds."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")
    if product_vectors.dim() != 4 or review_vectors.dim() != 4:
        raise ValueError(
            "product_vectors must be [B, R, Kp, d] and review_vectors [B, R, Kr, d], got "
            f"{tuple(product_vectors.shape)} and {tuple(review_vectors.shape)}"
        )
    b, r, k, d = review_vectors.shape
    kp = product_vectors.shape[2]
    if product_vectors.shape != (b, r, kp, d):
        raise ValueError(f"product_vectors must be [B={b}, R={r}, Kp, d={d}], got {tuple(product_vectors.shape)}")
    for name, mask, shape in (("product_present", product_present, (b, r, kp)),
                              ("review_present", review_present, (b, r, k)), ("helpful", helpful, (b, r))):
        if mask.shape != shape or mask.dtype != torch.bool:
            raise ValueError(f"{name} must be a bool {tuple(shape)} tensor, got {mask.dtype} {tuple(mask.shape)}")
    if group.shape != (b,):
        raise ValueError(f"group must be [B={b}], got shape {tuple(group.shape)}")


def set_contrastive_loss(
    product_vectors: Tensor,
    product_present: Tensor,
    review_vectors: Tensor,
    review_present: Tensor,
    helpful: Tensor,
    group: Tensor,
    o_p: float = 2.0,
    o_n: float = 0.0,
    detach_weights: bool = False,
    reduction: str = "mean",
) -> Tensor:
    """Set-level contrastive loss (not in the paper: its Limitation 2, section 7; eqs. S1-S4 in README).

    Sets, per list ``b`` of the batch (a product ``g_b = group[b]`` with some of its reviews): its product
    information ``P_b`` (the present pooled product vectors ``h^p``, ``v^p`` of every review row of the list: after
    the interaction module each row sees the product alongside its own review), its helpful reviews ``H_b`` (the
    present ``h^r``, ``v^r`` of its reviews with ``helpful``) and its less helpful reviews ``U_b`` (those of the
    others). Then, with ``x^ = x / ||x||``:

    * (S1) ``sigma(S) = (1 / |S|) sum_{x in S} x^``, the masked mean of a set's unit vectors; an empty set takes
      part in no pair.
    * (S2) classes: ``c(P_b) = c(H_b) = (g_b, helpful)``, ``c(U_b) = (g_b, less helpful)``: a product's information
      goes with its helpful reviews (the paper's hypothesis that a helpful review is coherent with its product).
    * (S3) over the ``3B`` sets ``Z``, for ``j < k``: ``S_jk = cos(sigma(Z_j), sigma(Z_k))``, a positive pair when
      ``c(Z_j) = c(Z_k)``, a negative pair otherwise. So ``(P_b, H_b)`` is positive; ``(P_b, U_b)`` and
      ``(H_b, U_b)`` (one product's helpful against its less helpful reviews) and every pair of sets of two
      different products are negative.
    * (S4) the weighting of eq. 33 over those pairs: ``-sum_pos eps_p * S_jk + sum_neg eps_n * S_jk`` with
      ``eps_p = [o_p - S]_+``, ``eps_n = [S - o_n]_+``; with ``reduction="mean"`` the positive sum is divided by
      the number of positive pairs and the negative sum by the number of negative pairs.

    Args:
        product_vectors: ``[B, R, Kp, d]`` the pooled product vectors of each review row, in list layout.
        product_present: ``[B, R, Kp]`` bool: a real row (not padding) whose product has that modality.
        review_vectors: ``[B, R, Kr, d]`` the pooled review vectors in list layout.
        review_present: ``[B, R, Kr]`` bool: a real review (not padding) that has that modality. Vectors of
            either kind where their mask is False are ignored, even if non-finite.
        helpful: ``[B, R]`` bool, the review is helpful (its value in padded slots does not matter).
        group: ``[B]`` int, the product of each list (lists cut from one product share it).
        o_p, o_n, detach_weights: as in eq. 33 (:func:`cross_modal_contrastive_loss`).
        reduction: ``"mean"`` (per positive / negative pair, as above) or ``"sum"``.

    Returns:
        A scalar tensor; a zero still attached to the inputs when there is no positive and no negative pair.
    """
    _check_set_inputs(product_vectors, product_present, review_vectors, review_present, helpful, group, reduction)
    b, r, k, d = review_vectors.shape
    kp = product_vectors.shape[2]

    members = review_vectors.reshape(b, r * k, d)  # [B, R*Kr, d]: a list's reviews' vectors, one set per list
    in_helpful = (review_present & helpful[:, :, None]).reshape(b, r * k)  # [B, R*Kr]
    in_less = (review_present & ~helpful[:, :, None]).reshape(b, r * k)  # [B, R*Kr]
    product_means, product_ok = _set_means(
        product_vectors.reshape(b, r * kp, d), product_present.reshape(b, r * kp)
    )  # [B, d], [B]
    helpful_means, helpful_ok = _set_means(members, in_helpful)  # [B, d], [B]
    less_means, less_ok = _set_means(members, in_less)  # [B, d], [B]
    means = torch.cat([product_means, helpful_means, less_means])  # [3B, d]: P_1..P_B, H_1..H_B, U_1..U_B
    nonempty = torch.cat([product_ok, helpful_ok, less_ok])  # [3B]
    units = _unit_rows(means, nonempty)  # [3B, d]
    sim = units @ units.T  # [3B, 3B] cosine of eq. S3

    product = group.repeat(3)  # [3B]
    is_helpful_class = torch.arange(3 * b, device=group.device) < 2 * b  # [3B]: P and H sets, not U
    same_class = (product[:, None] == product[None, :]) & (is_helpful_class[:, None] == is_helpful_class[None, :])
    pair = nonempty[:, None] & nonempty[None, :]
    pair = pair & torch.ones_like(pair).triu(diagonal=1)  # each unordered pair of two distinct sets once
    positive, negative = pair & same_class, pair & ~same_class
    return _weighted_pair_loss(sim, positive, sim, negative, "adaptive", o_p, o_n, detach_weights, reduction)


def listwise_softmax_loss(scores: Tensor, labels: Tensor, mask: Tensor, temperature: float = 1.0) -> Tensor:
    """Eq. L1, not in the paper: ListNet's loss with top-one probabilities (Cao et al., ICML 2007). Within each
    list, the cross-entropy between where the labels put the top place and where the scores put it,

        L1 = -(1 / |B'|) * sum_{b in B'} sum_{r valid} softmax(y_b / T)_r * log softmax(s_b)_r,

    with both softmaxes over the list's valid slots only (padding enters neither). B' holds the lists with two
    distinct levels: a list whose labels are all equal teaches no order (its target is uniform, and it would only
    pull its scores together), nor does a list of one review.

    Args:
        scores: float ``[B, R]`` predicted scores.
        labels: int or float ``[B, R]`` helpfulness levels (padded slots ignored).
        mask: bool ``[B, R]``, True where the slot holds a review.
        temperature: ``T`` > 0: how sharply the target favours the higher levels.

    Returns:
        A scalar: the mean over B' (a zero that keeps the graph when B' is empty).
    """
    if scores.shape != labels.shape or scores.shape != mask.shape:
        raise ValueError(f"scores {tuple(scores.shape)}, labels {tuple(labels.shape)} and mask "
                         f"{tuple(mask.shape)} must have one shape [B, R]")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    levels = labels.to(scores.dtype)  # [B, R]
    low = torch.where(mask, levels, math.inf).amin(dim=1)  # [B]
    high = torch.where(mask, levels, -math.inf).amax(dim=1)  # [B]
    informative = high > low  # [B]: two distinct levels, so two reviews at least
    if not bool(informative.any()):
        return scores.sum() * 0.0
    # Only lists with two valid slots from here on, so no softmax runs over padding alone.
    scores, levels, mask = scores[informative], levels[informative], mask[informative]  # [B', R]
    target = torch.softmax(torch.where(mask, levels / temperature, -math.inf), dim=1)  # [B', R], 0 in padding
    log_probs = torch.where(mask, torch.log_softmax(torch.where(mask, scores, -math.inf), dim=1), 0.0)  # [B', R]
    return -(target * log_probs).sum(dim=1).mean()
