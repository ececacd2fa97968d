"""One system of an experiment, end to end: train it with model selection on dev, load its best checkpoint, evaluate
that once on test and write its per-product values (the input of `mrhp compare` and of paired tests).

The demo and the benchmarks that compare systems all go through `run_system`, so every system of every table is
selected, evaluated and written the same way; the test split is read here, after training, and nowhere else.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mrhp.config import Config
from mrhp.data.prepared import PreparedDataset
from mrhp.models.checkpoint import load_checkpoint
from mrhp.scoring.evaluate import (
    check_fits,
    evaluate_split,
    format_metrics,
    write_per_product,
)
from mrhp.studies.compare import per_product_name
from mrhp.training.loop import train

log = logging.getLogger(__name__)

@dataclass
class SystemResult:
    name: str
    run_dir: Path
    test: dict[str, float]  # MAP / NDCG@3 / NDCG@5 on test, x100
    product_ids: list[str]  # the test products, in split order
    values: dict[str, np.ndarray]  # per-product metric values in [0, 1], aligned with product_ids
    scores: np.ndarray  # float64 [test reviews]: the best checkpoint's scores, in split order
    best: dict[str, object]  # training's record of the best dev epoch (epoch, dev metrics, losses, ...)
    seconds: float  # training and test evaluation


def run_folder(out_dir: Path, name: str) -> Path:
    """The run folder of system `name` under `out_dir`: `w/o images` -> `out_dir/wo-images`."""
    return out_dir / name.replace("/", "").replace(" ", "-")


def run_system(
    name: str, config: Config, dataset: PreparedDataset, out_dir: Path, *, progress: bool = True
) -> SystemResult:
    """Train `config` on `dataset` in `run_folder(out_dir, name)`, selecting on dev, then evaluate the best dev
    checkpoint once on test and write its per-product values in that folder, where `mrhp compare` finds them."""
    began = time.perf_counter()
    run_dir = run_folder(out_dir, name)
    log.info("training %s", name)
    best = train(config, dataset.path, run_dir, progress=progress)
    summary, product_ids, values, scores = evaluate_best(run_dir, dataset, "test", progress=progress)
    seconds = time.perf_counter() - began
    log.info("%s: test %s (%.0f s)", name, format_metrics(summary), seconds)
    return SystemResult(name, run_dir, summary, product_ids, values, scores, best, seconds)


def evaluate_best(
    run_dir: Path, dataset: PreparedDataset, split: str, *, progress: bool = True
) -> tuple[dict[str, float], list[str], dict[str, np.ndarray], np.ndarray]:
    """Evaluate a trained run's best dev checkpoint once on `split` and write its per-product values in the run
    folder; returns what `evaluate_split` returns. A benchmark that selects among trained runs on dev calls this
    for `test` on the selected runs only."""
    checkpoint = load_checkpoint(run_dir / "best.safetensors")
    check_fits(checkpoint, dataset)
    summary, product_ids, values, scores = evaluate_split(
        checkpoint.model,
        dataset.split(split),
        data=checkpoint.config.data,
        feature_dim=dataset.feature_dim,
        threshold=dataset.relevance_threshold,
        ties=checkpoint.config.train.ties,
        progress=progress,
    )
    write_per_product(run_dir / per_product_name(split), product_ids, values, split)
    return summary, product_ids, values, scores
