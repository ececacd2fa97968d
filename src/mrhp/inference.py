"""Ranking reviews with a trained checkpoint: the one request parser and the one scoring loop.

`Ranker` is what `mrhp predict`, `mrhp serve` and the Python API (`mrhp.load_ranker`) rank with; evaluation and
training score prepared splits with the same loop, `score_groups`.

A request is one product and the reviews to rank: a line of a `predict` input file, the body of `POST /v1/rank`,
or the arguments of `Ranker.rank`::

    {"product_id": "p1", "text": "...", "images": [IMAGE, ...],
     "reviews": [{"review_id": "r1", "text": "...", "images": [IMAGE, ...]}, ...]}

`product_id` is optional (a non-empty string or an integer); the product text is `text`, or `name` and/or
`description` joined by a space; each review has a `review_id` (a non-empty string or an integer, unique in the
request), a `text` (may be empty) and optionally its star `rating` (a finite number; read by models with
`model.side_features`, unknown when absent); `images` is optional everywhere; `"explain": true` (optional) asks
for each review's explanation (below). An IMAGE is one of

* `{"regions": [[...], ...]}`: region features [n_regions, F] inline (a list of lists, or a numpy array in
  Python), F being the model's image feature size;
* `{"data": "<base64>"}`: an image file (JPEG, PNG, ...), turned into region features by
  `mrhp.images.ImageFeatureExtractor` with the defaults of `mrhp features` (`ImageFiles`);
* where files may be named (`predict`, relative to the input file, and `Ranker.rank`, relative to the current
  folder; never the service): a path to a `.npy` array [n_regions, F] (no pickles) or to an image file.

Each item keeps its first `data.max_regions` regions and each text its first `data.max_tokens` tokens, as in
training. A model with a pretrained text encoder (`model.text_encoder`) reads the token states of each text,
computed here by the same encoder and layer that `mrhp prepare` stored them with (`TextStates`). A model without an image side ignores images once their form is checked (a `.npy` file is read, an
image file is not decoded). Every error is a `RequestError` naming the field, e.g. `reviews[2].images[0]`.

Explanations (the paper's model only, `mrhp.models.EXPLAINED`): with `"explain": true` each review of the answer
gains its `"explanation"` (`mrhp.explain` has the format, `mrhp.model.Explanation` the maths).

Scores: a review's score depends only on its product and itself. Batches of different composition pad
differently, which changes scores only by float32 rounding (about 1e-7 relative), so the service, `predict` and
`Ranker.rank` agree to that precision, and bit for bit when the product is scored in a forward pass of the same
composition (e.g. a file of one product and a lone request).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from mrhp.checkpoint import Checkpoint, load_checkpoint
from mrhp.config import DataConfig
from mrhp.data.batching import Item, RankingList, collate, pack_groups
from mrhp.data.jsonl import RAW_IMAGE_SUFFIXES, load_npy_regions
from mrhp.data.records import cap_regions, not_unicode
from mrhp.data.text import spell, tokenize
from mrhp.devices import resolve_device
from mrhp.errors import DataError, MrhpError
from mrhp.images import (
    DEFAULT_INPUT_SIZE,
    DEFAULT_MAX_REGIONS,
    FEATURE_DIM,
    INSTALL_HINT,
    ExtractionResult,
    ImageFeatureExtractor,
    images_available,
)
from mrhp.explain import ScoreSplit, explanation_json
from mrhp.model import Explanation
from mrhp.models import explains, reads_images

if TYPE_CHECKING:
    from mrhp.text_encoder import StateEncoder

HASH_CHUNK = 1 << 20  # bytes read at a time when hashing files
_MISSING = object()

Group = tuple[int, np.ndarray]
"""(index of a product or list, positions of its reviews): the unit `mrhp.data.batching.pack_groups` packs."""

Loc = tuple[str | int, ...]
"""Path of a request field: `("reviews", 2, "images", 0)` is `reviews[2].images[0]`."""


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes: the identity of a checkpoint for `predict`'s resume and `/v1/model`."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# ---- the scoring loop ------------------------------------------------------------------------------------------


@torch.no_grad()
def score_groups(
    model: nn.Module,
    groups: Sequence[Group],
    lists_of: Callable[[Sequence[Group]], list[RankingList]],
    *,
    batch_rows: int,
    data: DataConfig,
    feature_dim: int,
    explain: bool = False,
) -> Iterator[tuple[list[Group], np.ndarray, Explanation | None]]:
    """Score `groups` in order, packed into forward passes of at most `batch_rows` review rows (`pack_groups`; a
    larger group is a pass of its own). `lists_of` turns one pass's groups into ranking lists, so only one pass is
    ever held in memory. Yields each pass's groups with the float64 scores of their reviews, in order, and with
    `explain` (a model of `mrhp.models.EXPLAINED`) the split of those scores, else None. The inputs go to the
    model's device."""
    model.eval()
    device = next(model.parameters()).device
    for batch in pack_groups(groups, batch_rows):
        inputs = collate(lists_of(batch), data.max_tokens, data.max_regions, feature_dim).to(device)
        output = model(inputs, explain=True) if explain else model(inputs)
        yield batch, output.row_scores.double().cpu().numpy(), output.explanation


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


