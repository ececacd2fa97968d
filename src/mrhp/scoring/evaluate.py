"""Scoring a prepared split and computing MAP / NDCG@3 / NDCG@5 per product (SPEC 5)."""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from mrhp.compute.distributed import ONE_PROCESS, Runtime, combine_scores, shard_lists
from mrhp.config import DataConfig
from mrhp.data.batching import chunk_product_reviews, split_item_lists
from mrhp.data.prepared import PreparedDataset, PreparedSplit
from mrhp.errors import MrhpError
from mrhp.models.checkpoint import Checkpoint
from mrhp.objectives.metrics import METRICS, ranking_metrics, summarize
from mrhp.outputs import write_text_atomic
from mrhp.progress import progress_bar
from mrhp.scoring.loop import score_groups

log = logging.getLogger(__name__)


def score_split(
    model: nn.Module, split: PreparedSplit, data: DataConfig, feature_dim: int, progress: bool = True,
    runtime: Runtime = ONE_PROCESS,
) -> np.ndarray:
    """Score every review of `split`. Returns float64 scores [num_reviews] in split order. Scores depend only on
    the product and the review, so how reviews are grouped into batches changes nothing; under torchrun each rank
    scores its share of the lists (`mrhp.compute.distributed.shard_lists`) and every rank gets all the scores."""
    scores = np.full(split.num_reviews, np.nan)
    groups = shard_lists(chunk_product_reviews(split, data.max_list_size, rng=None), runtime)
    bar = progress_bar(total=sum(len(reviews) for _, reviews in groups), desc=f"scoring {split.name}", unit="review",
                       show=progress, leave=False)
    for batch, row_scores, _ in score_groups(model, groups, partial(split_item_lists, split),
                                          batch_rows=data.eval_batch_rows, data=data, feature_dim=feature_dim):
        rows = np.concatenate([reviews for _, reviews in batch])
        scores[rows] = row_scores
        bar.update(len(rows))
    bar.close()
    scores = combine_scores(scores, runtime, f"split '{split.name}'")
    if np.isnan(scores).any():
        raise NonFiniteScores(f"{int(np.isnan(scores).sum())} reviews of split '{split.name}' got no finite score")
    return scores


def check_fits(checkpoint: Checkpoint, dataset: PreparedDataset) -> None:
    """`MrhpError` unless `dataset` was prepared as the checkpoint's training data was: the same vocabulary (token
    ids mean the same words), the same region feature width and, for a pretrained text encoder, its token states
    (encoder, layer, token cut and width).
    A model scored on another vocabulary gives numbers, but meaningless ones; any dataset prepared against the
    model's vocabulary and encoder (`mrhp prepare --vocabulary-from`), a new category included, fits."""
    where = f"{dataset.path} and the checkpoint {checkpoint.source or ''}".rstrip()
    if checkpoint.vocab.tokens != dataset.vocab.tokens:
        differ = next((i for i, (a, b) in enumerate(zip(checkpoint.vocab.tokens, dataset.vocab.tokens)) if a != b),
                      min(len(checkpoint.vocab), len(dataset.vocab)))
        raise MrhpError(f"{where} have different vocabularies (fingerprints {dataset.vocab_fingerprint} and "
                        f"{checkpoint.vocab.fingerprint()}, {len(dataset.vocab)} and {len(checkpoint.vocab)} words, "
                        f"first difference at id {differ}): prepare the data against the model's vocabulary with "
                        f"`mrhp prepare ... --vocabulary-from {checkpoint.source or 'RUN'}`")
    model, inputs = checkpoint.config.model, checkpoint.inputs
    if inputs.image_dim != dataset.feature_dim:
        raise MrhpError(f"{where}: region features are {dataset.feature_dim}-d in the data, the model takes "
                        f"{inputs.image_dim}")
    if model.text_encoder != "lstm":
        from mrhp.features.text_encoder import check_stored_states

        stored = dataset.text_encoder
        check_stored_states(stored, model.text_encoder, model.text_tuned_layers, checkpoint.config.data.max_tokens,
                            where, precision=model.text_encoder_precision)
        if int(stored["dim"]) != inputs.text_state_dim:
            raise MrhpError(f"{where}: the model reads token states of width {inputs.text_state_dim}; the data "
                            f"holds {stored['dim']}")


class NonFiniteScores(RuntimeError):
    """The model scored some reviews NaN: its weights are finite but its scores overflow (a diverging run)."""


def per_product_metrics(
    split: PreparedSplit, scores: np.ndarray, threshold: int, ties: str
) -> tuple[list[str], dict[str, np.ndarray]]:
    """Metrics of every product that has reviews: (product ids, {metric: values [P]}); every product counts."""
    products = [p for p in range(split.num_products) if len(split.reviews_of(p)) > 0]
    if len(products) < split.num_products:
        log.warning("%s: %d products have no review and are not ranked", split.name, split.num_products - len(products))
    width = max((len(split.reviews_of(p)) for p in products), default=1)
    score_grid = np.zeros((len(products), width))
    label_grid = np.zeros((len(products), width), dtype=np.int64)
    mask = np.zeros((len(products), width), dtype=bool)
    for row, product in enumerate(products):
        reviews = np.asarray(split.reviews_of(product))
        score_grid[row, : len(reviews)] = scores[reviews]
        label_grid[row, : len(reviews)] = split.labels[reviews]
        mask[row, : len(reviews)] = True
    values = ranking_metrics(
        torch.from_numpy(score_grid), torch.from_numpy(label_grid), torch.from_numpy(mask), threshold=threshold, ties=ties
    )
    return [split.product_ids[p] for p in products], {name: values[name].double().numpy() for name in METRICS}


class SplitEvaluation(NamedTuple):
    summary: dict[str, float]  # metric -> mean over products, x100
    product_ids: list[str]
    values: dict[str, np.ndarray]  # metric -> per-product values in [0, 1], in `product_ids` order
    scores: np.ndarray  # float64 [num_reviews], in split order


def evaluate_split(
    model: nn.Module,
    split: PreparedSplit,
    *,
    data: DataConfig,
    feature_dim: int,
    threshold: int,
    ties: str,
    progress: bool = True,
    runtime: Runtime = ONE_PROCESS,
) -> SplitEvaluation:
    """Score a split and compute its metrics.

    Args:
        data: the model's data settings (`max_tokens`, `max_regions`, `max_list_size`, `eval_batch_rows`).
        feature_dim: the dataset's region feature size.
        threshold: a review is relevant iff its label is above it (the dataset's `relevance_threshold`).
        ties: order of equal scores, `"pessimistic"` or `"stable"` (`mrhp.objectives.metrics.TIES`).
        runtime: this process's place under torchrun (`mrhp.compute.distributed`); one process by default.
    """
    scores = score_split(model, split, data, feature_dim, progress, runtime)
    product_ids, values = per_product_metrics(split, scores, threshold, ties)
    return SplitEvaluation(summarize(values), product_ids, values, scores)


def write_per_product(path: Path, product_ids: list[str], values: dict[str, np.ndarray], split: str) -> None:
    """One JSON object per product: product id, split and its metric values in [0, 1]; lines are in split
    order, so two systems evaluated on the same split can be compared pairwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for row, product_id in enumerate(product_ids):
        record = {"product_id": product_id, "split": split}
        record.update({name: float(values[name][row]) for name in METRICS})
        lines.append(json.dumps(record) + "\n")
    write_text_atomic(path, "".join(lines))


def format_metrics(summary: dict[str, float]) -> str:
    return "  ".join(f"{name.upper()} {summary[name]:.2f}" for name in METRICS)
