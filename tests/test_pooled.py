"""Several datasets in one run: prepare against another dataset's vocabulary (--vocabulary-from), train on several
sources at once (mixed batches, pooled dev selection, dev per source), evaluate a model on a dataset prepared
against its vocabulary, and the errors when the datasets do not share one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support import TINY_TRAIN_ARGS

from mrhp.cli import main
from mrhp.config import load_config
from mrhp.data.batching import mixed_training_batches, training_batches
from mrhp.data.prepared import PreparedDataset
from mrhp.data.text import UNK_ID
from mrhp.models.checkpoint import load_checkpoint
from mrhp.studies.synthetic import SyntheticSpec, write_official_dataset


def _prepare(root: Path, name: str, seed: int, *extra: str, feature_dim: int = 8) -> Path:
    spec = SyntheticSpec(products=(8, 3, 3), reviews_per_product=(3, 5), num_topics=3, feature_dim=feature_dim,
                         seed=seed)
    features = write_official_dataset(root / f"{name}-official", "tiny", spec)
    status = main(["prepare", "--format", "mrhp", "--data-dir", str(root / f"{name}-official"), "--category", "tiny",
                   "--features", str(features), "--min-count", "1", "--out", str(root / name), *extra])
    assert status == 0
    return root / name


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """A: its own vocabulary; B: other words, prepared against A's; C: other words, its own vocabulary."""
    root = tmp_path_factory.mktemp("pooled")
    a = _prepare(root, "a", 0)
    return {"a": a, "b": _prepare(root, "b", 1, "--vocabulary-from", str(a)), "c": _prepare(root, "c", 1),
            "root": root}


def test_vocabulary_from_shares_the_vocabulary_and_keeps_unknown_spellings(sources):
    a, b, c = (PreparedDataset.open(sources[k]) for k in "abc")
    assert b.vocab.tokens == a.vocab.tokens
    assert b.vocab_fingerprint == a.vocab_fingerprint == json.loads((sources["b"] / "dataset.json").read_text())[
        "vocab_fingerprint"]
    # C holds the same words as B under its own vocabulary: every word of B that A lacks is <unk> in B, and its
    # spelling is kept (a wrong implementation builds B's own vocabulary: no <unk> at all, as in C).
    assert c.vocab_fingerprint != a.vocab_fingerprint
    b_train, c_train = b.split("train"), c.split("train")
    b_ids, c_ids = b_train.review_tokens(0), c_train.review_tokens(0)
    assert len(b_ids) == len(c_ids) and (b_ids == UNK_ID).any() and not (c_ids == UNK_ID).any()
    words = [c.vocab.tokens[i] for i in c_ids]
    expected = [w if w in a.vocab else "<unk>" for w in words]
    assert [a.vocab.tokens[i] for i in b_ids] == expected
    chars = b_train.review_chars(0)
    unknown_word = words[int(np.flatnonzero(b_ids == UNK_ID)[0])]
    first_unknown = chars[int(np.flatnonzero(b_ids == UNK_ID)[0])]
    assert "".join(chr(x) for x in first_unknown if x) == unknown_word[:16]


def test_train_on_two_sources_pools_dev_and_records_them(sources, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--data", str(sources["a"]), "--data", str(sources["b"]), "--out", str(run),
                 "--set", "train.epochs=2", *TINY_TRAIN_ARGS]) == 0
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    for line in lines:
        by_source = line["dev_by_source"]
        assert set(by_source) == {"a", "b"}
        # Pooled = the mean over all dev products of both sources (3 each here), not a mean of other weights.
        products = {k: PreparedDataset.open(sources[k]).split("dev").num_products for k in "ab"}
        expected = sum(by_source[k]["map"] * products[k] for k in "ab") / sum(products.values())
        assert line["dev_map"] == pytest.approx(expected)
    checkpoint = load_checkpoint(run / "best.safetensors")
    fingerprint = PreparedDataset.open(sources["a"]).vocab_fingerprint
    assert [(s["name"], s["vocab_fingerprint"]) for s in checkpoint.state["sources"]] == [
        ("a", fingerprint), ("b", fingerprint)]
    assert json.loads((run / "config.json").read_text())["data"]["paths"] == [str(sources["a"]), str(sources["b"])]
    # The model evaluates on either source (and on any data prepared against its vocabulary).
    assert main(["evaluate", "--checkpoint", str(run / "best.safetensors"), "--data", str(sources["b"]),
                 "--no-progress"]) == 0