# ---- requests --------------------------------------------------------------------------------------------------


def field_name(loc: Sequence[str | int]) -> str:
    """`("reviews", 0, "text")` -> `"reviews[0].text"`; `()` -> `""`."""
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name


class RequestError(DataError):
    """A request that cannot be ranked. `loc` is the path of the field at fault and `reason` what is wrong with
    it; the message names both, after `where` (e.g. `"input.jsonl line 3"`) when given."""

    def __init__(self, loc: Loc, reason: str, where: str | None = None) -> None:
        super().__init__(reason, file=where, field=field_name(loc) or None)
        self.loc = loc
        self.reason = reason


class ImageFilesUnavailable(RequestError):
    """An image file in a request that this model or installation cannot turn into region features."""


class NonFiniteScores(MrhpError):
    """The model computed NaN or infinite scores: they cannot be ranked nor written as JSON."""


@dataclass(frozen=True)
class RequestLimits:
    """What one request may hold (None = no limit); the service sets them, `predict` and the Python API do not."""

    max_reviews: int | None = None
    max_text_chars: int | None = None


@dataclass
class RankingRequest:
    """A parsed request: the model's input and what an answer needs."""

    product_id: str | None
    review_ids: list[str]
    ranking: RankingList
    product_truncated: bool  # the product text is longer than the model's max_tokens (cut as in training)
    truncated_reviews: list[str]  # ids of the reviews whose text is cut
    review_texts: list[str]  # what explanations name words with
    review_region_images: list[np.ndarray]  # per review, the image of each region it keeps, int64 [m]
    explain: bool = False  # explanations are asked for


