"""Tests of the set-level contrastive loss (mrhp.objectives.losses.set_contrastive_loss, eqs. S1-S4; not in the paper) and
of its switch, `loss.set_contrastive_weight`: a value by hand, padding and absent modalities ignored, its gradient
lowers it, and weight 0 leaves the paper's objective (eq. 35) unchanged bit for bit."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from support import FEATURES, ranking, tiny_inputs, tiny_model_config

from mrhp.config import Config, LossConfig, load_config
from mrhp.data.batching import collate
from mrhp.errors import MrhpError
from mrhp.models.registry import build_model
from mrhp.objectives.losses import (
    cross_modal_contrastive_loss,
    pairwise_ranking_loss,
    set_contrastive_loss,
)
from mrhp.training.loop import joint_loss, set_inputs

# Two lists (products 0 and 1), d = 2, one product modality and one review modality, two reviews each (the product
# vector of each review row: after the interaction module they differ from row to row):
#   list 0: product (1, 0) and (3, 0); review (2, 0) helpful, review (0, 3) less helpful
#   list 1: product (0, 1) and (0, 2); review (0, 5) helpful, review (1, 1) helpful (so U_1 is empty: in no pair)
# Set means of unit vectors (eq. S1), as angles from the first axis: P_0 0 deg, H_0 0 deg, U_0 90 deg, P_1 90 deg,
# H_1 = mean((0, 1), (1, 1) / sqrt 2), at 67.5 deg (the mean of raw vectors, (0.5, 3), would be at 80.5 deg).
# Positive pairs (same product, helpful class): (P_0, H_0) cos 0 = 1; (P_1, H_1) cos 22.5 deg.
# Negative pairs (the 8 others): (P_0, P_1) 0, (P_0, H_1) cos 67.5, (P_0, U_0) 0, (P_1, H_0) 0, (P_1, U_0) 1,
# (H_0, H_1) cos 67.5, (H_0, U_0) 0, (H_1, U_0) cos 22.5.
# Eq. 33 weighting, o_p = 2, o_n = 0: a positive gives (2 - s) s, a negative [s]_+ s.
C22, C67 = math.cos(math.radians(22.5)), math.cos(math.radians(67.5))
POSITIVE_SUM = (2 - 1) * 1 + (2 - C22) * C22
NEGATIVE_SUM = 2 * C67**2 + 1 + C22**2
BY_HAND = {"sum": NEGATIVE_SUM - POSITIVE_SUM, "mean": NEGATIVE_SUM / 8 - POSITIVE_SUM / 2}


def _two_lists(padded: bool = False) -> dict[str, torch.Tensor]:
    products = torch.tensor([[[[1.0, 0.0]], [[3.0, 0.0]]], [[[0.0, 1.0]], [[0.0, 2.0]]]], dtype=torch.float64)
    reviews = torch.tensor([[[[2.0, 0.0]], [[0.0, 3.0]]], [[[0.0, 5.0]], [[1.0, 1.0]]]], dtype=torch.float64)
    inputs = {
        "product_vectors": products,  # [B=2, R=2, Kp=1, d=2]
        "product_present": torch.ones(2, 2, 1, dtype=torch.bool),
        "review_vectors": reviews,  # [B=2, R=2, Kr=1, d=2]
        "review_present": torch.ones(2, 2, 1, dtype=torch.bool),
        "helpful": torch.tensor([[True, False], [True, True]]),
        "group": torch.tensor([0, 1]),
    }
    if padded:
        # A padded review slot per list, an absent image modality for every item and an absent product image,
        # all holding values (inf, NaN, huge) that would change the loss or make it NaN if they were used.
        junk = torch.tensor([float("nan"), 1e6], dtype=torch.float64)
        products = torch.cat([products, junk.expand(2, 2, 1, 2)], dim=2)
        products = torch.cat([products, torch.full((2, 1, 2, 2), 5e5, dtype=torch.float64)], dim=1)
        inputs["product_vectors"] = products  # [2, 3, 2, 2]
        reviews = torch.cat([reviews, torch.full((2, 2, 1, 2), float("inf"), dtype=torch.float64)], dim=2)
        reviews = torch.cat([reviews, torch.full((2, 1, 2, 2), -1e6, dtype=torch.float64)], dim=1)  # [2, 3, 2, 2]
        inputs["review_vectors"] = reviews
        present = torch.zeros(2, 3, 2, dtype=torch.bool)
        present[:, :2, 0] = True
        inputs["review_present"] = present
        inputs["product_present"] = present.clone()
        inputs["helpful"] = torch.tensor([[True, False, True], [True, True, False]])
    return inputs


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_value_by_hand(reduction: str, padded: bool) -> None:
    loss = set_contrastive_loss(**_two_lists(padded), reduction=reduction)
    assert float(loss) == pytest.approx(BY_HAND[reduction], abs=1e-12)


def test_padding_and_absent_members_get_no_gradient() -> None:
    inputs = _two_lists(padded=True)
    inputs["product_vectors"].requires_grad_(True)
    inputs["review_vectors"].requires_grad_(True)
    set_contrastive_loss(**inputs).backward()
    review_grad, product_grad = inputs["review_vectors"].grad, inputs["product_vectors"].grad
    assert torch.isfinite(review_grad).all() and torch.isfinite(product_grad).all()
    for grad in (review_grad, product_grad):
        assert (grad[:, 2] == 0).all() and (grad[:, :, 1] == 0).all()
        assert grad[:, :2, 0].abs().sum() > 0


def test_same_product_lists_and_empty_sets() -> None:
    # The two lists are cut from one product (same group): P_0, H_0, P_1, H_1 are then one class and U_0 the
    # other, so pairs across the two lists turn from negative to positive.
    inputs = _two_lists()
    inputs["group"] = torch.tensor([0, 0])
    loss = set_contrastive_loss(**inputs, reduction="sum")
    # Sets: P_0 0, H_0 0, U_0 90, P_1 90, H_1 67.5 deg. Positives: all pairs among {P_0, H_0, P_1, H_1};
    # negatives: U_0 with each of them.
    pos = [1.0, 0.0, C67, 0.0, C67, C22]  # (P0,H0) (P0,P1) (P0,H1) (H0,P1) (H0,H1) (P1,H1)
    neg = [0.0, 0.0, 1.0, C22]  # U_0 with P_0, H_0, P_1, H_1
    expected = sum(max(s, 0.0) * s for s in neg) - sum((2 - s) * s for s in pos)
    assert float(loss) == pytest.approx(expected, abs=1e-12)
    # No product and one less helpful review: a single set, no pair, a zero that still has a gradient.
    nothing = _two_lists()
    nothing["product_present"][:] = False
    nothing["helpful"][:] = False
    nothing["review_present"][:] = False
    nothing["review_present"][0, 0] = True
    nothing["review_vectors"].requires_grad_(True)
    empty = set_contrastive_loss(**{**nothing, "group": torch.tensor([0, 0])})
    empty.backward()
    assert float(empty.detach()) == 0.0 and nothing["review_vectors"].grad is not None


def test_gradient_step_lowers_the_loss() -> None:
    generator = torch.Generator().manual_seed(0)
    products = torch.randn(4, 5, 2, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    reviews = torch.randn(4, 5, 2, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    masks = {
        "product_present": torch.rand(4, 5, 2, generator=generator) > 0.2,
        "review_present": torch.rand(4, 5, 2, generator=generator) > 0.2,
        "helpful": torch.rand(4, 5, generator=generator) > 0.5,
        "group": torch.tensor([0, 1, 1, 2]),
    }
    losses = []
    for _ in range(20):
        loss = set_contrastive_loss(products, masks["product_present"], reviews, masks["review_present"],
                                    masks["helpful"], masks["group"])
        losses.append(float(loss.detach()))
        products.grad = reviews.grad = None
        loss.backward()
        with torch.no_grad():
            products -= 0.5 * products.grad
            reviews -= 0.5 * reviews.grad
    assert losses[1] < losses[0] and losses[-1] < losses[0] - 0.1


def test_bad_arguments() -> None:
    inputs = _two_lists()
    with pytest.raises(ValueError, match="reduction"):
        set_contrastive_loss(**inputs, reduction="max")
    with pytest.raises(ValueError, match="helpful"):
        set_contrastive_loss(**{**inputs, "helpful": inputs["helpful"].int()})
    with pytest.raises(ValueError, match="group"):
        set_contrastive_loss(**{**inputs, "group": torch.tensor([0, 1, 2])})


def _tiny_batch_and_model():
    rng = np.random.default_rng(7)
    batch = collate([ranking(rng, 5), ranking(rng, 4, group=1), ranking(rng, 5, group=1)], 32, 32, FEATURES)
    torch.manual_seed(0)
    return batch, build_model(tiny_model_config(), tiny_inputs())


def test_weight_zero_is_the_papers_objective_bit_for_bit(one_thread) -> None:
    batch, model = _tiny_batch_and_model()
    config = Config(model=tiny_model_config())
    assert config.loss.set_contrastive_weight == 0.0
    output = model(batch)
    total, parts = joint_loss(output, batch, config)
    loss = config.loss
    helpful = batch.review_labels >= loss.helpful_level
    ranking = pairwise_ranking_loss(output.scores, batch.labels, batch.list_mask, margin=loss.margin,
                                    min_gap=loss.min_gap, reduction=loss.ranking_reduction)
    contrastive = cross_modal_contrastive_loss(
        {k: v[helpful] for k, v in output.pooled.items()}, {k: v[helpful] for k, v in output.present.items()},
        batch.list_group[batch.review_product][helpful], reduction=loss.contrastive_reduction)
    paper = ranking + contrastive
    assert set(parts) == {"ranking", "contrastive"}
    assert torch.equal(total, paper)
    grads = torch.autograd.grad(total, list(model.parameters()), retain_graph=True, allow_unused=True)
    paper_grads = torch.autograd.grad(paper, list(model.parameters()), allow_unused=True)
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(grads, paper_grads))

    weighted = dataclasses.replace(config, loss=dataclasses.replace(loss, set_contrastive_weight=0.5))
    with_set, set_parts = joint_loss(output, batch, weighted)
    set_level = set_contrastive_loss(*set_inputs(output, batch, loss.helpful_level),
                                     reduction=loss.contrastive_reduction)
    assert set_parts["set_contrastive"] == float(set_level.detach()) != 0.0
    assert float(with_set.detach()) == pytest.approx(float((paper + 0.5 * set_level).detach()), abs=1e-6)


def test_set_inputs_follow_the_lists(one_thread) -> None:
    batch, model = _tiny_batch_and_model()
    output = model(batch)
    products, product_present, reviews, review_present, helpful, group = set_inputs(output, batch, 2)
    b, r = batch.list_mask.shape
    assert products.shape == (b, r, 2, 16) and reviews.shape == (b, r, 2, 16)
    assert torch.equal(group, batch.list_group)
    assert not review_present[~batch.list_mask].any() and not product_present[~batch.list_mask].any()
    for list_index in range(b):
        for slot in range(int(batch.list_mask[list_index].sum())):
            row = batch.list_rows[list_index, slot]
            assert torch.equal(reviews[list_index, slot, 0], output.pooled["review_text"][row])
            assert torch.equal(products[list_index, slot, 1], output.pooled["product_image"][row])
            assert bool(helpful[list_index, slot]) == bool(batch.review_labels[row] >= 2)


@pytest.mark.parametrize("value", ["-0.1", "nan", "inf"])
def test_weight_is_range_checked(value: str) -> None:
    with pytest.raises(MrhpError, match="loss.set_contrastive_weight"):
        load_config(sets=[f"loss.set_contrastive_weight={value}"])
    assert load_config(sets=["loss.set_contrastive_weight=0.3"]).loss.set_contrastive_weight == 0.3
    assert LossConfig().set_contrastive_weight == 0.0
