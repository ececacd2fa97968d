"""Tests of mrhp.objectives.losses: the ranking loss by hand, the contrastive loss against eqs. 32-33, Theorem 1 and Circle."""

from __future__ import annotations

import math
from itertools import combinations

import pytest
import torch
import torch.nn.functional as F

from mrhp.objectives.losses import (
    MODALITY_KEYS,
    cross_modal_contrastive_loss,
    listwise_softmax_loss,
    pairwise_ranking_loss,
)

PRODUCT = {"product_text", "product_image"}


# ---------------------------------------------------------------------------------------------------------------
# Ranking loss (eq. 34)
# ---------------------------------------------------------------------------------------------------------------
# One list: scores s = [2.0, 0.5, 1.0], labels y = [3, 1, 0]. Ordered pairs (i, j) with y_i - y_j >= 1:
#   (0, 1) gap 2: margin 1 -> max(0, 1 - 2.0 + 0.5) = 0;    gap margin 2 -> max(0, 2 - 2.0 + 0.5) = 0.5
#   (0, 2) gap 3: margin 1 -> max(0, 1 - 2.0 + 1.0) = 0;    gap margin 3 -> max(0, 3 - 2.0 + 1.0) = 2.0
#   (1, 2) gap 1: margin 1 -> max(0, 1 - 0.5 + 1.0) = 1.5;  gap margin 1 -> 1.5
# margin 1:          sum 1.5, mean 1.5 / 3 = 0.5;  d(sum)/ds = [0, -1, +1] (only pair (1, 2) is active)
# label-gap margin:  sum 4.0, mean 4 / 3
# min_gap = 2 keeps (0, 1) and (0, 2): margin 1 -> sum 0; label-gap margin -> sum 2.5, mean 1.25
SCORES = [2.0, 0.5, 1.0]
LABELS = [3, 1, 0]


def _one_list(padded: bool = False):
    scores = torch.tensor([SCORES], dtype=torch.float64)
    labels = torch.tensor([LABELS])
    mask = torch.ones(1, 3, dtype=torch.bool)
    if padded:
        # Padded slots with extreme labels and scores (even inf) that would form large hinge terms if used.
        scores = torch.cat([scores, torch.tensor([[float("inf"), -50.0]], dtype=torch.float64)], 1)
        labels = torch.cat([labels, torch.tensor([[4, -7]])], 1)
        mask = torch.cat([mask, torch.zeros(1, 2, dtype=torch.bool)], 1)
    return scores.requires_grad_(True), labels, mask


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize(
    ("label_gap_margin", "min_gap", "reduction", "expected"),
    [
        (False, 1, "sum", 1.5),
        (False, 1, "mean", 0.5),
        (True, 1, "sum", 4.0),
        (True, 1, "mean", 4.0 / 3.0),
        (False, 2, "sum", 0.0),
        (True, 2, "sum", 2.5),
        (True, 2, "mean", 1.25),
    ],
)
def test_ranking_loss_by_hand(label_gap_margin: bool, min_gap: int, reduction: str, expected: float, padded: bool):
    scores, labels, mask = _one_list(padded)
    loss = pairwise_ranking_loss(
        scores, labels, mask, margin=1.0, label_gap_margin=label_gap_margin, min_gap=min_gap, reduction=reduction
    )
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(expected, abs=1e-12)


