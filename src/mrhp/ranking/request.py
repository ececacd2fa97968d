"""A ranking request, and its one parser (`RequestReader`, behind `mrhp.ranking.ranker.Ranker.parse`).

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
  `mrhp.features.images.ImageFeatureExtractor` with the defaults of `mrhp features` (`ImageFiles`);
* where files may be named (`predict`, relative to the input file, and `Ranker.rank`, relative to the current
  folder; never the service): a path to a `.npy` array [n_regions, F] (no pickles) or to an image file.

Each item keeps its first `data.max_regions` regions and each text its first `data.max_tokens` tokens, as in
training. A model with a pretrained text encoder (`model.text_encoder`) reads the token states of each text,
computed here by the same encoder and layer that `mrhp prepare` stored them with (`TextStates`). A model without an image side ignores images once their form is checked (a `.npy` file is read, an
image file is not decoded). Every error is a `RequestError` naming the field, e.g. `reviews[2].images[0]`.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mrhp.data.batching import Item, RankingList
from mrhp.data.jsonl import RAW_IMAGE_SUFFIXES, load_npy_regions
from mrhp.data.records import cap_regions, not_unicode
from mrhp.data.text import spell, tokenize
from mrhp.errors import DataError
from mrhp.features.images import (
    DEFAULT_INPUT_SIZE,
    DEFAULT_MAX_REGIONS,
    FEATURE_DIM,
    INSTALL_HINT,
    ExtractionResult,
    ImageFeatureExtractor,
    images_available,
)
from mrhp.models.checkpoint import Checkpoint
from mrhp.models.registry import reads_images

if TYPE_CHECKING:
    from mrhp.features.text_encoder import StateEncoder

_MISSING = object()

Loc = tuple[str | int, ...]
"""Path of a request field: `("reviews", 2, "images", 0)` is `reviews[2].images[0]`."""


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


@dataclass(frozen=True)
class RequestLimits:
    """What one request may hold (None = no limit); the service sets them, `predict` and the Python API do not."""

    max_reviews: int | None = None
    max_text_chars: int | None = None
    max_image_files: int | None = None  # base64 image files decoded and run through the feature extractor


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
            from mrhp.features.text_encoder import StateEncoder

            self._encoder = StateEncoder(self.name, self.tuned_layers, self.max_tokens)
        return self._encoder


class ImageFiles:
    """Region features of the image files of requests, from the extractor of `mrhp features` (same defaults).

    `unusable` says why image files cannot be used (None when they can): the model reads no images, it reads
    features of another size than the extractor's, or the `images` extra is missing. The extractor is built on
    first use, so text-only requests never pay for loading the network, and runs one image at a time under a lock,
    so concurrent requests can share it. `input_size` and `max_regions` must be those the training images were
    extracted with."""

    ACCEPTED = "accepted: EfficientNet-Lite0 region features (mrhp.features.images)"

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


class RequestReader:
    """Reads one request (the module docstring) as the input of `checkpoint`'s model: `uses_images` and `explains`
    say what the model does with images and explanations, `text_states` and `image_files` turn texts and image
    files into its inputs. `where` names the request in errors; image paths are read relative to `base_dir`, and
    refused when it is None."""

    def __init__(self, checkpoint: Checkpoint, *, uses_images: bool, explains: bool, text_states: TextStates,
                 image_files: ImageFiles, where: str | None, base_dir: Path | None, limits: RequestLimits) -> None:
        self.checkpoint = checkpoint
        self.explains = explains
        self.text_states = text_states
        self.image_files = image_files
        self.where = where
        self.base_dir = base_dir
        self.limits = limits
        self.uses_images = uses_images
        self.feature_dim = checkpoint.config.model.image_dim
        self.ignored_width: int | None = None  # the size the images a model without an image side ignores share
        self.image_files_read = 0

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
        if value and not self.explains:
            raise self.error(("explain",), f"model '{self.checkpoint.config.model.name}' does not support "
                                           "explanations: only the paper's model (mrhp) does")
        return value

    def tokenized(self, product_id: str | None, product_text: str, product_regions: np.ndarray,
                  review_ids: list[str], texts: list[str], regions: list[np.ndarray],
                  region_images: list[np.ndarray], ratings: list[float], explain: bool) -> RankingRequest:
        vocab, max_tokens = self.checkpoint.vocab, self.checkpoint.config.data.max_tokens
        product_states, *review_states = self.text_states.encode([product_text, *texts])
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
        try:  # float() of an integer beyond float's range is an OverflowError
            rating = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
        except OverflowError:
            rating = math.nan
        if not math.isfinite(rating):
            raise self.error((*loc, "rating"), f"expected a finite number, got {_shown(value)}")
        return rating

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
        max_regions = self.checkpoint.config.data.max_regions
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
        try:
            array = np.asarray(rows)
        except (ValueError, TypeError, OverflowError):  # rows whose values are lists themselves: [[1, [2]]]
            raise self.error(loc, "expected region features [n_regions, F]: a list of lists of numbers") from None
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
        self.image_files_read += 1  # each costs a forward pass of the extractor: refused before that work
        limit = self.limits.max_image_files
        if limit is not None and self.image_files_read > limit:
            raise self.error(loc, f"more than {limit} image files in one request (the limit); send region features "
                                  "or fewer images")
        result = self.image_files.from_bytes(content, source=field_name(loc))
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
        result = self.image_files.from_file(path)
        if not result.ok:
            raise self.error(loc, f"unusable image file {path}: {result.error}")
        return self.checked(result.regions, loc)

    def image_files_usable(self, loc: Loc) -> None:
        if self.image_files.unusable is not None:
            raise ImageFilesUnavailable(loc, self.image_files.unusable, self.where)

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
