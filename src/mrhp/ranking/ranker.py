"""Ranking reviews with a trained checkpoint: the `Ranker`.

`Ranker` is what `mrhp predict`, `mrhp serve` and the Python API (`mrhp.load_ranker`) rank with: it parses a
request with the one parser (`mrhp.ranking.request`, which also documents the format) and scores it with the loop that
evaluation and training score prepared splits with, `mrhp.scoring.loop.score_groups`.

Explanations (the paper's model only, `mrhp.models.registry.EXPLAINED`): with `"explain": true` each review of the answer
gains its `"explanation"` (`mrhp.models.explain` has the format, `mrhp.models.paper.Explanation` the maths).

Scores: a review's score depends only on its product and itself. Batches of different composition pad
differently, which changes scores only by float32 rounding (about 1e-7 relative), so the service, `predict` and
`Ranker.rank` agree to that precision, and bit for bit when the product is scored in a forward pass of the same
composition (e.g. a file of one product and a lone request).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mrhp.compute.devices import resolve_device
from mrhp.data.batching import RankingList
from mrhp.errors import MrhpError
from mrhp.models.checkpoint import Checkpoint, load_checkpoint
from mrhp.models.explain import ScoreSplit, explanation_json
from mrhp.models.registry import explains, reads_images
from mrhp.ranking.encoders import ImageFiles, TextStates
from mrhp.ranking.request import (
    RankingRequest,
    RequestError,
    RequestLimits,
    RequestReader,
)
from mrhp.scoring.loop import Group, score_groups

HASH_CHUNK = 1 << 20  # bytes read at a time when hashing files


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes: the identity of a checkpoint for `predict`'s resume and `/v1/model`."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# ---- ranks and answers -----------------------------------------------------------------------------------------


def rank_reviews(scores: np.ndarray) -> np.ndarray:
    """Ranks (1 = best) by descending score; equal scores keep input order."""
    order = np.argsort(-scores, kind="stable")
    ranks = np.empty(len(scores), dtype=np.int64)
    ranks[order] = np.arange(1, len(scores) + 1)
    return ranks


@dataclass(frozen=True)
class RankedReviews:
    """The reviews of one product with their scores and ranks, in the order they were given.

    `scores`: float64 [n], higher is more helpful (comparable within one model only); `ranks`: int64 [n],
    1 = most helpful, equal scores keep the given order; `explanations`: one per review when asked for (the
    module docstring)."""

    review_ids: list[str]
    scores: np.ndarray
    ranks: np.ndarray
    explanations: list[dict[str, object]] | None = None

    @classmethod
    def of(cls, review_ids: Sequence[str], scores: np.ndarray,
           explanations: list[dict[str, object]] | None = None) -> RankedReviews:
        return cls(list(review_ids), scores, rank_reviews(scores), explanations)

    def in_rank_order(self) -> list[dict[str, object]]:
        """`[{"review_id", "score", "rank"[, "explanation"]}, ...]` sorted by rank: the answer of `predict` and the
        service."""
        order = np.argsort(self.ranks, kind="stable")
        ranked = [{"review_id": self.review_ids[j], "score": float(self.scores[j]), "rank": int(self.ranks[j])}
                  for j in order]
        if self.explanations is not None:
            for review, j in zip(ranked, order):
                review["explanation"] = self.explanations[j]
        return ranked


# ---- errors ----


class NonFiniteScores(MrhpError):
    """The model computed NaN or infinite scores: they cannot be ranked nor written as JSON."""


# ---- the ranker ------------------------------------------------------------------------------------------------


class Ranker:
    """A trained checkpoint ready to rank the reviews of products.

    Args:
        batch_rows: most review rows per forward pass (default: the checkpoint's `data.eval_batch_rows`): lists
            are packed up to it, and a list with more reviews is scored in pieces of that many.
        image_files: how image files of requests become region features (default: `ImageFiles(checkpoint)`).
        product_cache: product texts whose token states are kept for the next request (`TextStates`).

    Texts are encoded by the checkpoint's own text encoder variant (`model.text_encoder_precision`), the one its
    training data was prepared with, so a model never reads states of another variant.
    """

    def __init__(self, checkpoint: Checkpoint, *, batch_rows: int | None = None,
                 image_files: ImageFiles | None = None, product_cache: int = 256) -> None:
        self.checkpoint = checkpoint
        self.batch_rows = checkpoint.config.data.eval_batch_rows if batch_rows is None else batch_rows
        if self.batch_rows < 1:
            raise MrhpError(f"batch_rows must be >= 1, got {self.batch_rows}")
        self.image_files = image_files if image_files is not None else ImageFiles(checkpoint)
        self.text_states = TextStates(checkpoint, product_cache)
        self.uses_images = reads_images(checkpoint.config.model, checkpoint.inputs)
        self.explains = explains(checkpoint.config.model)
        self.reader = RequestReader(checkpoint, text_states=self.text_states, image_files=self.image_files)

    def parse(self, request: object, *, where: str | None = None, base_dir: Path | None = None,
              limits: RequestLimits = RequestLimits()) -> RankingRequest:
        """One request (see the module docstring) as the model's input; `RequestError` naming the field when it
        is malformed. Image paths are read relative to `base_dir`, and refused when it is None."""
        return self.reader.read(request, where=where, base_dir=base_dir, limits=limits)

    def score(self, lists: Sequence[RankingList]) -> list[np.ndarray]:
        """Scores of every review of every list, as one float64 array [len(list.reviews)] per list."""
        return [scores for scores, _ in self._scored(lists, explain=False)]

    def score_explained(self, lists: Sequence[RankingList]) -> list[tuple[np.ndarray, ScoreSplit]]:
        """`score`, with the exact split of each list's scores (a model of `mrhp.models.registry.EXPLAINED`)."""
        if not self.explains:
            raise MrhpError(f"model '{self.checkpoint.config.model.name}' does not support explanations")
        return self._scored(lists, explain=True)

    def _scored(self, lists: Sequence[RankingList], explain: bool) -> list[tuple[np.ndarray, ScoreSplit | None]]:
        pieces = [(index, np.arange(start, min(start + self.batch_rows, len(ranking.reviews))))
                  for index, ranking in enumerate(lists) for start in range(0, len(ranking.reviews), self.batch_rows)]

        def lists_of(groups: Sequence[Group]) -> list[RankingList]:
            return [_piece(lists[index], rows) for index, rows in groups]

        parts: list[list[np.ndarray]] = [[] for _ in lists]
        splits: list[list[ScoreSplit]] = [[] for _ in lists]
        config = self.checkpoint.config
        for groups, scores, explanation in score_groups(
            self.checkpoint.model, pieces, lists_of, batch_rows=self.batch_rows, data=config.data,
            feature_dim=self.checkpoint.inputs.image_dim, explain=explain,
        ):
            start = 0
            for index, rows in groups:
                parts[index].append(scores[start:start + len(rows)])
                if explanation is not None:
                    splits[index].append(ScoreSplit.of_rows(explanation, slice(start, start + len(rows))))
                start += len(rows)
        if not all(np.isfinite(scores).all() for part in parts for scores in part):
            raise NonFiniteScores(f"{self.checkpoint.source or 'the checkpoint'}: the model computed NaN or infinite "
                                  "scores (its weights are finite: an overflow?); nothing was ranked")
        return [(np.concatenate(part) if part else np.zeros(0), ScoreSplit.joined(split) if split else None)
                for part, split in zip(parts, splits)]

    def ranked(self, request: RankingRequest, scores: np.ndarray, split: ScoreSplit | None = None) -> RankedReviews:
        """The answer to `request` from its scores and, when it asks for explanations, their split."""
        if not request.explain or split is None:
            return RankedReviews.of(request.review_ids, scores)
        max_tokens = self.checkpoint.config.data.max_tokens
        explanations = [
            explanation_json(split, j, self.text_states.words(text, max_tokens), images)
            for j, (text, images) in enumerate(zip(request.review_texts, request.review_region_images))
        ]
        return RankedReviews.of(request.review_ids, scores, explanations)

    def rank(self, product: str | Mapping[str, object], reviews: Sequence[str | Mapping[str, object]], *,
             explain: bool = False) -> RankedReviews:
        """Rank the `reviews` of `product`, as `mrhp predict` and the service do.

        Args:
            product: its text, or `{"text": ...}` (or `"name"`/`"description"`) with optional `"images"` and
                `"product_id"`.
            reviews: texts (their ids are their positions, "0", "1", ...), or `{"review_id": ..., "text": ...}`
                with optional `"images"`.
            explain: add each review's explanation (`RankedReviews.explanations`; the paper's model only).

        Images are as in the module docstring; paths are relative to the current folder. Raises `RequestError`
        naming the field at fault.
        """
        if isinstance(product, str):
            product = {"text": product}
        if not isinstance(product, Mapping):
            raise RequestError((), f"the product must be its text or a dict, got {type(product).__name__}")
        if "reviews" in product:
            raise RequestError(("reviews",), "give the reviews as the second argument of rank(), not in the product")
        if isinstance(reviews, list | tuple):
            reviews = [{"review_id": str(k), "text": review} if isinstance(review, str) else review
                       for k, review in enumerate(reviews)]
        request = {**product, "reviews": reviews, **({"explain": True} if explain else {})}
        parsed = self.parse(request, base_dir=Path())
        if parsed.explain:
            scores, split = self.score_explained([parsed.ranking])[0]
            return self.ranked(parsed, scores, split)
        return self.ranked(parsed, self.score([parsed.ranking])[0])


def _piece(ranking: RankingList, rows: np.ndarray) -> RankingList:
    """The reviews `rows` of a ranking list, with its product."""
    return RankingList(
        product=ranking.product,
        reviews=[ranking.reviews[j] for j in rows],
        labels=[ranking.labels[j] for j in rows],
        review_indices=[ranking.review_indices[j] for j in rows],
        group=ranking.group,
    )


def load_ranker(checkpoint_path: str | os.PathLike[str], *, batch_rows: int | None = None,
                device: str = "auto") -> Ranker:
    """Load a checkpoint (`MrhpError` when it is missing, unreadable or incompatible) as a `Ranker` whose model
    scores on `device` (`mrhp.compute.devices.DEVICE_FORMS`)."""
    checkpoint = load_checkpoint(Path(checkpoint_path))
    checkpoint.model.to(resolve_device(device))
    return Ranker(checkpoint, batch_rows=batch_rows)