class TextStates:
    """Token states of request texts for a model with a pretrained text encoder: the encoder (the `text` extra) is
    loaded on first use and runs under a lock, so concurrent requests share it; a model on the LSTM needs none."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        model, data = checkpoint.config.model, checkpoint.config.data
        self.name = model.text_encoder if model.name == "mrhp" else "lstm"
        self.tuned_layers = model.text_tuned_layers
        self.max_tokens = data.max_tokens
        self._encoder: StateEncoder | None = None
        self._lock = threading.Lock()

    @property
    def needed(self) -> bool:
        return self.name != "lstm"

    def encode(self, texts: Sequence[str]) -> list[np.ndarray | None]:
        """float32 [S_i, H] per text, or None per text for a model that reads token ids."""
        if not self.needed:
            return [None] * len(texts)
        with self._lock:
            states = self._loaded().encode(list(texts))
        return [np.asarray(s, dtype=np.float32) for s in states]

    def words(self, text: str, max_tokens: int) -> list[str]:
        """The tokens of `text` whose positions a model reads (`mrhp.data.batching.collate`): the vocabulary's
        tokens, or for a pretrained encoder its word pieces with the special tokens (none for an empty text)."""
        tokens = tokenize(text)
        if not self.needed:
            return tokens[:max_tokens]
        if not tokens:
            return []
        with self._lock:
            return self._loaded().pieces([text])[0][:max_tokens]

    def _loaded(self) -> StateEncoder:
        """The encoder, loaded on first use (call with the lock held)."""
        if self._encoder is None:
            from mrhp.text_encoder import StateEncoder

            self._encoder = StateEncoder(self.name, self.tuned_layers, self.max_tokens)
        return self._encoder


class ImageFiles:
    """Region features of the image files of requests, from the extractor of `mrhp features` (same defaults).

    `unusable` says why image files cannot be used (None when they can): the model reads no images, it reads
    features of another size than the extractor's, or the `images` extra is missing. The extractor is built on
    first use, so text-only requests never pay for loading the network, and runs one image at a time under a lock,
    so concurrent requests can share it. `input_size` and `max_regions` must be those the training images were
    extracted with."""

    ACCEPTED = "accepted: EfficientNet-Lite0 region features (mrhp.images)"

    def __init__(self, checkpoint: Checkpoint, *, input_size: int = DEFAULT_INPUT_SIZE,
                 max_regions: int = DEFAULT_MAX_REGIONS, threads: int | None = None) -> None:
        width = checkpoint.config.model.image_dim
        self.unusable: str | None = None
        if not reads_images(checkpoint.config.model):
            self.unusable = "the model uses no images"
        elif width != FEATURE_DIM:
            self.unusable = (f"this model takes {width}-d region features and the image feature extractor gives "
                             f"{FEATURE_DIM}-d ones: send region features [n_regions, {width}] in 'regions'")
        elif not images_available():
            self.unusable = f"image files need the optional image feature extractor: {INSTALL_HINT}"
        self.input_size = input_size
        self.max_regions = max_regions
        self.threads = threads
        self._extractor: ImageFeatureExtractor | None = None
        self._lock = threading.Lock()

    @property
    def note(self) -> str:
        """Whether image files are accepted, and if not why, in words."""
        return self.unusable or self.ACCEPTED

    def extractor(self) -> ImageFeatureExtractor:
        with self._lock:
            if self._extractor is None:
                self._extractor = ImageFeatureExtractor(self.input_size, self.max_regions, threads=self.threads,
                                                        batch_size=1)
            return self._extractor

    def from_bytes(self, data: bytes, source: str) -> ExtractionResult:
        extractor = self.extractor()
        with self._lock:
            return extractor.extract_bytes(data, source=source)

    def from_file(self, path: Path) -> ExtractionResult:
        extractor = self.extractor()
        with self._lock:
            return extractor.extract_files([path])[0]


def _shown(value: object) -> str:
    """A bad value as JSON would show it, cut short for messages."""
    return json.dumps(value, default=repr)[:60]


class _RequestReader:
    """Reads one request for `Ranker.parse` (see the module docstring for the format)."""

    def __init__(self, ranker: Ranker, where: str | None, base_dir: Path | None, limits: RequestLimits) -> None:
        self.ranker = ranker
        self.where = where
        self.base_dir = base_dir
        self.limits = limits
        self.uses_images = ranker.uses_images
        self.feature_dim = ranker.checkpoint.config.model.image_dim
        self.ignored_width: int | None = None  # the size the images a model without an image side ignores share

    def error(self, loc: Loc, reason: str) -> RequestError:
        return RequestError(loc, reason, self.where)

    def read(self, request: object) -> RankingRequest:
        if not isinstance(request, Mapping):
            raise self.error((), f"expected a JSON object, got {type(request).__name__}")
        product_id = self.id(request, "product_id", ()) if "product_id" in request else None
        product_text = self.product_text(request)
        reviews = request.get("reviews", _MISSING)
        if reviews is _MISSING:
            raise self.error(("reviews",), "missing required field")
        if not isinstance(reviews, list | tuple):
            raise self.error(("reviews",), f"expected a list of review objects, got {type(reviews).__name__}")
        if self.limits.max_reviews is not None and len(reviews) > self.limits.max_reviews:
            raise self.error(("reviews",), f"{len(reviews)} reviews exceed the limit of {self.limits.max_reviews} "
                                           "per request")
        explain = self.explain(request)
        product_regions, _ = self.regions(request, ())
        review_ids: list[str] = []
        texts: list[str] = []
        regions: list[np.ndarray] = []
        region_images: list[np.ndarray] = []
        ratings: list[float] = []
        seen: set[str] = set()
        for k, review in enumerate(reviews):
            loc = ("reviews", k)
            if not isinstance(review, Mapping):
                raise self.error(loc, f"expected a JSON object, got {type(review).__name__}")
            review_id = self.id(review, "review_id", loc)
            if review_id in seen:
                raise self.error((*loc, "review_id"), f"duplicate review id {review_id!r}")
            seen.add(review_id)
            review_ids.append(review_id)
            texts.append(self.string(review, "text", loc, required=True))
            review_regions, images_of_regions = self.regions(review, loc)
            regions.append(review_regions)
            region_images.append(images_of_regions)
            ratings.append(self.rating(review, loc))
        return self.tokenized(product_id, product_text, product_regions, review_ids, texts, regions, region_images,
                              ratings, explain)

    def explain(self, request: Mapping) -> bool:
        value = request.get("explain", False)
        if not isinstance(value, bool):
            raise self.error(("explain",), f"expected true or false, got {_shown(value)}")
        if value and not self.ranker.explains:
            raise self.error(("explain",), f"model '{self.ranker.checkpoint.config.model.name}' does not support "
                                           "explanations: only the paper's model (mrhp) does")
        return value

    def tokenized(self, product_id: str | None, product_text: str, product_regions: np.ndarray,
                  review_ids: list[str], texts: list[str], regions: list[np.ndarray],
                  region_images: list[np.ndarray], ratings: list[float], explain: bool) -> RankingRequest:
        vocab, max_tokens = self.ranker.checkpoint.vocab, self.ranker.checkpoint.config.data.max_tokens
        product_states, *review_states = self.ranker.text_states.encode([product_text, *texts])
        product = Item(np.asarray(vocab.encode(product_text), dtype=np.int64), product_regions, product_states)
        items = [Item(np.asarray(vocab.encode(text), dtype=np.int64), item_regions, states, rating,
                      spell(tokenize(text)))
                 for text, item_regions, states, rating in zip(texts, regions, review_states, ratings)]
        return RankingRequest(
            product_id=product_id,
            review_ids=review_ids,
            ranking=RankingList(product=product, reviews=items, labels=[0] * len(items),
                                review_indices=list(range(len(items))), group=0),
            product_truncated=len(product.tokens) > max_tokens,
            truncated_reviews=[rid for rid, item in zip(review_ids, items) if len(item.tokens) > max_tokens],
            review_texts=texts,
            review_region_images=region_images,
            explain=explain,
        )

    def id(self, item: Mapping, name: str, loc: Loc) -> str:
        value = item.get(name, _MISSING)
        if value is _MISSING:
            raise self.error((*loc, name), "missing required field")
        if isinstance(value, str) and value.strip():
            return self.unicode(value, (*loc, name))
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        raise self.error((*loc, name), f"expected a non-empty string or an integer, got {_shown(value)}")

    def unicode(self, value: str, loc: Loc) -> str:
        if (problem := not_unicode(value)) is not None:
            raise self.error(loc, problem)
        return value

    def string(self, item: Mapping, name: str, loc: Loc, *, required: bool) -> str | None:
        value = item.get(name, _MISSING)
        if value is _MISSING:
            if required:
                raise self.error((*loc, name), "missing required field")
            return None
        if not isinstance(value, str):
            raise self.error((*loc, name), f"expected a string, got {_shown(value)}")
        if self.limits.max_text_chars is not None and len(value) > self.limits.max_text_chars:
            raise self.error((*loc, name), f"text of {len(value)} characters exceeds the limit of "
                                           f"{self.limits.max_text_chars}")
        return self.unicode(value, (*loc, name))

    def rating(self, item: Mapping, loc: Loc) -> float:
        """The review's star rating, NaN when absent or null."""
        value = item.get("rating")
        if value is None:
            return float("nan")
        if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
            raise self.error((*loc, "rating"), f"expected a finite number, got {_shown(value)}")
        return float(value)

    def product_text(self, request: Mapping) -> str:
        text, name, description = (self.string(request, key, (), required=False)
                                   for key in ("text", "name", "description"))
        if text is not None:
            if name is not None or description is not None:
                raise self.error(("text",), "give either 'text' or 'name'/'description', not both")
            return text
        if name is None and description is None:
            raise self.error(("text",), "missing product text: give 'text' (or 'name' and/or 'description')")
        return " ".join(part for part in (name, description) if part is not None)

    def regions(self, item: Mapping, loc: Loc) -> tuple[np.ndarray, np.ndarray]:
        """float32 [m, F] of an item's images, its first `max_regions` regions ([0, F] without image; [0, 0]
        when the model reads no images), and the index of the image of each of them, int64 [m]."""
        images = item.get("images")
        if images is None:
            images = []
        if not isinstance(images, list | tuple):
            raise self.error((*loc, "images"), f"expected a list of images, got {type(images).__name__}")
        found = [(k, array) for k, image in enumerate(images)
                 if (array := self.image(image, (*loc, "images", k))) is not None and len(array)]
        if not self.uses_images or not found:
            return np.zeros((0, self.feature_dim if self.uses_images else 0), dtype=np.float32), np.zeros(0, np.int64)
        max_regions = self.ranker.checkpoint.config.data.max_regions
        kept = cap_regions([array for _, array in found], None, max_regions, where=field_name((*loc, "images")))
        image_of_region = np.concatenate([np.full(len(array), k) for k, array in found])[:max_regions]
        return kept, image_of_region.astype(np.int64)

    def image(self, image: object, loc: Loc) -> np.ndarray | None:
        """One image's region features; None for an image without regions or one the model ignores."""
        if isinstance(image, Mapping):
            if ("regions" in image) == ("data" in image):
                raise self.error(loc, "give exactly one of 'regions' or 'data'")
            if "regions" in image:
                return self.inline(image["regions"], (*loc, "regions"))
            return self.encoded(image["data"], (*loc, "data"))
        if isinstance(image, str | os.PathLike) and self.base_dir is not None:
            return self.file(Path(self.unicode(image, loc) if isinstance(image, str) else image), loc)
        files = " or a file path" if self.base_dir is not None else ""
        raise self.error(loc, f"expected an image {{'regions': ...}} or {{'data': ...}}{files}, got {_shown(image)}")

    def inline(self, rows: object, loc: Loc) -> np.ndarray | None:
        if not isinstance(rows, np.ndarray):
            if not isinstance(rows, list | tuple) or not all(isinstance(row, list | tuple) for row in rows):
                raise self.error(loc, "expected region features [n_regions, F]: a list of lists of numbers")
            if not rows:
                return None
            if any(len(row) != len(rows[0]) for row in rows):
                raise self.error(loc, "rows of unequal length: expected [n_regions, F]")
        array = np.asarray(rows)
        if array.dtype.kind not in "iuf":
            raise self.error(loc, f"expected numbers, got values of type {array.dtype}")
        return self.checked(array, loc)

    def encoded(self, data: object, loc: Loc) -> np.ndarray | None:
        if not isinstance(data, str):
            raise self.error(loc, f"expected a base64 string, got {_shown(data)}")
        try:
            content = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise self.error(loc, "not valid base64") from None
        if not self.uses_images:
            return None
        self.image_files_usable(loc)
        result = self.ranker.image_files.from_bytes(content, source=field_name(loc))
        if not result.ok:
            raise self.error(loc, f"unusable image: {result.error}")
        return self.checked(result.regions, loc)

    def file(self, path: Path, loc: Loc) -> np.ndarray | None:
        assert self.base_dir is not None
        path = path if path.is_absolute() else self.base_dir / path
        suffix = path.suffix.lower()
        if suffix == ".npy":
            try:
                return self.checked(load_npy_regions(path), loc)
            except FileNotFoundError:
                raise self.error(loc, f"feature file not found: {path}") from None
            except (OSError, ValueError, EOFError) as exc:
                raise self.error(loc, f"unreadable feature file {path} ({str(exc)[:200]})") from None
        if suffix not in RAW_IMAGE_SUFFIXES:
            raise self.error(loc, f"{path} is neither a .npy feature file nor an image file "
                                  f"({', '.join(RAW_IMAGE_SUFFIXES)})")
        if not self.uses_images:
            if not path.is_file():
                raise self.error(loc, f"image file not found: {path}")
            return None
        self.image_files_usable(loc)
        result = self.ranker.image_files.from_file(path)
        if not result.ok:
            raise self.error(loc, f"unusable image file {path}: {result.error}")
        return self.checked(result.regions, loc)

    def image_files_usable(self, loc: Loc) -> None:
        if self.ranker.image_files.unusable is not None:
            raise ImageFilesUnavailable(loc, self.ranker.image_files.unusable, self.where)

    def checked(self, array: np.ndarray, loc: Loc) -> np.ndarray:
        """`array` as float32 [n, F] once its shape agrees with the model (or, for a model without an image side,
        with the request's other images) and its values are finite."""
        if array.ndim != 2:
            raise self.error(loc, f"expected region features [n_regions, F], got shape {list(array.shape)}")
        width = array.shape[1]
        if self.uses_images and width != self.feature_dim:
            raise self.error(loc, f"region feature size {width}, the model takes {self.feature_dim}")
        if not self.uses_images:
            if self.ignored_width is not None and width != self.ignored_width:
                raise self.error(loc, f"region feature size {width}, an earlier image has {self.ignored_width}")
            self.ignored_width = width
        array = np.asarray(array, dtype=np.float32)
        if not np.all(np.isfinite(array)):
            raise self.error(loc, "region features hold NaN or infinite values")
        return array


