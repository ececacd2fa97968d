"""Every model of the registry (the paper's and the baselines of SPEC 8): output layout, padding, absent images and
empty texts, a decreasing loss, checkpoints; plus the comparison of per-product metric files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from support import (
    FEATURES,
    TINY_TRAIN_ARGS,
    VOCAB,
    item,
    prepare_tiny_dataset,
    ranking,
    scores_of,
    tiny_inputs,
    tiny_model_config,
    without_images,
    write_lines,
)

from mrhp.cli import main
from mrhp.config import Config, ModelConfig, load_config
from mrhp.data.batching import Item, RankingList, collate
from mrhp.data.prepared import PreparedDataset
from mrhp.data.text import UNK_ID, Vocabulary, spell
from mrhp.errors import MrhpError
from mrhp.models.baselines.layers import ProductAwareAttention
from mrhp.models.baselines.mcr import KernelMaxPooling, similarity_channels
from mrhp.models.baselines.sse_cross import share_embeddings
from mrhp.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from mrhp.models.registry import (
    MODEL_NAMES,
    TEXT_ONLY,
    build_model,
    capabilities,
    initialise_from_data,
    reads_images,
)
from mrhp.studies.compare import (
    compare_systems,
    format_comparison,
    read_per_product,
    system_name,
)
from mrhp.studies.synthetic import SyntheticSpec
from mrhp.training.loop import joint_loss

TOKENS = ["<pad>", "<unk>"] + [f"w{i}" for i in range(VOCAB - 2)]
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(name: str) -> ModelConfig:
    return tiny_model_config(name=name, interaction_layers=1, feedforward_size=16, checkpoint_activations=False)


def tiny_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(tiny_config(name), tiny_inputs())
    initialise_from_data(model, None)
    return model.eval()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_layout(name):
    rng = np.random.default_rng(0)
    batch = collate([ranking(rng, 3), ranking(rng, 5, group=1)], 32, 32, FEATURES)
    output = tiny_model(name)(batch)
    assert output.scores.shape == (2, 5) and output.row_scores.shape == (8,)
    assert output.scores[0, 3:].eq(0).all() and torch.equal(output.scores[1], output.row_scores[3:])
    assert (output.pooled == {}) == (name != "mrhp")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_padding_changes_no_score(name):
    rng = np.random.default_rng(1)
    target = ranking(rng, 4, tokens=4, regions=2)
    longer = ranking(rng, 6, tokens=12, regions=9, group=1)  # more padding on every axis for the target
    model = tiny_model(name)
    assert torch.allclose(scores_of(model, [target]), scores_of(model, [target, longer])[:4], atol=1e-5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_absent_images_and_empty_texts_give_finite_scores_and_gradients(name):
    rng = np.random.default_rng(2)
    lists = [ranking(rng, 3, regions=0), ranking(rng, 2, regions=3, group=1)]
    lists[0].product = Item(np.zeros(0, dtype=np.int64), np.zeros((0, FEATURES), dtype=np.float32))
    lists[1].reviews[0] = Item(np.zeros(0, dtype=np.int64), np.zeros((0, FEATURES), dtype=np.float32))
    model = tiny_model(name).train()
    output = model(collate(lists, 32, 32, FEATURES))
    assert torch.isfinite(output.row_scores).all()
    output.row_scores.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_images_are_read_only_by_multimodal_models(name):
    rng = np.random.default_rng(3)
    with_images = ranking(rng, 3, regions=4)
    without = without_images(with_images)
    model = tiny_model(name)
    same = torch.allclose(scores_of(model, [with_images]), scores_of(model, [without]), atol=1e-6)
    assert same == (name in TEXT_ONLY) and reads_images(tiny_config(name), tiny_inputs()) == (name not in TEXT_ONLY)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_loss_decreases_on_a_tiny_batch(name):
    rng = np.random.default_rng(4)
    batch = collate([ranking(rng, 5), ranking(rng, 5, group=1), ranking(rng, 4, group=2)], 32, 32, FEATURES)
    config = Config(model=tiny_config(name))
    model = tiny_model(name)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss_now() -> tuple[float, float]:
        model.eval()
        with torch.no_grad():
            total, parts = joint_loss(model(batch), batch, config)
        return float(total), parts["ranking"]

    before, ranking_before = loss_now()
    torch.manual_seed(0)
    for _ in range(15):
        model.train()
        loss, parts = joint_loss(model(batch), batch, config)
        assert ("contrastive" in parts) == (name == "mrhp")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after, ranking_after = loss_now()
    # The joint loss may be negative (the contrastive term is), so a ratio test would pass a rising loss; the
    # total must fall, and the ranking loss (a hinge, >= 0) by a fifth.
    assert after < before and ranking_before > 0 and ranking_after < 0.8 * ranking_before


def changed_product(original: RankingList, rng: np.random.Generator, *, text: bool, image: bool) -> RankingList:
    """`original` with its product's tokens and/or image regions replaced (reviews, labels, order kept)."""
    product = original.product
    tokens = rng.integers(2, VOCAB, size=len(product.tokens)) if text else product.tokens
    regions = rng.standard_normal(product.regions.shape).astype(np.float32) if image else product.regions
    return RankingList(Item(tokens, regions), original.reviews, original.labels, original.review_indices,
                       original.group)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_the_product_changes_the_score(name):
    """Every model that reads the product scores a review differently for another product text, and every
    multimodal model for another product image (a product-aware attention that cancels itself would not)."""
    rng = np.random.default_rng(7)
    original = ranking(rng, 4, tokens=6, regions=3)
    original.product = item(rng, 6, 3)  # a product with both modalities
    for review in original.reviews:
        review.regions = rng.standard_normal((2, FEATURES)).astype(np.float32)
    model = tiny_model(name)
    base = scores_of(model, [original])
    text_changed = scores_of(model, [changed_product(original, rng, text=True, image=False)])
    image_changed = scores_of(model, [changed_product(original, rng, text=False, image=True)])
    reads_product = capabilities(name).product  # EG-CNN reads the review alone (its paper ranks within one product)
    assert (not torch.allclose(base, text_changed, atol=1e-6)) == reads_product
    assert (not torch.allclose(base, image_changed, atol=1e-6)) == (name not in TEXT_ONLY)