def test_data_paths_from_the_config_file(sources, tmp_path):
    config = tmp_path / "pooled.toml"
    config.write_text(f'[data]\npaths = ["{sources["a"]}", "{sources["b"]}"]\nsource_sampling = "balanced"\n')
    assert load_config(config).data.paths == (str(sources["a"]), str(sources["b"]))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run"), "--set", "train.epochs=1",
                 *TINY_TRAIN_ARGS]) == 0
    assert set(json.loads((tmp_path / "run" / "metrics.jsonl").read_text())["dev_by_source"]) == {"a", "b"}
    assert main(["train", "--out", str(tmp_path / "none"), *TINY_TRAIN_ARGS]) == 2


def test_datasets_prepared_differently_are_refused(sources, tmp_path, capsys):
    assert main(["train", "--data", str(sources["a"]), "--data", str(sources["c"]), "--out", str(tmp_path / "r"),
                 *TINY_TRAIN_ARGS]) == 2
    err = capsys.readouterr().err
    assert str(sources["a"]) in err and str(sources["c"]) in err and "vocabulary" in err
    assert "--vocabulary-from" in err and not (tmp_path / "r" / "metrics.jsonl").exists()
    narrow = _prepare(sources["root"], "narrow", 2, "--vocabulary-from", str(sources["a"]), feature_dim=4)
    assert main(["train", "--data", str(sources["a"]), "--data", str(narrow), "--out", str(tmp_path / "r2"),
                 *TINY_TRAIN_ARGS]) == 2
    err = capsys.readouterr().err
    assert "image feature width 8 vs 4" in err and "vocabulary" not in err.split("differently:")[1].split(";")[0]


def test_evaluate_on_another_vocabulary_names_both(sources, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(sources["a"]), "--out", str(run), "--set", "train.epochs=1",
                 *TINY_TRAIN_ARGS]) == 0
    assert main(["evaluate", "--checkpoint", str(run / "best.safetensors"), "--data", str(sources["c"]),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(sources["c"]) in err and "best.safetensors" in err
    assert PreparedDataset.open(sources["c"]).vocab_fingerprint in err
    assert PreparedDataset.open(sources["a"]).vocab_fingerprint in err
    # A new category prepared against the run folder's checkpoint evaluates.
    new = _prepare(sources["root"], "new-category", 3, "--vocabulary-from", str(run))
    assert PreparedDataset.open(new).vocab_fingerprint == PreparedDataset.open(sources["a"]).vocab_fingerprint
    assert main(["evaluate", "--checkpoint", str(run / "best.safetensors"), "--data", str(new), "--no-progress"]) == 0


def test_vocabulary_from_refuses_vectors_and_a_non_dataset(sources, tmp_path, capsys):
    root = sources["root"]
    args = ["prepare", "--format", "mrhp", "--data-dir", str(root / "a-official"), "--category", "tiny",
            "--features", str(root / "a-official" / "features"), "--out", str(tmp_path / "x")]
    assert main([*args, "--vocabulary-from", str(tmp_path)]) == 2
    assert "neither a prepared dataset" in capsys.readouterr().err
    assert main([*args, "--vocabulary-from", str(sources["a"]), "--vectors", str(tmp_path / "v.txt")]) == 2
    assert "give no vectors" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


class _Split:
    """What batching reads of a split: products with the given review counts (reviews numbered in order)."""

    def __init__(self, sizes: list[int]) -> None:
        self.num_products = len(sizes)
        self._starts = np.concatenate([[0], np.cumsum(sizes)])

    def reviews_of(self, product: int) -> np.ndarray:
        return np.arange(self._starts[product], self._starts[product + 1])


def test_source_sampling():
    large, small = _Split([2] * 6), _Split([2] * 2)  # 6 and 2 lists of 2 reviews
    for sampling in ("products", "balanced"):
        one = mixed_training_batches([large], sampling, 4, 16, seed=3, epoch=1)
        assert [[(p, list(r)) for _, p, r in b] for b in one] == [
            [(p, list(r)) for p, r in b] for b in training_batches(large, 4, 16, seed=3, epoch=1)]

    def lists_per_source(sampling: str) -> list[list[int]]:
        batches = mixed_training_batches([large, small], sampling, 4, 16, seed=3, epoch=1)
        drawn = [(s, p) for batch in batches for s, p, _ in batch]
        return [sorted(p for s, p in drawn if s == source) for source in (0, 1)]

    # By product: each list once (6 + 2). Balanced: 8 lists, 4 from each: the small source's two lists twice
    # each, 4 distinct of the large source's 6.
    assert lists_per_source("products") == [[0, 1, 2, 3, 4, 5], [0, 1]]
    large_drawn, small_drawn = lists_per_source("balanced")
    assert small_drawn == [0, 0, 1, 1] and len(large_drawn) == len(set(large_drawn)) == 4
    with pytest.raises(ValueError, match="source sampling"):
        mixed_training_batches([large], "by-size", 4, 16, seed=0, epoch=1)