# ---- the ranker ------------------------------------------------------------------------------------------------


class Ranker:
    """A trained checkpoint ready to rank the reviews of products.

    Args:
        batch_rows: most review rows per forward pass (default: the checkpoint's `data.eval_batch_rows`): lists
            are packed up to it, and a list with more reviews is scored in pieces of that many.
        image_files: how image files of requests become region features (default: `ImageFiles(checkpoint)`).
    """

    def __init__(self, checkpoint: Checkpoint, *, batch_rows: int | None = None,
                 image_files: ImageFiles | None = None) -> None:
        self.checkpoint = checkpoint
        self.batch_rows = checkpoint.config.data.eval_batch_rows if batch_rows is None else batch_rows
        if self.batch_rows < 1:
            raise MrhpError(f"batch_rows must be >= 1, got {self.batch_rows}")
        self.image_files = image_files if image_files is not None else ImageFiles(checkpoint)
        self.text_states = TextStates(checkpoint)
        self.uses_images = reads_images(checkpoint.config.model)
        self.explains = explains(checkpoint.config.model)

    def parse(self, request: object, *, where: str | None = None, base_dir: Path | None = None,
              limits: RequestLimits = RequestLimits()) -> RankingRequest:
        """One request (see the module docstring) as the model's input; `RequestError` naming the field when it
        is malformed. Image paths are read relative to `base_dir`, and refused when it is None."""
        return _RequestReader(self, where, base_dir, limits).read(request)

    def score(self, lists: Sequence[RankingList]) -> list[np.ndarray]:
        """Scores of every review of every list, as one float64 array [len(list.reviews)] per list."""
        return [scores for scores, _ in self._scored(lists, explain=False)]

    def score_explained(self, lists: Sequence[RankingList]) -> list[tuple[np.ndarray, ScoreSplit]]:
        """`score`, with the exact split of each list's scores (a model of `mrhp.models.EXPLAINED`)."""
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
            feature_dim=config.model.image_dim, explain=explain,
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
    scores on `device` (`mrhp.devices.DEVICE_FORMS`)."""
    checkpoint = load_checkpoint(Path(checkpoint_path))
    checkpoint.model.to(resolve_device(device))
    return Ranker(checkpoint, batch_rows=batch_rows)
