"""Ranking reviews with a trained checkpoint: what `mrhp predict` and `mrhp serve` share.

A request is one product and the reviews to rank (`parse_ranking_request`); `make_ranking` turns it into the model's
input and `score_rankings` scores ranking lists in packed forward passes. A review's score depends only on its
product and itself; batches of different composition pad differently, which changes scores only by float32
rounding (about 1e-7 relative), so the service and `predict` agree to that precision, and bit for bit when the
product is scored in a forward pass of the same composition (e.g. a file of one product and a lone request).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from mrhp.checkpoint import Checkpoint
from mrhp.data.batching import Item, RankingList, collate
from mrhp.data.jsonl import RAW_IMAGE_SUFFIXES, _Fields, load_npy_regions
from mrhp.data.records import cap_regions
from mrhp.errors import DataError
from mrhp.models import reads_images

_HASH_CHUNK = 1 << 20  # bytes read at a time when hashing files
_MISSING = object()


def file_sha256(path: Path, limit: int | None = None) -> str:
    """SHA-256 (hex) of a file's bytes, or of its first `limit` bytes."""
    digest = hashlib.sha256()
    remaining = limit
    with Path(path).open("rb") as handle:
        while remaining is None or remaining > 0:
            chunk = handle.read(_HASH_CHUNK if remaining is None else min(_HASH_CHUNK, remaining))
            if not chunk:
                break
            digest.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
    return digest.hexdigest()


def uses_images(checkpoint: Checkpoint) -> bool:
    """Whether the model reads images; a model that does not ignores any image of a request."""
    return reads_images(checkpoint.config.model)


def make_ranking(
    checkpoint: Checkpoint,
    product_text: str,
    product_regions: np.ndarray,
    reviews: Sequence[tuple[str, np.ndarray]],
    group: int = 0,
) -> RankingList:
    """One product and the reviews to rank, as the model's input.

    Args:
        product_text: the product's text (tokenized here with the checkpoint's vocabulary; the model keeps the
            first `data.max_tokens` tokens).
        product_regions: float32 [m, F] region features of the product's images (m = 0 without image).
        reviews: `(text, regions [m_j, F])` per review, in request order.
        group: an identity of the product (used only by the training loss; any value when scoring).
    """
    if not uses_images(checkpoint):  # a model without an image side takes none, whatever the request holds
        empty = np.zeros((0, 0), dtype=np.float32)
        product_regions, reviews = empty, [(text, empty) for text, _ in reviews]
    vocab = checkpoint.vocab
    return RankingList(
        product=Item(np.asarray(vocab.encode(product_text), dtype=np.int64), product_regions),
        reviews=[Item(np.asarray(vocab.encode(text), dtype=np.int64), regions) for text, regions in reviews],
        labels=[0] * len(reviews),
        review_indices=list(range(len(reviews))),
        group=group,
    )