def test_ranking_loss_gradient_and_batch() -> None:
    scores, labels, mask = _one_list(padded=True)
    pairwise_ranking_loss(scores, labels, mask, reduction="sum").backward()
    assert scores.grad.tolist() == [[0.0, -1.0, 1.0, 0.0, 0.0]]
    # Pairs never cross lists: a second list is added with labels that would pair with the first one.
    scores2 = torch.tensor([SCORES, [0.0, 0.0, 0.0]], dtype=torch.float64)
    labels2 = torch.tensor([LABELS, [0, 0, 4]])
    mask2 = torch.tensor([[True, True, True], [True, True, False]])
    # list 2 has labels [0, 0] on its real slots: no pair; so sum stays 1.5 and mean 1.5 / 3.
    assert pairwise_ranking_loss(scores2, labels2, mask2, reduction="sum").item() == pytest.approx(1.5)
    assert pairwise_ranking_loss(scores2, labels2, mask2).item() == pytest.approx(0.5)
    with pytest.raises(ValueError):
        pairwise_ranking_loss(scores2, labels2, mask2, reduction="max")
    with pytest.raises(ValueError):
        pairwise_ranking_loss(scores2, labels2, mask2, min_gap=0)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_ranking_loss_no_pair_is_zero_with_grad(reduction: str) -> None:
    scores = torch.tensor([[0.3, -0.2, 0.1], [1.0, 2.0, 3.0]], requires_grad=True)
    labels = torch.tensor([[2, 2, 2], [0, 4, 1]])
    mask = torch.tensor([[True, True, True], [True, False, False]])  # equal labels; a single real review
    loss = pairwise_ranking_loss(scores, labels, mask, reduction=reduction)
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert torch.equal(scores.grad, torch.zeros_like(scores))


# ---------------------------------------------------------------------------------------------------------------
# Cross-modal contrastive loss (eqs. 32-33, Theorem 1)
# ---------------------------------------------------------------------------------------------------------------
def _features(n: int, d: int, seed: int, positive_orthant: bool = False, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    feats = {}
    for key in MODALITY_KEYS:
        draw = torch.rand if positive_orthant else torch.randn
        x = draw(n, d, generator=g, dtype=dtype)
        feats[key] = x.requires_grad_(True)
    return feats


def _share_product_vectors(feats: dict, group: torch.Tensor) -> dict:
    """Rows of one product carry the same h^p and v^p, as the model produces them."""
    first = {int(g): i for i, g in reversed(list(enumerate(group.tolist())))}
    idx = torch.tensor([first[int(g)] for g in group.tolist()])
    out = dict(feats)
    for key in PRODUCT:
        out[key] = feats[key][idx]
    return out


def _all_present(n: int) -> dict:
    return {key: torch.ones(n, dtype=torch.bool) for key in MODALITY_KEYS}


def _reference(feats, present, group, weighting="adaptive", o_p=2.0, o_n=0.0, detach=False):
    """Eqs. 32-33 term by term with explicit loops (sum reduction)."""
    total = 0.0
    n = group.shape[0]
    for k1, k2 in combinations(MODALITY_KEYS, 2):
        shares_product = bool({k1, k2} & PRODUCT)
        for j in range(n):
            for k in range(n):
                if not (present[k1][j] and present[k2][k]):
                    continue
                if j != k and shares_product and group[j] == group[k]:
                    continue
                s = F.cosine_similarity(feats[k1][j], feats[k2][k], dim=0)
                if j == k:
                    w = torch.relu(o_p - s) if weighting == "adaptive" else 1.0
                    total = total - (w.detach() if detach and weighting == "adaptive" else w) * s
                else:
                    w = torch.relu(s - o_n) if weighting == "adaptive" else 1.0
                    total = total + (w.detach() if detach and weighting == "adaptive" else w) * s
    return total


def _hyperspherical(feats, present, group, o_p=2.0, o_n=0.0):
    """Theorem 1 / Appendix A eq. 38: sum (S_ii - o_p/2)^2 + sum (S_jk - o_n/2)^2 - C, with
    C = (o_p/2)^2 per positive + (o_n/2)^2 per negative (completing the square of eq. 37)."""
    total, constant = 0.0, 0.0
    n = group.shape[0]
    for k1, k2 in combinations(MODALITY_KEYS, 2):
        a = F.normalize(feats[k1], dim=1)
        b = F.normalize(feats[k2], dim=1)
        sim = a @ b.T
        for j in range(n):
            for k in range(n):
                if not (present[k1][j] and present[k2][k]):
                    continue
                if j != k and bool({k1, k2} & PRODUCT) and group[j] == group[k]:
                    continue
                o = o_p if j == k else o_n
                total = total + (sim[j, k] - o / 2) ** 2
                constant += (o / 2) ** 2
    return total - constant


def _grads(loss, feats):
    return torch.autograd.grad(loss, [feats[k] for k in MODALITY_KEYS], retain_graph=True, materialize_grads=True)


def test_theorem_1_value_and_gradient() -> None:
    # Positive-orthant features: every cosine is > 0 = o_n, so eps_n = [S_jk - o_n]_+ never clips and eq. 33 is
    # exactly the quadratic of eq. 37. (Where S_jk < o_n, eq. 33 clips the weight to 0 and drops the term, while
    # the hyperspherical form still counts (S_jk - o_n/2)^2: the two forms then differ.) eps_p never clips since
    # S_ii <= 1 < o_p = 2.
    group = torch.tensor([0, 0, 1, 2, 2, 2])
    leaf = _features(6, 8, seed=0, positive_orthant=True)
    feats = _share_product_vectors(leaf, group)
    present = _all_present(6)
    loss = cross_modal_contrastive_loss(feats, present, group)
    target = _hyperspherical(feats, present, group)
    assert loss.item() == pytest.approx(target.item(), rel=1e-12, abs=1e-12)
    for g1, g2 in zip(_grads(loss, leaf), _grads(target, leaf)):
        torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)