def test_product_aware_attention_reads_the_product():
    """H = R + G^T P (Fan et al. 2019): each review token gathers the product tokens it attends to, so the output
    moves with the product; before the fix it was sum(R) / |Lp| whatever the product said."""
    torch.manual_seed(0)
    attention = ProductAwareAttention(4)
    product, review = torch.randn(1, 3, 4), torch.randn(1, 5, 4)
    p_mask, r_mask = torch.ones(1, 3, dtype=torch.bool), torch.ones(1, 5, dtype=torch.bool)
    out = attention(product, p_mask, review, r_mask)
    weights = torch.softmax(torch.relu(attention.transform(product)) @ review.transpose(1, 2), dim=1)  # [1, 3, 5]
    expected = (review + weights.transpose(1, 2) @ product).mean(dim=1)
    assert torch.allclose(out, expected, atol=1e-6)
    assert not torch.allclose(out, attention(2 * product, p_mask, review, r_mask))
    empty = attention(product, torch.zeros_like(p_mask), review, r_mask)  # no product text: the review's own mean
    assert torch.allclose(empty, review.mean(dim=1), atol=1e-6)


def test_mcr_kernel_max_pooling_crosses_every_pair_of_ngram_maps():
    """MCR's text kernel max pooling runs over one [Lp, Lr] cosine matrix per (product n-gram map, review n-gram
    map) pair, 3 x 3 = 9 channels as the reference's cross-match layer builds them (not over the cosines of the
    summed maps): channel 3i + j holds cos(product gram i, review gram j); padded cells are 0; either side changes
    the pooled features."""
    torch.manual_seed(0)
    products, reviews = [torch.randn(2, 3, 4) for _ in range(3)], [torch.randn(2, 5, 4) for _ in range(3)]
    p_mask = torch.tensor([[True, True, False], [True, True, True]])
    r_mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    grid, cells = similarity_channels(products, p_mask, reviews, r_mask)
    assert grid.shape == (2, 9, 3, 5) and torch.equal(cells, p_mask[:, :, None] & r_mask[:, None, :])
    for i in range(3):
        for j in range(3):
            cosine = torch.nn.functional.cosine_similarity(products[i][0, 1], reviews[j][0, 4], dim=0)
            assert torch.isclose(grid[0, 3 * i + j, 1, 4], cosine, atol=1e-6), (i, j)
    summed = torch.nn.functional.cosine_similarity(sum(products)[0, 1], sum(reviews)[0, 4], dim=0)
    assert not torch.isclose(grid[0, :, 1, 4], summed, atol=1e-3).any()  # no channel is the summed maps' cosine
    assert grid[0, :, 2].eq(0).all() and grid[1, :, :, 2:].eq(0).all()
    pooling = KernelMaxPooling(9, kernels=2, filters=4, top_k=16)
    features = pooling(grid, cells)
    assert features.shape == (2, 2 * 4 * 16)
    other_product, _ = similarity_channels([-x for x in products], p_mask, reviews, r_mask)
    other_review, _ = similarity_channels(products, p_mask, [x.flip(1) for x in reviews], r_mask)
    assert not torch.allclose(features, pooling(other_product, cells))
    assert not torch.allclose(features, pooling(other_review, cells))


