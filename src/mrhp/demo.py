"""The main job, end to end on data the project writes itself: generate a synthetic multimodal dataset in the
official format (`mrhp.synthetic`), prepare it, train the full model and two ablations (without images; without
the contrastive loss), evaluate each once on test, and report a table and one ranked product."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mrhp.checkpoint import load_checkpoint
from mrhp.config import Config, apply_overrides
from mrhp.data.official import read_official
from mrhp.data.prepare import prepare_dataset
from mrhp.data.prepared import PreparedDataset, PreparedSplit
from mrhp.evaluate import evaluate_split, write_per_product
from mrhp.metrics import METRICS
from mrhp.synthetic import SyntheticSpec, write_official_dataset
from mrhp.train import train

log = logging.getLogger(__name__)

CATEGORY = "demo"
# The paper's architecture (D = 5, 32 rows per step) at width 64, with a higher learning rate and a short
# schedule, so that three models train in a few minutes on 2 cores. The demo's inputs are small, so activation
# checkpointing (a memory saving for the paper's sizes) would only cost time here.
DEMO_OVERRIDES = {
    "model": {"hidden_size": 64, "embedding_dim": 64, "feedforward_size": 128, "checkpoint_activations": False},
    "data": {"batch_rows": 32, "max_list_size": 16},
    "train": {"epochs": 8, "lr": 2e-3, "early_stopping_patience": 3, "lr_patience": 2},
}
SYSTEMS = {
    "full model": {},
    "w/o images": {"model": {"use_images": False}},
    "w/o contrastive": {"loss": {"contrastive_weight": 0.0}},
}


@dataclass
class DemoResult:
    system: str
    test: dict[str, float]
    best_epoch: int
    seconds: float


def demo_config() -> Config:
    """The demo's defaults: the paper's settings with `DEMO_OVERRIDES` applied."""
    return apply_overrides(Config(), DEMO_OVERRIDES, "demo")


def run_demo(out_dir: Path, seed: int = 0, base: Config | None = None, progress: bool = True) -> tuple[list[DemoResult], str]:
    """Run the whole demo under `out_dir` with `base` (default `demo_config()`) for every system; returns the
    results and a ranked example product as text."""
    started = time.perf_counter()
    raw_dir = out_dir / "official"
    features = write_official_dataset(raw_dir, CATEGORY, SyntheticSpec(seed=seed))
    raw = read_official(raw_dir, CATEGORY, product_features=features, review_features=features)
    prepared_dir = out_dir / "prepared"
    prepare_dataset(raw, prepared_dir, min_count=1, relevance_threshold=1, overwrite=True)
    log.info("wrote and prepared the demo data in %.1f s", time.perf_counter() - started)
    dataset = PreparedDataset.open(prepared_dir)
    test = dataset.split("test")

    base = base or demo_config()
    results = []
    for system, overrides in SYSTEMS.items():
        began = time.perf_counter()
        config = apply_overrides(base, {**overrides, "train": {"seed": seed}}, system).validate()
        run_dir = out_dir / "runs" / system.replace("/", "").replace(" ", "-")
        log.info("training %s", system)
        best = train(config, prepared_dir, run_dir, progress=progress)
        checkpoint = load_checkpoint(run_dir / "best.safetensors")
        summary, product_ids, values, scores = evaluate_split(
            checkpoint.model, test, checkpoint.config.data, dataset.feature_dim,
            dataset.relevance_threshold, checkpoint.config.train.ties, progress,
        )
        write_per_product(run_dir / "test_per_product.jsonl", product_ids, values, "test")
        np.save(run_dir / "test_scores.npy", scores)
        results.append(DemoResult(system, summary, int(best.get("epoch", 0)), time.perf_counter() - began))
    example = ranked_example(test, dataset.vocab.tokens, np.load(out_dir / "runs" / "full-model" / "test_scores.npy"))
    log.info("demo finished in %.1f s", time.perf_counter() - started)
    return results, example


def ranked_example(split: PreparedSplit, tokens: list[str], scores: np.ndarray, product: int = 0, words: int = 8) -> str:
    """The reviews of one test product in the full model's order, with their true helpfulness levels."""
    reviews = np.asarray(split.reviews_of(product))
    order = reviews[np.argsort(-scores[reviews], kind="stable")]
    product_text = " ".join(tokens[t] for t in split.product_tokens(product)[: 2 * words])
    lines = [
        f"Ranked example: test product {split.product_ids[product]}: {product_text} ... "
        f"({len(split.product_regions(product))} image regions)",
        "  rank, full model's score, true level, review image regions, review text",
    ]
    for rank, review in enumerate(order, start=1):
        text = " ".join(tokens[t] for t in split.review_tokens(review)[:words])
        lines.append(
            f"  {rank:>2}. {scores[review]:+7.3f}  level {int(split.labels[review])}  "
            f"{len(split.review_regions(review)):>2} regions  {text} ..."
        )
    return "\n".join(lines)


def format_table(results: list[DemoResult]) -> str:
    header = f"{'system':<18}" + "".join(f"{name.upper():>9}" for name in METRICS) + f"{'epoch':>7}{'time':>8}"
    lines = [header, "-" * len(header)]
    for result in results:
        lines.append(
            f"{result.system:<18}" + "".join(f"{result.test[name]:>9.2f}" for name in METRICS)
            + f"{result.best_epoch:>7}{result.seconds:>7.0f}s"
        )
    return "\n".join(lines)