def test_clipped_negatives_break_theorem_1() -> None:
    # The caveat above, checked: with negative cosines below o_n the two forms disagree.
    group = torch.arange(5)
    feats = _features(5, 8, seed=1)
    present = _all_present(5)
    loss = cross_modal_contrastive_loss(feats, present, group)
    assert loss.item() != pytest.approx(_hyperspherical(feats, present, group).item(), abs=1e-6)


def test_detach_changes_gradient_not_value() -> None:
    group = torch.tensor([0, 1, 1, 2])
    leaf = _features(4, 6, seed=2)
    feats = _share_product_vectors(leaf, group)
    present = _all_present(4)
    attached = cross_modal_contrastive_loss(feats, present, group)
    detached = cross_modal_contrastive_loss(feats, present, group, detach_weights=True)
    assert attached.item() == pytest.approx(detached.item(), rel=1e-12)
    g_att, g_det = _grads(attached, leaf), _grads(detached, leaf)
    assert any(not torch.allclose(a, b) for a, b in zip(g_att, g_det))
    # Both agree with the loop reference, gradient included.
    for det, grads in ((False, g_att), (True, g_det)):
        ref = _reference(feats, present, group, detach=det)
        for g1, g2 in zip(grads, _grads(ref, leaf)):
            torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)


def _two_row_case():
    # Only review_text and review_image are present, so only that pair type counts:
    #   h^r = [[1, 0], [0, 1]], v^r = [[1, 1], [1, 0]]
    #   S = [[cos((1,0),(1,1)), cos((1,0),(1,0))], [cos((0,1),(1,1)), cos((0,1),(1,0))]] = [[1/sqrt2, 1], [1/sqrt2, 0]]
    feats = {key: torch.zeros(2, 2, dtype=torch.float64) for key in MODALITY_KEYS}
    feats["review_text"] = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    feats["review_image"] = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    present = {key: torch.tensor([key.startswith("review")] * 2) for key in MODALITY_KEYS}
    return feats, present, torch.tensor([0, 1])


def test_weightings_by_hand() -> None:
    feats, present, group = _two_row_case()
    # r = 1 / sqrt(2), the cosine of [1, 1] with [1, 0]
    # eq. 32: -(S_00 + S_11) + (S_01 + S_10) = -(r + 0) + (1 + r) = 1
    assert cross_modal_contrastive_loss(feats, present, group, weighting="none").item() == pytest.approx(1.0)
    # mean: -(r + 0)/2 + (1 + r)/2 = 1/2
    none_mean = cross_modal_contrastive_loss(feats, present, group, weighting="none", reduction="mean")
    assert none_mean.item() == pytest.approx(0.5)
    # eq. 33: positives -[(2 - r) r + (2 - 0) 0] = -(sqrt2 - 1/2); negatives (1 - 0) 1 + (r - 0) r = 3/2
    # total 2 - sqrt2; mean: -(sqrt2 - 1/2)/2 + (3/2)/2 = 1 - sqrt2/2
    adaptive = cross_modal_contrastive_loss(feats, present, group)
    assert adaptive.item() == pytest.approx(2 - math.sqrt(2))
    adaptive_mean = cross_modal_contrastive_loss(feats, present, group, reduction="mean")
    assert adaptive_mean.item() == pytest.approx(1 - math.sqrt(2) / 2)
    # A non-default offset: o_n = 0.8 leaves only the S_01 = 1 negative, weight 0.2 -> -(sqrt2 - 1/2) + 0.2
    shifted = cross_modal_contrastive_loss(feats, present, group, o_n=0.8)
    assert shifted.item() == pytest.approx(-(math.sqrt(2) - 0.5) + 0.2)


