"""The main job, end to end on data the project writes itself: generate a synthetic multimodal dataset in the
official format (`mrhp.studies.synthetic`), prepare it, train the full model and two ablations (without images; without
the contrastive loss), evaluate each once on test, and report a table and one ranked product."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from mrhp.config import Config, apply_overrides
from mrhp.data.official import read_official
from mrhp.data.prepare import prepare_dataset
from mrhp.data.prepared import PreparedDataset, PreparedSplit
from mrhp.objectives.metrics import METRICS
from mrhp.studies.experiment import SystemResult, run_system
from mrhp.studies.synthetic import SyntheticSpec, write_official_dataset

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


def demo_config() -> Config:
    """The demo's defaults: the paper's settings with `DEMO_OVERRIDES` applied."""
    return apply_overrides(Config(), DEMO_OVERRIDES, "demo")


def prepare_demo_data(out_dir: Path, seed: int = 0, spec: SyntheticSpec | None = None) -> PreparedDataset:
    """The demo's synthetic dataset from `seed` (and `spec`, default the demo's sizes), written in the official
    format under `out_dir/official` and prepared into `out_dir/prepared` (every word kept, relevance threshold 1
    as for Amazon)."""
    raw_dir = out_dir / "official"
    spec = dataclasses.replace(spec or SyntheticSpec(), seed=seed)
    features = write_official_dataset(raw_dir, CATEGORY, spec)
    raw = read_official(raw_dir, CATEGORY, product_features=features, review_features=features)
    prepare_dataset(raw, out_dir / "prepared", min_count=1, relevance_threshold=1, overwrite=True)
    return PreparedDataset.open(out_dir / "prepared")


def run_demo(
    out_dir: Path, seed: int = 0, base: Config | None = None, progress: bool = True
) -> tuple[list[SystemResult], str]:
    """Run the whole demo under `out_dir` with `base` (default `demo_config()`) for every system; returns the
    results and a ranked example product as text."""
    started = time.perf_counter()
    dataset = prepare_demo_data(out_dir, seed)
    log.info("wrote and prepared the demo data in %.1f s", time.perf_counter() - started)
    base = base or demo_config()
    results = []
    for system, overrides in SYSTEMS.items():
        config = apply_overrides(base, {**overrides, "train": {"seed": seed}}, system).validate()
        results.append(run_system(system, config, dataset, out_dir / "runs", progress=progress))
    full_model = results[0]  # SYSTEMS lists the full model first
    example = ranked_example(dataset.split("test"), dataset.vocab.tokens, full_model.scores)
    log.info("demo finished in %.1f s", time.perf_counter() - started)
    return results, example


def ranked_example(
    split: PreparedSplit, tokens: list[str], scores: np.ndarray, product: int = 0, words: int = 8
) -> str:
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


def format_table(results: list[SystemResult]) -> str:
    header = f"{'system':<18}" + "".join(f"{name.upper():>9}" for name in METRICS) + f"{'epoch':>7}{'time':>8}"
    lines = [header, "-" * len(header)]
    for result in results:
        lines.append(
            f"{result.name:<18}" + "".join(f"{result.test[name]:>9.2f}" for name in METRICS)
            + f"{int(result.best.get('epoch', 0)):>7}{result.seconds:>7.0f}s"
        )
    return "\n".join(lines)