@torch.no_grad()
def score_rankings(checkpoint: Checkpoint, lists: Sequence[RankingList], batch_rows: int) -> list[np.ndarray]:
    """Scores of every review of every list, as one float64 array [len(list.reviews)] per list.

    Consecutive lists are packed into forward passes of at most `batch_rows` review rows; a list longer than
    that is scored in pieces of `batch_rows` reviews (its product encoded once per piece), which changes nothing
    but float32 rounding since a review's score depends only on its product and itself.
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    data = checkpoint.config.data
    feature_dim = checkpoint.config.model.image_dim
    pieces: list[tuple[int, RankingList]] = []
    for index, ranking in enumerate(lists):
        for start in range(0, len(ranking.reviews), batch_rows):
            stop = start + batch_rows
            pieces.append((index, RankingList(
                product=ranking.product,
                reviews=ranking.reviews[start:stop],
                labels=ranking.labels[start:stop],
                review_indices=ranking.review_indices[start:stop],
                group=ranking.group,
            )))
    parts: list[list[np.ndarray]] = [[] for _ in lists]

    def forward(batch: list[tuple[int, RankingList]]) -> None:
        scores = checkpoint.model(collate([piece for _, piece in batch], data.max_tokens, data.max_regions, feature_dim))
        row_scores = scores.row_scores.double().numpy()
        start = 0
        for index, piece in batch:
            parts[index].append(row_scores[start:start + len(piece.reviews)])
            start += len(piece.reviews)

    batch: list[tuple[int, RankingList]] = []
    rows = 0
    for index, piece in pieces:
        if batch and rows + len(piece.reviews) > batch_rows:
            forward(batch)
            batch, rows = [], 0
        batch.append((index, piece))
        rows += len(piece.reviews)
    if batch:
        forward(batch)
    return [np.concatenate(part) if part else np.zeros(0) for part in parts]


def rank_reviews(scores: np.ndarray) -> np.ndarray:
    """Ranks (1 = best) by descending score; equal scores keep input order."""
    order = np.argsort(-scores, kind="stable")
    ranks = np.empty(len(scores), dtype=np.int64)
    ranks[order] = np.arange(1, len(scores) + 1)
    return ranks


def ranked_reviews(review_ids: Sequence[str], scores: np.ndarray) -> list[dict[str, object]]:
    """`[{"review_id", "score", "rank"}, ...]` sorted by rank: the answer format of `predict` and the service."""
    ranks = rank_reviews(scores)
    reviews = [
        {"review_id": review_id, "score": float(score), "rank": int(rank)}
        for review_id, score, rank in zip(review_ids, scores, ranks)
    ]
    reviews.sort(key=lambda review: review["rank"])
    return reviews


def image_file_loader(checkpoint: Checkpoint) -> Callable[[Path], np.ndarray] | None:
    """Region features of an image file named in a request, with the same extractor and defaults as `mrhp
    features` and the service; None (image files refused with a message) without the `images` extra or when
    the model reads no images. The extractor is built on the first image file, so text-only inputs never pay."""
    from mrhp.images import DEFAULT_INPUT_SIZE, DEFAULT_MAX_REGIONS, FEATURE_DIM, images_available

    if not uses_images(checkpoint) or not images_available():
        return None
    width = checkpoint.config.model.image_dim
    extractor = None

    def load(path: Path) -> np.ndarray:
        nonlocal extractor
        if width != FEATURE_DIM:
            raise ValueError(
                f"the model reads {width}-d region features; the image extractor gives {FEATURE_DIM}-d: "
                "give .npy features of the model's width"
            )
        if extractor is None:
            from mrhp.images import ImageFeatureExtractor

            extractor = ImageFeatureExtractor(DEFAULT_INPUT_SIZE, DEFAULT_MAX_REGIONS, batch_size=1)
        result = extractor.extract_files([path])[0]
        if not result.ok:
            raise ValueError(result.error)
        return result.regions

    return load


def parse_ranking_request(
    obj: dict,
    base_dir: Path,
    *,
    where: str,
    feature_dim: int | None = None,
    max_regions_per_image: int | None = None,
    max_regions_per_item: int | None = 128,
    image_loader: Callable[[Path], np.ndarray] | None = None,
) -> tuple[str, np.ndarray, list[tuple[str, str, np.ndarray]]]:
    """Read one ranking request: a product and the reviews to rank.

    ``obj`` has the form ``{"product_id": ..., "text": ... (or "name"/"description"), "images": [...],
    "reviews": [{"review_id": ..., "text": ..., "images": [...]}, ...]}``; ``product_id`` is optional, images
    are ``.npy`` paths relative to ``base_dir``. Unlike a dataset, a missing or unreadable feature file here is a
    ``DataError`` (there is one request to answer, no rate to tolerate). ``where`` (e.g. ``"input.jsonl line
    3"``) starts every error message.

    Args:
        image_loader: turns an image file (``.jpg``, ``.png``, ...) into region features ``[m, F]``, raising
            ``ValueError(reason)`` for a bad file; without it image files are refused with a message.
        feature_dim: when given, every region array must have this size ``F`` and empty arrays are
            ``[0, feature_dim]``; when None, empty arrays are ``[0, 0]`` and sizes are checked only within the
            request.

    Returns:
        ``(product_text, product_regions float32 [m, F], [(review_id, review_text, regions float32 [m_j, F]),
        ...])`` with the reviews in request order (an empty review list is allowed).
    """
    if not isinstance(obj, dict):
        raise DataError(f"expected a JSON object, got {type(obj).__name__}", file=where)
    dims: dict[str, object] = {"dim": feature_dim}

    def regions(f: _Fields, what: str) -> np.ndarray:
        paths = f.image_paths(base_dir, image_files=image_loader is not None)
        images = []
        for path in paths:
            if image_loader is not None and path.suffix.lower() in RAW_IMAGE_SUFFIXES:
                try:
                    images.append(image_loader(path))
                except ValueError as exc:
                    raise f.error(f"{what}: image file {path}: {exc}", "images") from None
                continue
            try:
                images.append(load_npy_regions(path))
            except FileNotFoundError:
                raise f.error(f"{what}: feature file not found: {path}", "images") from None
            except (OSError, ValueError, EOFError) as exc:
                raise f.error(f"{what}: unreadable feature file {path} ({str(exc)[:200]})", "images") from None
        array = cap_regions(images, max_regions_per_image, max_regions_per_item, where=f"{where}, {what}")
        if not images:
            return np.zeros((0, feature_dim or 0), dtype=np.float32)
        if dims["dim"] is None:
            dims["dim"] = array.shape[1]
        elif array.shape[1] != dims["dim"]:
            raise f.error(f"{what}: region feature size {array.shape[1]}, expected {dims['dim']}", "images")
        if not np.all(np.isfinite(array)):
            raise f.error(f"{what}: region features hold NaN or infinite values", "images")
        return array

    product = _Fields(obj, where, None)
    if product.has("product_id"):
        product.id("product_id")
    product_text = product.product_text()
    product_regions = regions(product, "product")
    raw_reviews = obj.get("reviews", _MISSING)
    if raw_reviews is _MISSING:
        raise product.error("missing required field", "reviews")
    if not isinstance(raw_reviews, list):
        raise product.error(f"expected a list of review objects, got {type(raw_reviews).__name__}", "reviews")
    reviews: list[tuple[str, str, np.ndarray]] = []
    seen: set[str] = set()
    for k, entry in enumerate(raw_reviews):
        if not isinstance(entry, dict):
            raise product.error(f"review {k} is not a JSON object", "reviews")
        f = _Fields(entry, f"{where}, review {k}", None)
        rid = f.id("review_id")
        if rid in seen:
            raise f.error(f"duplicate review id {rid!r}", "review_id")
        seen.add(rid)
        text = f.string("text", required=True)
        assert text is not None
        reviews.append((rid, text, regions(f, f"review {rid}")))
    # Items without images were given [0, 0] before the size was known from a later item: fix their width.
    width = dims["dim"] or 0
    if product_regions.shape[0] == 0:
        product_regions = np.zeros((0, width), dtype=np.float32)
    reviews = [(rid, text, r if r.shape[0] else np.zeros((0, width), dtype=np.float32)) for rid, text, r in reviews]
    return product_text, product_regions, reviews