def test_mcr_pools_with_the_reference_sizes():
    """config/lazada/*.json of the reference: text 2 kernel sizes x 4 filters x top-16 over 9 channels, images
    4 x 8 x top-8 over 1 channel; each pooled block layer-normalised."""
    model = tiny_model("mcr")
    assert [conv.kernel_size for conv in model.text_kmp.convs] == [(1, 1), (2, 2)]
    assert [conv.kernel_size for conv in model.image_kmp.convs] == [(1, 1), (2, 2), (3, 3), (4, 4)]
    assert {conv.in_channels for conv in model.text_kmp.convs} == {9}
    assert {conv.out_channels for conv in model.image_kmp.convs} == {8}
    rng = np.random.default_rng(3)
    features = model.features(collate([ranking(rng, 3, tokens=6)], max_tokens=32, max_regions=32,
                                      feature_dim=FEATURES))
    assert features["text_match"].shape == (3, 128) and features["image_match"].shape == (3, 256)
    assert torch.allclose(features["image_match"].mean(dim=1), torch.zeros(3), atol=1e-5)  # LayerNorm


def test_mcr_product_aware_features_follow_the_product_they_attend_to():
    """MCR's product-aware features, read where the scorer reads them: the intra-modal ones move with the product
    text (text) and image (image), the inter-modal ones with the product image (image -> review text) and text
    (text -> review image), each only with its own product side. An attention that cancels itself (the masked mean
    of G R over the product, = sum(R) / |Lp| whatever the product says) fails: it ignores the product's content,
    while the other perspectives of MCR would still let the score move."""
    rng = np.random.default_rng(11)
    original = ranking(rng, 3, tokens=6, regions=3)
    original.product = item(rng, 6, 3)
    for review in original.reviews:
        review.regions = rng.standard_normal((2, FEATURES)).astype(np.float32)
    model = tiny_model("mcr")

    def features(lists: RankingList) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return model.features(collate([lists], max_tokens=32, max_regions=32, feature_dim=FEATURES))

    base = features(original)
    text = features(changed_product(original, rng, text=True, image=False))  # same lengths, other content
    image = features(changed_product(original, rng, text=False, image=True))
    moves = {name: (not torch.allclose(base[name], text[name], atol=1e-6),
                    not torch.allclose(base[name], image[name], atol=1e-6))
             for name in ("text_aware", "image_aware", "image_to_text", "text_to_image")}
    assert moves == {"text_aware": (True, False), "image_aware": (False, True),
                     "image_to_text": (False, True), "text_to_image": (True, False)}


def test_sse_exchanges_embeddings_between_samples_of_the_same_label():
    """Stochastic shared embeddings (Abavisani et al. 2020): a row takes the vector of another sample of its label
    that has the modality, never its own and never one of another label; a row with no such partner keeps its own."""
    x = torch.arange(6, dtype=torch.float32)[:, None].repeat(1, 3)  # row i holds the value i
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    present = torch.tensor([True, True, True, True, False, True])
    torch.manual_seed(0)
    shared = share_embeddings(x, present, labels, probability=1.0)[:, 0].tolist()
    assert shared[0] == 1 and shared[1] == 0  # label 0: each other's
    assert shared[2] == 3 and shared[3] == 2  # label 1: row 4 has no vector to give
    assert shared[4] == 4 and shared[5] == 5  # absent stays absent; the only row of label 2 keeps its own
    assert torch.equal(share_embeddings(x, present, labels, probability=0.0), x)