@pytest.mark.parametrize("weighting", ["adaptive", "none"])
def test_matches_loop_reference_with_groups_and_absent_rows(weighting: str) -> None:
    group = torch.tensor([0, 0, 1, 1, 1, 2, 3])
    leaf = _features(7, 5, seed=3)
    feats = _share_product_vectors(leaf, group)
    present = _all_present(7)
    present["review_image"] = torch.tensor([True, False, True, False, True, True, False])
    present["product_image"] = torch.tensor([True, True, False, False, False, True, True])
    loss = cross_modal_contrastive_loss(feats, present, group, weighting=weighting)
    ref = _reference(feats, present, group, weighting=weighting)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    for g1, g2 in zip(_grads(loss, leaf), _grads(ref, leaf)):
        torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)


def test_same_product_rows_are_not_negatives() -> None:
    # Two rows of one product, only product_text and review_text present: the only negatives would be the
    # (h^p_0, h^r_1) and (h^p_1, h^r_0) pairs, and those rows share the product, so eq. 32 is -(S_00 + S_11) alone.
    leaf = _features(2, 4, seed=4)
    group = torch.tensor([5, 5])
    feats = _share_product_vectors(leaf, group)
    present = {key: torch.tensor([key.endswith("text")] * 2) for key in MODALITY_KEYS}
    loss = cross_modal_contrastive_loss(feats, present, group, weighting="none")
    diag = F.cosine_similarity(feats["product_text"], feats["review_text"], dim=1).sum()
    assert loss.item() == pytest.approx(-diag.item(), rel=1e-12)
    # Moving the second row's product vector changes only its positive term, never a negative one.
    moved = dict(feats)
    moved["product_text"] = feats["product_text"].detach().clone()
    moved["product_text"][1] = torch.tensor([3.0, -1.0, 0.5, 2.0], dtype=torch.float64)
    moved_diag = F.cosine_similarity(moved["product_text"], feats["review_text"], dim=1).sum()
    moved_loss = cross_modal_contrastive_loss(moved, present, group, weighting="none")
    assert moved_loss.item() == pytest.approx(-moved_diag.item(), rel=1e-12)
    # With distinct products the same rows are negatives of each other.
    off = cross_modal_contrastive_loss(feats, present, torch.tensor([5, 6]), weighting="none")
    s = F.normalize(feats["product_text"], dim=1) @ F.normalize(feats["review_text"], dim=1).T
    assert off.item() == pytest.approx((-s.trace() + s[0, 1] + s[1, 0]).item(), rel=1e-12)
    # Review-review pairs keep same-product negatives: two reviews of one product are different samples.
    present_r = {key: torch.tensor([key.startswith("review")] * 2) for key in MODALITY_KEYS}
    rr = cross_modal_contrastive_loss(feats, present_r, group, weighting="none")
    s = F.normalize(feats["review_text"], dim=1) @ F.normalize(feats["review_image"], dim=1).T
    assert rr.item() == pytest.approx((-s.trace() + s[0, 1] + s[1, 0]).item(), rel=1e-12)


def test_absent_rows_ignore_their_values() -> None:
    group = torch.tensor([0, 1, 2])
    feats = _features(3, 4, seed=5)
    present = _all_present(3)
    present["review_image"] = torch.tensor([True, False, True])
    base = cross_modal_contrastive_loss(feats, present, group)
    garbage = dict(feats)
    garbage["review_image"] = feats["review_image"].detach().clone()
    garbage["review_image"][1] = torch.tensor([float("-inf"), float("nan"), 1e30, 0.0], dtype=torch.float64)
    garbage["review_image"].requires_grad_(True)
    for weighting in ("adaptive", "none", "circle"):
        a = cross_modal_contrastive_loss(feats, present, group, weighting=weighting)
        b = cross_modal_contrastive_loss(garbage, present, group, weighting=weighting)
        assert torch.isfinite(b)
        assert a.item() == pytest.approx(b.item(), rel=1e-12)
        (grad,) = torch.autograd.grad(b, [garbage["review_image"]])
        assert torch.isfinite(grad).all() and not grad[1].any()
    assert torch.isfinite(base)


