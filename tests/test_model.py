"""The model: masking (padding and absent images change no score, never NaN), order equivariance, ablations,
activation checkpointing, and the batching it is fed with."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import FEATURES, ranking, scores_of, tiny_model, without_images

from mrhp.data.batching import Item, RankingList, collate, pack_groups
from mrhp.models.paper import HelpfulnessModel, masked_max, masked_mean, pack_left

pytestmark = pytest.mark.usefixtures("one_thread")


def small_model(**overrides) -> HelpfulnessModel:
    torch.manual_seed(0)
    return tiny_model(**overrides).eval()


def test_padding_changes_no_score():
    rng = np.random.default_rng(0)
    target = ranking(rng, 4, tokens=4, regions=2)
    longer = ranking(rng, 6, tokens=12, regions=9, group=1)  # forces more padding on every axis
    model = small_model()
    alone = scores_of(model, [target])
    together = scores_of(model, [target, longer])[:4]
    assert torch.allclose(alone, together, atol=1e-5)


@pytest.mark.parametrize("use_interaction", [True, False])
def test_absent_images_and_empty_texts_give_finite_scores_and_gradients(use_interaction):
    rng = np.random.default_rng(1)
    lists = [ranking(rng, 3, regions=0), ranking(rng, 2, regions=3, group=1)]
    lists[0].product = Item(np.zeros(0, dtype=np.int64), np.zeros((0, FEATURES), dtype=np.float32))  # nothing at all
    lists[1].reviews[0] = Item(np.zeros(0, dtype=np.int64), np.zeros((0, FEATURES), dtype=np.float32))
    model = small_model(use_interaction=use_interaction).train()
    output = model(collate(lists, 32, 32, FEATURES))
    assert torch.isfinite(output.row_scores).all()
    assert not output.present["product_image"][:3].any() and output.present["product_image"][3:].all()
    output.row_scores.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_review_order_is_equivariant():
    rng = np.random.default_rng(2)
    original = ranking(rng, 5)
    permutation = [3, 0, 4, 1, 2]
    shuffled = RankingList(
        original.product, [original.reviews[i] for i in permutation], [original.labels[i] for i in permutation],
        permutation, 0,
    )
    model = small_model()
    assert torch.allclose(scores_of(model, [original])[permutation], scores_of(model, [shuffled]), atol=1e-5)


def test_ignoring_images_equals_removing_them():
    rng = np.random.default_rng(3)
    with_images = ranking(rng, 3, regions=4)
    without = without_images(with_images)
    model = small_model()
    text_only = small_model(use_images=False)
    assert torch.allclose(scores_of(text_only, [with_images]), scores_of(model, [without]), atol=1e-6)
    assert not torch.allclose(scores_of(model, [with_images]), scores_of(model, [without]), atol=1e-4)


def test_activation_checkpointing_changes_no_gradient():
    rng = np.random.default_rng(4)
    batch = collate([ranking(rng, 4), ranking(rng, 3, group=1)], 32, 32, FEATURES)
    grads = []
    for flag in (True, False):
        model = small_model(checkpoint_activations=flag).train()
        model(batch).row_scores.pow(2).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_pooling_and_packing_ignore_padding():
    x = torch.tensor([[[1.0], [9.0], [3.0]], [[5.0], [7.0], [2.0]]])
    mask = torch.tensor([[True, False, True], [False, False, False]])
    assert masked_max(x, mask).flatten().tolist() == [3.0, 0.0]
    assert masked_mean(x, mask).flatten().tolist() == [2.0, 0.0]
    packed, packed_mask = pack_left(x, mask)
    assert packed[0].flatten().tolist() == [1.0, 3.0, 0.0] and packed_mask[0].tolist() == [True, True, False]


def test_collate_layout_and_packing_of_lists():
    rng = np.random.default_rng(5)
    lists = [ranking(rng, 3), ranking(rng, 1, group=1), ranking(rng, 2, group=2)]
    batch = collate(lists, 32, 32, FEATURES)
    assert batch.list_rows.tolist() == [[0, 1, 2], [3, 0, 0], [4, 5, 0]]
    assert batch.list_mask.sum().item() == 6 and batch.review_product.tolist() == [0, 0, 0, 1, 2, 2]
    assert batch.labels[1, 1:].tolist() == [0, 0]
    groups = [(0, np.arange(5)), (1, np.arange(20)), (2, np.arange(3)), (3, np.arange(2))]
    assert [[g[0] for g in b] for b in pack_groups(groups, 8)] == [[0], [1], [2, 3]]