def sse_batch(rng: np.random.Generator, labels: list[int]):
    """One product with text and image, and one review per label, each with text and image."""
    original = ranking(rng, len(labels), tokens=6, regions=3)
    original.product = item(rng, 6, 3)
    original.labels = labels
    for review in original.reviews:
        review.regions = rng.standard_normal((2, FEATURES)).astype(np.float32)
    return collate([original], max_tokens=32, max_regions=32, feature_dim=FEATURES)


def test_sse_cross_forward_exchanges_reviews_of_the_same_label_in_training(monkeypatch):
    """In training, with the exchange made certain, reviews 0 and 1 (label 0, each other's only partner) swap both
    embeddings, so each gets the other's evaluation score; review 2 (label 1, alone) keeps its own. An exchange
    across labels, or none, or one of the product, fails; in evaluation nothing is exchanged."""
    import mrhp.models.baselines.sse_cross as sse

    model = tiny_model("sse-cross")  # dropout 0: training and evaluation differ by the exchange alone
    batch = sse_batch(np.random.default_rng(4), [0, 0, 1])
    with torch.no_grad():
        evaluated = model.eval()(batch).row_scores
        monkeypatch.setattr(sse, "SHARE_PROBABILITY", 1.0)
        assert torch.equal(model.eval()(batch).row_scores, evaluated)  # evaluation never exchanges
        trained = model.train()(batch).row_scores
    assert not torch.isclose(evaluated[0], evaluated[1])
    assert torch.allclose(trained, evaluated[[1, 0, 2]], atol=1e-6)


