"""End to end through the command line, in a temporary folder: official-format data written by the synthetic
generator -> prepare -> train -> resume -> evaluate -> predict, plus the user-facing errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support import TINY_TRAIN_ARGS

from mrhp.cli import main
from mrhp.models.checkpoint import load_checkpoint
from mrhp.studies.synthetic import SyntheticSpec


def test_prepare_train_resume_evaluate_predict(prepared: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(prepared), "--out", str(run), "--set", "train.epochs=2", *TINY_TRAIN_ARGS]) == 0
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in log] == [1, 2]
    assert {"loss_ranking", "loss_contrastive", "dev_map", "dev_ndcg@3", "dev_ndcg@5"} <= set(log[0])
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["hidden_size"] == 16 and "image_dim" not in saved["model"]

    checkpoint = load_checkpoint(run / "best.safetensors")
    assert checkpoint.config.model.hidden_size == 16 and len(checkpoint.vocab) == checkpoint.inputs.vocab_size
    assert checkpoint.inputs.image_dim == 8  # the data decided it, not the config

    per_product = tmp_path / "test_products.jsonl"
    status = main(["evaluate", "--checkpoint", str(run / "best.safetensors"), "--data", str(prepared),
                   "--per-product", str(per_product), "--no-progress"])
    assert status == 0
    out = capsys.readouterr().out
    assert "test: MAP" in out and "NDCG@3" in out
    rows = [json.loads(line) for line in per_product.read_text().splitlines()]
    assert len(rows) == 4 and all(0.0 <= row["map"] <= 1.0 for row in rows)

    # Prediction on a request file with inline feature files.
    np.save(tmp_path / "p.npy", np.ones((3, 8), dtype=np.float32))
    np.save(tmp_path / "r.npy", np.ones((2, 8), dtype=np.float32))
    request = {
        "product_id": "p1", "text": "a product", "images": ["p.npy"],
        "reviews": [
            {"review_id": "a", "text": "great product", "images": ["r.npy"]},
            {"review_id": "b", "text": "bad", "images": []},
            {"review_id": "c", "text": ""},
        ],
    }
    (tmp_path / "in.jsonl").write_text(json.dumps(request) + "\n" + json.dumps({**request, "product_id": "p2"}) + "\n")
    assert main(["predict", "--checkpoint", str(run / "best.safetensors"), "--input", str(tmp_path / "in.jsonl"),
                 "--output", str(tmp_path / "out.jsonl"), "--no-progress"]) == 0
    ranked = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["product_id"] for r in ranked] == ["p1", "p2"]
    assert sorted(r["review_id"] for r in ranked[0]["reviews"]) == ["a", "b", "c"]
    assert [r["rank"] for r in ranked[0]["reviews"]] == [1, 2, 3]
    scores = [r["score"] for r in ranked[0]["reviews"]]
    assert scores == sorted(scores, reverse=True)
    assert [r["score"] for r in ranked[1]["reviews"]] == pytest.approx(scores, abs=1e-5)

    # A product with no review gets an empty ranking; bad lines stop with the file and line named.
    (tmp_path / "empty.jsonl").write_text(json.dumps({"product_id": "p3", "text": "x", "reviews": []}) + "\n")
    assert main(["predict", "--checkpoint", str(run / "best.safetensors"), "--input", str(tmp_path / "empty.jsonl"),
                 "--output", str(tmp_path / "empty-out.jsonl"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "empty-out.jsonl").read_text()) == {"product_id": "p3", "reviews": []}
    capsys.readouterr()
    (tmp_path / "bad.jsonl").write_text(json.dumps(request) + "\n{not json\n")
    assert main(["predict", "--checkpoint", str(run / "best.safetensors"), "--input", str(tmp_path / "bad.jsonl"),
                 "--output", str(tmp_path / "out.jsonl"), "--no-progress"]) == 2
    assert "bad.jsonl, line 2: invalid JSON" in capsys.readouterr().err
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 2  # the earlier output is left as it was
    wrong = {**request, "images": ["r.npy"], "reviews": [{"review_id": "x", "text": "t", "images": ["wide.npy"]}]}
    np.save(tmp_path / "wide.npy", np.ones((2, 5), dtype=np.float32))
    (tmp_path / "wrong.jsonl").write_text(json.dumps(wrong) + "\n")
    assert main(["predict", "--checkpoint", str(run / "best.safetensors"), "--input", str(tmp_path / "wrong.jsonl"),
                 "--output", str(tmp_path / "wrong-out.jsonl"), "--no-progress"]) == 2
    assert "wrong.jsonl line 1" in capsys.readouterr().err


def test_errors_are_reported_without_traceback(prepared: Path, tmp_path: Path, capsys):
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert main(["train", "--data", str(prepared), "--out", str(tmp_path / "r"), "--set", "model.nope=1"]) == 2
    assert "model.nope" in capsys.readouterr().err
    assert main(["train", "--data", str(prepared), "--out", str(tmp_path / "r"), "--set", "train.lr=fast"]) == 2
    assert "train.lr" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "missing.safetensors"), "--data", str(prepared)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    assert main(["evaluate", "--checkpoint", str(tmp_path / "junk.safetensors"), "--data", str(prepared)]) == 2
    assert "junk.safetensors" in capsys.readouterr().err


def test_topic_words_are_the_words_the_generator_draws_product_names_from(tmp_path: Path):
    """`topic_words` must be the generator's own lists (benchmarks/explain_demo.py checks explanations with them):
    every product name is three words of one topic, so a list of other words would fail here."""
    from mrhp.studies.synthetic import topic_words, write_official_dataset

    spec = SyntheticSpec(products=(6, 2, 2), num_topics=3, seed=4)
    write_official_dataset(tmp_path, "t", spec)
    topics = [set(words) for words in topic_words(spec)]
    assert len(topics) == 3 and all(len(words) == spec.words_per_topic for words in topics)
    for product in json.loads((tmp_path / "t.prd.train").read_text()):
        assert any(set(product["name"].split()) <= words for words in topics), product["name"]


def test_model_and_device_are_options_of_their_own(capsys):
    # A bad device is refused by the option itself, before any data is read (a --set string would be checked
    # only with the config, and named as train.device).
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data", "nowhere", "--out", "nowhere", "--device", "gpu"])
    assert exit_info.value.code == 2 and "argument --device: expected one of auto, cpu" in capsys.readouterr().err