@pytest.mark.parametrize("weighting", ["adaptive", "none", "circle"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_nothing_valid_gives_zero_without_nan(weighting: str, reduction: str) -> None:
    cases = []
    # every modality absent
    feats = _features(3, 4, seed=6)
    cases.append((feats, {key: torch.zeros(3, dtype=torch.bool) for key in MODALITY_KEYS}, torch.arange(3)))
    # zero vectors everywhere (cosine eps), present
    zeros = {key: torch.zeros(3, 4, requires_grad=True) for key in MODALITY_KEYS}
    cases.append((zeros, _all_present(3), torch.arange(3)))
    # no rows at all
    empty = {key: torch.zeros(0, 4, requires_grad=True) for key in MODALITY_KEYS}
    cases.append((empty, _all_present(0), torch.zeros(0, dtype=torch.long)))
    for f, p, g in cases:
        loss = cross_modal_contrastive_loss(f, p, g, weighting=weighting, reduction=reduction)
        assert loss.item() == 0.0 or (f is zeros and weighting == "circle")
        assert torch.isfinite(loss) and loss.requires_grad
        for grad in _grads(loss, f):
            assert torch.isfinite(grad).all()


def test_circle_variant() -> None:
    m, gamma = 0.25, 256.0
    # Only one pair type present, 3 rows of distinct products: compare with the formula row by row.
    feats = _features(3, 5, seed=7)
    present = {key: torch.tensor([key in ("review_text", "product_image")] * 3) for key in MODALITY_KEYS}
    group = torch.arange(3)
    loss = cross_modal_contrastive_loss(feats, present, group, weighting="circle")
    # Pair types follow MODALITY_KEYS order, so this one is (review_text, product_image): rows are h^r vectors.
    s = F.normalize(feats["review_text"], dim=1) @ F.normalize(feats["product_image"], dim=1).T
    rows = []
    for i in range(3):
        sp = s[i, i]
        lp = -gamma * torch.relu(1 + m - sp).detach() * (sp - (1 - m))
        ln = torch.stack([gamma * torch.relu(s[i, k] + m).detach() * (s[i, k] - m) for k in range(3) if k != i])
        rows.append(F.softplus(lp + torch.logsumexp(ln, 0)))
    ref = torch.stack(rows).mean()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-10)
    for g1, g2 in zip(_grads(loss, feats), _grads(ref, feats)):
        torch.testing.assert_close(g1, g2, rtol=1e-8, atol=1e-10)

    # All four modalities: pulling each row's modalities toward a common row vector lowers the loss.
    torch.manual_seed(8)
    n, d = 6, 64
    common = torch.randn(n, d, dtype=torch.float64)
    start = {key: torch.randn(n, d, dtype=torch.float64) for key in MODALITY_KEYS}
    values = []
    for a in (0.0, 0.3, 0.6, 0.9):
        mixed = {key: (1 - a) * start[key] + a * common for key in MODALITY_KEYS}
        loss = cross_modal_contrastive_loss(mixed, _all_present(n), torch.arange(n), weighting="circle")
        assert torch.isfinite(loss)
        values.append(loss.item())
    assert all(x > y for x, y in zip(values, values[1:])), values
    # Near the optimum (positives close to 1, negatives near 0 < m) the loss is close to 0.
    assert values[-1] < 1e-3


def test_bad_arguments() -> None:
    feats = _features(2, 3, seed=9)
    present = _all_present(2)
    group = torch.arange(2)
    with pytest.raises(ValueError):
        cross_modal_contrastive_loss(feats, present, group, weighting="infonce")
    with pytest.raises(ValueError):
        cross_modal_contrastive_loss(feats, present, group, reduction="max")
    with pytest.raises(ValueError):
        cross_modal_contrastive_loss({k: feats[k] for k in MODALITY_KEYS[:3]}, present, group)
    with pytest.raises(ValueError):
        cross_modal_contrastive_loss(feats, {k: v.long() for k, v in present.items()}, group)


# ---- the listwise loss (eq. L1, not in the paper) ----------------------------------------------------------------


def _listnet_by_hand(scores: list[float], labels: list[float], temperature: float = 1.0) -> float:
    """-sum_r softmax(y / T)_r log softmax(s)_r of one list, written out with math."""
    target = [math.exp(y / temperature) for y in labels]
    target = [t / sum(target) for t in target]
    log_norm = math.log(sum(math.exp(s) for s in scores))
    return -sum(t * (s - log_norm) for t, s in zip(target, scores))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_listwise_loss_by_hand_with_padding_and_a_flat_list(temperature: float) -> None:
    # List 0: three reviews and a padded slot holding a huge score and label (a loss that let padding into either
    # softmax would change). List 1: every label equal, so it teaches no order and must not count in the mean.
    scores = torch.tensor([[1.0, 0.0, -0.5, 1e4], [0.3, -2.0, 0.0, 0.0]], requires_grad=True)
    labels = torch.tensor([[2, 0, 1, 4], [3, 3, 0, 0]])
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    loss = listwise_softmax_loss(scores, labels, mask, temperature=temperature)
    expected = _listnet_by_hand([1.0, 0.0, -0.5], [2, 0, 1], temperature)
    assert math.isclose(float(loss.detach()), expected, rel_tol=1e-6)
    loss.backward()
    assert torch.isfinite(scores.grad).all()
    assert float(scores.grad[0, 3].abs()) == 0.0 and float(scores.grad[1].abs().sum()) == 0.0


def test_listwise_loss_matches_torch_cross_entropy_with_soft_targets() -> None:
    """An independent path: torch's cross_entropy with probability targets, list by list."""
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(5, 7, generator=generator)
    labels = torch.randint(0, 5, (5, 7), generator=generator)
    lengths = [7, 2, 5, 1, 4]
    mask = torch.arange(7)[None, :] < torch.tensor(lengths)[:, None]
    expected = []
    for b, n in enumerate(lengths):
        if n > 1 and labels[b, :n].unique().numel() > 1:
            target = torch.softmax(labels[b, :n].float(), dim=0)
            expected.append(F.cross_entropy(scores[b, :n][None], target[None]))
    torch.testing.assert_close(listwise_softmax_loss(scores, labels, mask), torch.stack(expected).mean())


def test_listwise_loss_without_order_is_zero_with_a_graph() -> None:
    scores = torch.zeros(2, 3, requires_grad=True)
    loss = listwise_softmax_loss(scores, torch.tensor([[1, 1, 0], [2, 0, 0]]),
                                 torch.tensor([[True, True, False], [True, False, False]]))
    loss.backward()
    assert float(loss.detach()) == 0.0 and scores.grad is not None and float(scores.grad.abs().sum()) == 0.0
    with pytest.raises(ValueError, match="temperature"):
        listwise_softmax_loss(scores, torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool), temperature=0.0)


def test_joint_loss_adds_the_weighted_listwise_term_only_when_asked() -> None:
    import dataclasses
    from types import SimpleNamespace

    from mrhp.config import Config
    from mrhp.models.paper import ModelOutput
    from mrhp.training.loop import joint_loss

    scores = torch.tensor([[1.0, 0.0, -0.5], [0.2, 0.1, 0.0]])
    batch = SimpleNamespace(labels=torch.tensor([[2, 0, 1], [0, 3, 0]]),
                            list_mask=torch.tensor([[True, True, True], [True, True, False]]))
    output = ModelOutput(scores=scores, row_scores=scores.flatten(), pooled={}, present={})
    paper = Config()
    total, parts = joint_loss(output, batch, paper)
    assert set(parts) == {"ranking"}
    listwise = dataclasses.replace(paper, loss=dataclasses.replace(paper.loss, listwise_weight=0.5))
    with_listwise, listwise_parts = joint_loss(output, batch, listwise)
    expected = listwise_softmax_loss(scores, batch.labels, batch.list_mask)
    assert listwise_parts["listwise"] == pytest.approx(float(expected))
    assert float(with_listwise) == pytest.approx(float(total + 0.5 * expected))