def test_sse_cross_forward_gates_each_modality_by_the_other():
    """What the scorer reads (`[t'_p, v'_p, t'_r, v'_r, ...]`): the review's gated text vector t'_r changes when
    only the review's image changes, and its gated image vector v'_r when only its text changes; a model whose
    gates read their own modality (or no gates) keeps t'_r with the image changed. A review without an image gets
    v'_r = 0 and its text still passes, gated by the absent image."""
    model = tiny_model("sse-cross").eval()
    d = model.dim
    seen = []
    model.scorer.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    rng = np.random.default_rng(9)
    batch = sse_batch(rng, [0, 1])

    def scorer_input(**changes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        changed = dataclasses.replace(batch, **changes)
        with torch.no_grad():
            model(changed)
        z = seen.pop()
        return z[:, 2 * d:3 * d], z[:, 3 * d:4 * d]  # t'_r, v'_r: [N, d] each

    t_r, v_r = scorer_input()
    other_tokens = batch.review_tokens.clone()
    other_tokens[batch.review_token_mask] = torch.from_numpy(
        rng.integers(2, VOCAB, size=int(batch.review_token_mask.sum())))
    _, v_text = scorer_input(review_tokens=other_tokens)
    t_image, _ = scorer_input(review_regions=batch.review_regions + 1.0)
    assert not torch.allclose(t_r, t_image, atol=1e-6)  # the image gates the text
    assert not torch.allclose(v_r, v_text, atol=1e-6)  # the text gates the image
    t_none, v_none = scorer_input(review_region_mask=torch.zeros_like(batch.review_region_mask))
    assert v_none.eq(0).all() and not t_none.eq(0).all() and not torch.allclose(t_none, t_r, atol=1e-6)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_checkpoint_round_trip(name, tmp_path):
    rng = np.random.default_rng(5)
    lists = [ranking(rng, 4), ranking(rng, 2, group=1)]
    model = tiny_model(name)
    config = Config(model=tiny_config(name))
    save_checkpoint(tmp_path / "model.safetensors", Checkpoint(model, config, tiny_inputs(), Vocabulary(TOKENS), 1))
    loaded = load_checkpoint(tmp_path / "model.safetensors")
    assert type(loaded.model) is type(model) and loaded.config.model.name == name
    assert torch.equal(scores_of(model, lists), scores_of(loaded.model, lists))


def test_eg_cnn_reads_the_spelling_of_unknown_words():
    """Two reviews of the same token ids (all "<unk>") but different words score differently: the character path
    reads each word as written, not the vocabulary's "<unk>" entry."""
    model = tiny_model("eg-cnn")
    product = Item(np.array([2, 3]), np.zeros((0, FEATURES), dtype=np.float32))

    def score(words: list[str]) -> float:
        review = Item(np.full(len(words), UNK_ID), np.zeros((0, FEATURES), dtype=np.float32), chars=spell(words))
        return float(scores_of(model, [RankingList(product, [review], [0], [0], 0)])[0])

    assert score(["bokeh", "lenses"]) != score(["zzz", "qq"])
    assert score(["bokeh", "lenses"]) == score(["bokeh", "lenses"])


def test_prepared_splits_keep_the_spelling_of_unknown_words(tmp_path):
    """`prepare` stores the words that became <unk>; a split gives their code points next to the vocabulary's."""
    write_lines(tmp_path / "products.jsonl", [{"product_id": "p", "text": "a pot", "split": split}
                                               for split in ("train",)] +
                [{"product_id": f"q{i}", "text": "a pot", "split": s} for i, s in enumerate(("dev", "test"))])
    reviews = [{"review_id": f"r{i}", "product_id": pid, "text": text, "label": i % 2}
               for i, (pid, text) in enumerate([("p", "good pot"), ("p", "good lid"), ("q0", "good zebra"),
                                                ("q0", "pot"), ("q1", "good"), ("q1", "lid pot")])]
    write_lines(tmp_path / "reviews.jsonl", reviews)
    assert main(["prepare", "--format", "jsonl", "--products", str(tmp_path / "products.jsonl"), "--reviews",
                 str(tmp_path / "reviews.jsonl"), "--min-count", "2", "--out", str(tmp_path / "prepared")]) == 0
    dataset = PreparedDataset.open(tmp_path / "prepared")
    dev = dataset.split("dev")
    j = dev.review_ids.index("r2")  # "good zebra": "zebra" is not in the vocabulary
    assert dev.review_tokens(j)[1] == UNK_ID
    assert np.array_equal(dev.review_chars(j), spell(["good", "zebra"]))
    train = dataset.split("train")
    k = train.review_ids.index("r1")  # "lid" occurs once in train: <unk> too
    assert train.review_tokens(k)[1] == UNK_ID and np.array_equal(train.review_chars(k), spell(["good", "lid"]))


def test_model_name_is_validated():
    assert load_config(sets=["model.name=mcr"]).model.name == "mcr"
    with pytest.raises(MrhpError, match="model.name must be one of"):
        load_config(sets=["model.name=bert"])


@pytest.mark.parametrize("name", ["mcr", "eg-cnn"])
def test_train_evaluate_predict_through_the_command_line(name, tmp_path, capsys):
    spec = SyntheticSpec(products=(8, 3, 3), reviews_per_product=(3, 5), num_topics=3, feature_dim=FEATURES)
    run, data = tmp_path / "run", str(prepare_tiny_dataset(tmp_path, spec))
    assert main(["train", "--model", name, "--data", data, "--out", str(run), "--set", "train.epochs=1",
                 *TINY_TRAIN_ARGS]) == 0
    log = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert "loss_ranking" in log and "loss_contrastive" not in log
    checkpoint = load_checkpoint(run / "best.safetensors")
    assert checkpoint.config.model.name == name
    assert main(["evaluate", "--checkpoint", str(run / "best.safetensors"), "--data", data,
                 "--per-product", str(run / "test_per_product.jsonl"), "--no-progress"]) == 0
    assert len((run / "test_per_product.jsonl").read_text().splitlines()) == 3
    np.save(tmp_path / "r.npy", np.ones((2, FEATURES), dtype=np.float32))
    request = {"product_id": "p1", "text": "a product", "images": [],
               "reviews": [{"review_id": "a", "text": "great", "images": ["r.npy"]}, {"review_id": "b", "text": ""}]}
    (tmp_path / "in.jsonl").write_text(json.dumps(request) + "\n")
    assert main(["predict", "--checkpoint", str(run / "best.safetensors"), "--input", str(tmp_path / "in.jsonl"),
                 "--output", str(tmp_path / "out.jsonl"), "--no-progress"]) == 0
    ranked = json.loads((tmp_path / "out.jsonl").read_text())
    assert sorted(review["rank"] for review in ranked["reviews"]) == [1, 2]
    capsys.readouterr()


# ---- comparison of per-product metric files ----------------------------------------------------------------------

PRODUCTS = ["p1", "p2", "p3", "p4"]


def write_run(path: Path, maps: list[float], split: str = "test", products: list[str] = PRODUCTS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for product, value in zip(products, maps):
            out.write(json.dumps({"product_id": product, "split": split, "map": value, "ndcg@3": value / 2,
                                  "ndcg@5": value / 4}) + "\n")
    return path


def test_compare_means_sds_and_paired_test(tmp_path):
    a = [write_run(tmp_path / "a-seed0" / "test_per_product.jsonl", [0.2, 0.4, 0.6, 0.8]),
         write_run(tmp_path / "a-seed1" / "test_per_product.jsonl", [0.4, 0.4, 0.6, 1.0])]
    b = [write_run(tmp_path / "b.jsonl", [0.1, 0.5, 0.2, 0.6])]
    assert system_name(a[0]) == "a" and system_name(a[0].parent) == "a" and system_name(b[0]) == "b"
    runs = {"a": [read_per_product(p) for p in a], "b": [read_per_product(p) for p in b]}
    result = compare_systems(runs, reference="b")  # bare files have no config, so no seed: products-t
    row_a = result.rows["a"]
    # Seed means of MAP: 0.5 and 0.6 -> mean 55.0, sample sd 7.07 (x100).
    assert row_a.seeds == 2 and row_a.mean["map"] == pytest.approx(55.0)
    assert row_a.sd["map"] == pytest.approx(100 * np.std([0.5, 0.6], ddof=1))
    averaged = np.array([0.3, 0.4, 0.6, 0.9])  # per-product mean over a's seeds
    expected = stats.ttest_rel(averaged, [0.1, 0.5, 0.2, 0.6]).pvalue
    assert result.test == "products-t" and result.family == 3
    assert row_a.p_raw["map"] == pytest.approx(expected)
    assert row_a.p_raw["ndcg@5"] == pytest.approx(expected)  # a constant scale changes no t statistic
    # Holm over the table's 3 equal p-values: each is multiplied by 3 (then 2 and 1, kept monotone).
    assert row_a.p_value == pytest.approx({metric: min(1.0, 3 * expected) for metric in row_a.p_value})
    assert result.rows["b"].p_value == {} and np.isnan(result.rows["b"].sd["map"])
    table = format_comparison(result)
    assert "55.00 ± 7.07" in table and "reference" in table and f"{min(1.0, 3 * expected):.3g}" in table
    assert "products-t test" in table and "Holm-adjusted over the 3 p-values" in table


def test_compare_refuses_mismatched_runs(tmp_path):
    good = read_per_product(write_run(tmp_path / "a.jsonl", [0.1, 0.2, 0.3, 0.4]))
    other_split = read_per_product(write_run(tmp_path / "b.jsonl", [0.1, 0.2, 0.3, 0.4], split="dev"))
    fewer = read_per_product(write_run(tmp_path / "c.jsonl", [0.1, 0.2, 0.3], products=PRODUCTS[:3]))
    with pytest.raises(MrhpError, match="split 'dev'"):
        compare_systems({"a": [good], "b": [other_split]}, reference="a", test="products-t")
    with pytest.raises(MrhpError, match="p4"):
        compare_systems({"a": [good], "c": [fewer]}, reference="a", test="products-t")
    with pytest.raises(MrhpError, match="unknown reference"):
        compare_systems({"a": [good]}, reference="z", test="products-t")
    (tmp_path / "bad.jsonl").write_text('{"product_id": "p1", "split": "test", "map": 0.5}\n')
    with pytest.raises(MrhpError, match=r"bad.jsonl, line 1.*ndcg@3"):
        read_per_product(tmp_path / "bad.jsonl")


def test_compare_command(tmp_path, capsys):
    write_run(tmp_path / "runs" / "mcr-seed0" / "test_per_product.jsonl", [0.2, 0.4, 0.6, 0.8])
    write_run(tmp_path / "runs" / "mcr-seed1" / "test_per_product.jsonl", [0.3, 0.4, 0.5, 0.8])
    write_run(tmp_path / "runs" / "mrhp-seed0" / "test_per_product.jsonl", [0.5, 0.6, 0.6, 0.9])
    runs = sorted(str(p) for p in (tmp_path / "runs").iterdir())
    assert main(["compare", *runs, "--reference", "mcr", "--test", "products-randomization"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("split test"):]
    assert "products-randomization test" in table and "against mcr" in table
    mcr_row = next(line for line in table.splitlines() if line.startswith("mcr "))
    assert mcr_row.split()[1] == "2" and "(reference)" in mcr_row  # two seeds grouped under one system
    assert main(["compare", *runs, "--reference", "nope"]) == 2
    assert "mrhp compare: error: unknown reference" in capsys.readouterr().err
