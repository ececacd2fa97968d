"""Ranking new reviews with a trained checkpoint.

Input: JSON lines, one ranking request per line (the format of `mrhp.data.jsonl.parse_ranking_request`)::

    {"product_id": "p1", "text": "...", "images": ["p1.npy"],
     "reviews": [{"review_id": "r1", "text": "...", "images": []}, ...]}

Output: JSON lines in input order, one per product, its reviews sorted by rank (1 = most helpful)::

    {"product_id": "p1", "reviews": [{"review_id": "r1", "score": 1.23, "rank": 1}, ...]}
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mrhp.checkpoint import Checkpoint, load_checkpoint
from mrhp.data.batching import Item, RankingList, collate
from mrhp.data.jsonl import parse_ranking_request
from mrhp.errors import DataError

log = logging.getLogger(__name__)


def _read_requests(path: Path, checkpoint: Checkpoint) -> Iterator[tuple[str | None, list[str], RankingList]]:
    vocab, feature_dim = checkpoint.vocab, checkpoint.config.model.image_dim
    uses_images = checkpoint.config.model.use_images and feature_dim > 0
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                request = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"malformed JSON ({error.msg})", file=path, line=number) from None
            if not isinstance(request, dict):
                raise DataError("expected a JSON object", file=path, line=number)
            product_text, product_regions, reviews = parse_ranking_request(
                request, path.parent, where=where, feature_dim=feature_dim if uses_images else None
            )
            if not uses_images:  # a model without an image side takes none, whatever the request holds
                empty = np.zeros((0, 0), dtype=np.float32)
                product_regions, reviews = empty, [(review_id, text, empty) for review_id, text, _ in reviews]
            ranking = RankingList(
                product=Item(np.asarray(vocab.encode(product_text)), product_regions),
                reviews=[Item(np.asarray(vocab.encode(text)), regions) for _, text, regions in reviews],
                labels=[0] * len(reviews),
                review_indices=list(range(len(reviews))),
                group=number,
            )
            product_id = request.get("product_id")
            yield None if product_id is None else str(product_id), [review_id for review_id, _, _ in reviews], ranking


def rank_reviews(scores: np.ndarray) -> np.ndarray:
    """Ranks (1 = best) by descending score; equal scores keep input order."""
    order = np.argsort(-scores, kind="stable")
    ranks = np.empty(len(scores), dtype=np.int64)
    ranks[order] = np.arange(1, len(scores) + 1)
    return ranks


@torch.no_grad()
def score_lists(checkpoint: Checkpoint, lists: list[RankingList]) -> list[np.ndarray]:
    """Scores of every review of every list, as one array per list."""
    if not any(ranking.reviews for ranking in lists):
        return [np.zeros(0) for _ in lists]
    data = checkpoint.config.data
    feature_dim = checkpoint.config.model.image_dim
    batch = collate(lists, data.max_tokens, data.max_regions, feature_dim)
    scores = checkpoint.model(batch).row_scores.double().numpy()
    bounds = np.cumsum([0] + [len(ranking.reviews) for ranking in lists])
    return [scores[start:stop] for start, stop in zip(bounds[:-1], bounds[1:])]


def predict_file(checkpoint_path: Path, input_path: Path, output_path: Path, progress: bool = True) -> int:
    """Rank the reviews of every product of `input_path`; returns the number of products written."""
    checkpoint = load_checkpoint(checkpoint_path)
    checkpoint.model.eval()
    batch_rows = checkpoint.config.data.eval_batch_rows
    written = 0
    temporary = output_path.with_name(f".{output_path.name}.tmp")
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with temporary.open("w", encoding="utf-8") as out:
        pending: list[tuple[str | None, list[str], RankingList]] = []

        def flush() -> None:
            nonlocal written
            for (product_id, review_ids, _), scores in zip(pending, score_lists(checkpoint, [p[2] for p in pending])):
                ranks = rank_reviews(scores)
                reviews = [
                    {"review_id": review_id, "score": float(score), "rank": int(rank)}
                    for review_id, score, rank in zip(review_ids, scores, ranks)
                ]
                reviews.sort(key=lambda review: review["rank"])
                out.write(json.dumps({"product_id": product_id, "reviews": reviews}) + "\n")
                written += 1
            pending.clear()

        requests = tqdm(_read_requests(input_path, checkpoint), desc="ranking", unit="product", disable=not progress)
        for request in requests:
            pending.append(request)
            if sum(len(p[1]) for p in pending) >= batch_rows:
                flush()
        if pending:
            flush()
    temporary.replace(output_path)
    log.info("ranked the reviews of %d products into %s", written, output_path)
    return written
