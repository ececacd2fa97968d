"""Every model of the registry (the paper's and the baselines of SPEC 8): output layout, padding, absent images and
empty texts, a decreasing loss, checkpoints; plus the comparison of per-product metric files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from mrhp.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from mrhp.cli import main
from mrhp.compare import compare_systems, format_comparison, read_per_product, system_name
from mrhp.config import Config, ModelConfig, load_config
from mrhp.data.batching import Item, collate
from mrhp.data.text import Vocabulary
from mrhp.errors import MrhpError
from mrhp.models import MODEL_NAMES, TEXT_ONLY, build_model, initialise_from_data, reads_images
from mrhp.synthetic import SyntheticSpec
from mrhp.train import joint_loss

from conftest import (
    FEATURES,
    TINY_TRAIN_ARGS,
    VOCAB,
    prepare_tiny_dataset,
    ranking,
    scores_of,
    tiny_model_config,
    without_images,
)

TOKENS = ["<pad>", "<unk>"] + [f"w{i}" for i in range(VOCAB - 2)]
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(name: str) -> ModelConfig:
    return tiny_model_config(name=name, interaction_layers=1, feedforward_size=16, checkpoint_activations=False)


def tiny_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(tiny_config(name))
    initialise_from_data(model, None, TOKENS)
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
    assert same == (name in TEXT_ONLY) and reads_images(tiny_config(name)) == (name not in TEXT_ONLY)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_loss_decreases_on_a_tiny_batch(name):
    rng = np.random.default_rng(4)
    batch = collate([ranking(rng, 5), ranking(rng, 5, group=1), ranking(rng, 4, group=2)], 32, 32, FEATURES)
    config = Config(model=tiny_config(name))
    model = tiny_model(name)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss_now() -> float:
        model.eval()
        with torch.no_grad():
            return float(joint_loss(model(batch), batch, config)[0])

    before = loss_now()
    torch.manual_seed(0)
    for _ in range(15):
        model.train()
        loss, parts = joint_loss(model(batch), batch, config)
        assert ("contrastive" in parts) == (name == "mrhp")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss_now() < 0.8 * before


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_checkpoint_round_trip(name, tmp_path):
    rng = np.random.default_rng(5)
    lists = [ranking(rng, 4), ranking(rng, 2, group=1)]
    model = tiny_model(name)
    config = Config(model=tiny_config(name))
    save_checkpoint(tmp_path / "model.safetensors", Checkpoint(model, config, Vocabulary(TOKENS), 1))
    loaded = load_checkpoint(tmp_path / "model.safetensors")
    assert type(loaded.model) is type(model) and loaded.config.model.name == name
    assert torch.equal(scores_of(model, lists), scores_of(loaded.model, lists))


def test_spelling_table_follows_the_vocabulary():
    model = tiny_model("eg-cnn")
    assert model.spelling[2, :3].tolist() == [ord("w") + 1, ord("0") + 1, 0]  # "w0"
    assert model.spelling[0, :5].tolist() == [ord(c) + 1 for c in "<pad>"]


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
    if name == "eg-cnn":  # the spelling table came from the dataset's vocabulary and was saved with the weights
        token = checkpoint.vocab.tokens[2]
        assert checkpoint.model.spelling[2, 0].item() == ord(token[0]) + 1
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
    result = compare_systems(runs, reference="b", test="t")
    row_a = result.rows["a"]
    # Seed means of MAP: 0.5 and 0.6 -> mean 55.0, sample sd 7.07 (x100).
    assert row_a.seeds == 2 and row_a.mean["map"] == pytest.approx(55.0)
    assert row_a.sd["map"] == pytest.approx(100 * np.std([0.5, 0.6], ddof=1))
    averaged = np.array([0.3, 0.4, 0.6, 0.9])  # per-product mean over a's seeds
    expected = stats.ttest_rel(averaged, [0.1, 0.5, 0.2, 0.6]).pvalue
    assert row_a.p_value["map"] == pytest.approx(expected)
    assert row_a.p_value["ndcg@5"] == pytest.approx(expected)  # a constant scale changes no t statistic
    assert result.rows["b"].p_value == {} and np.isnan(result.rows["b"].sd["map"])
    table = format_comparison(result)
    assert "55.00 ± 7.07" in table and "reference" in table and f"{expected:.3g}" in table


def test_compare_refuses_mismatched_runs(tmp_path):
    good = read_per_product(write_run(tmp_path / "a.jsonl", [0.1, 0.2, 0.3, 0.4]))
    other_split = read_per_product(write_run(tmp_path / "b.jsonl", [0.1, 0.2, 0.3, 0.4], split="dev"))
    fewer = read_per_product(write_run(tmp_path / "c.jsonl", [0.1, 0.2, 0.3], products=PRODUCTS[:3]))
    with pytest.raises(MrhpError, match="split 'dev'"):
        compare_systems({"a": [good], "b": [other_split]}, reference="a", test="t")
    with pytest.raises(MrhpError, match="p4"):
        compare_systems({"a": [good], "c": [fewer]}, reference="a", test="t")
    with pytest.raises(MrhpError, match="unknown reference"):
        compare_systems({"a": [good]}, reference="z", test="t")
    (tmp_path / "bad.jsonl").write_text('{"product_id": "p1", "split": "test", "map": 0.5}\n')
    with pytest.raises(MrhpError, match=r"bad.jsonl, line 1.*ndcg@3"):
        read_per_product(tmp_path / "bad.jsonl")


def test_compare_command(tmp_path, capsys):
    write_run(tmp_path / "runs" / "mcr-seed0" / "test_per_product.jsonl", [0.2, 0.4, 0.6, 0.8])
    write_run(tmp_path / "runs" / "mcr-seed1" / "test_per_product.jsonl", [0.3, 0.4, 0.5, 0.8])
    write_run(tmp_path / "runs" / "mrhp-seed0" / "test_per_product.jsonl", [0.5, 0.6, 0.6, 0.9])
    runs = sorted(str(p) for p in (tmp_path / "runs").iterdir())
    assert main(["compare", *runs, "--reference", "mcr", "--test", "randomization"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("split test"):]
    assert "randomization test against mcr" in table
    mcr_row = next(line for line in table.splitlines() if line.startswith("mcr "))
    assert mcr_row.split()[1] == "2" and "(reference)" in mcr_row  # two seeds grouped under one system
    assert main(["compare", *runs, "--reference", "nope"]) == 2
    assert "mrhp compare: error: unknown reference" in capsys.readouterr().err
