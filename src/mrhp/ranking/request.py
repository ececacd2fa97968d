"""A ranking request, and its one parser (`RequestReader`, behind `mrhp.ranking.ranker.Ranker.parse`).

A request is one product and the reviews to rank: a line of a `predict` input file, the body of `POST /v1/rank`,
or the arguments of `Ranker.rank`::

    {"product_id": "p1", "text": "...", "images": [IMAGE, ...],
     "reviews": [{"review_id": "r1", "text": "...", "images": [IMAGE, ...]}, ...]}

`product_id` is optional (a non-empty string or an integer); the product text is `text`, or `name` and/or
`description` joined by a space; each review has a `review_id` (a non-empty string or an integer, unique in the
request), a `text` (may be empty) and optionally its star `rating` (a finite number; read by models with
`model.side_features`, unknown when absent), its `time` (an integer, seconds since 1970 UTC) and whether it is a
`verified` purchase (true/false), both optional and read by models with `model.extra_side_features` (the side
features of `mrhp.data.side`, computed over the request's reviews as `mrhp prepare` computes them over a
product's reviews); `images` is optional everywhere; `"explain": true` (optional) asks
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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mrhp.data.batching import Item, RankingList
from mrhp.data.jsonl import image_file_kind, load_npy_regions, not_a_feature_file
from mrhp.data.records import (
    ItemFields,
    RawReview,
    RawSplit,
    cap_regions,
    not_unicode,
    unique_ids,
)
from mrhp.data.side import stored_side_features
from mrhp.data.text import spell, tokenize
from mrhp.errors import DataError
from mrhp.models.checkpoint import Checkpoint
from mrhp.models.registry import explains, reads_images
from mrhp.ranking.encoders import ImageFiles, TextStates

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
    """What one request may hold (None = no limit), and how strictly it is read; the service sets them, `predict`
    and the Python API do not."""

    max_reviews: int | None = None
    max_text_chars: int | None = None
    known_fields_only: bool = False  # refuse fields the format does not have (else they are ignored)
    null_is_absent: bool = False  # a JSON null stands for an absent field (else it is a value of the wrong type)
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


def _shown(value: object) -> str:
    """A bad value as JSON would show it, cut short for messages."""
    return json.dumps(value, default=repr)[:60]


PRODUCT_FIELDS = frozenset({"product_id", "text", "name", "description", "images", "reviews", "explain"})
REVIEW_FIELDS = frozenset({"review_id", "text", "rating", "time", "verified", "images"})
IMAGE_FIELDS = frozenset({"regions", "data"})


class RequestFields(ItemFields):
    """The product (`loc` = `()`) or one review (`("reviews", k)`) of a request, read by the shared product and
    review fields of `mrhp.data.records.ItemFields`, as the JSON-lines files are: errors are `RequestError`s
    naming the field's path, and texts obey the request's limits."""

    __slots__ = ("limits", "loc")

    def __init__(self, values: Mapping[str, object], loc: Loc, where: str | None, limits: RequestLimits) -> None:
        super().__init__(values, where, null_is_absent=limits.null_is_absent)
        self.loc = loc
        self.limits = limits

    @property
    def place(self) -> str:
        return field_name(self.loc)

    def error(self, message: str, name: str, reason: str | None = None) -> RequestError:  # type: ignore[override]
        return RequestError((*self.loc, name), message, self.file)

    def only(self, known: frozenset[str]) -> None:
        """Refuse a field not in `known` when the limits say so (the service: a misspelt field is an error)."""
        if self.limits.known_fields_only:
            for name in self.values:
                if (problem := not_unicode(name)) is not None:
                    raise RequestError(self.loc, f"a field name {problem}", self.file)
                if name not in known:
                    raise self.error(f"unknown field (expected one of {', '.join(sorted(known))})", str(name))

    def string(self, name: str, *, required: bool = True, nullable: bool = False) -> str | None:
        value = super().string(name, required=required, nullable=nullable)
        limit = self.limits.max_text_chars
        if value is not None and limit is not None and len(value) > limit:
            raise self.error(f"text of {len(value)} characters exceeds the limit of {limit}", name)
        return value

    def rating(self) -> float:
        """The review's star rating, NaN when absent or null."""
        value = self.get("rating")
        if value is None:
            return float("nan")
        try:
            number = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
        except OverflowError:  # an integer beyond float range
            number = math.nan
        if not math.isfinite(number):
            raise self.error(f"expected a finite number, got {_shown(value)}", "rating")
        return number

    def time(self) -> int | None:
        """The review's time in seconds since 1970 (UTC), None when absent or null."""
        value = self.get("time")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise self.error(f"expected seconds since 1970 (an integer >= 0), got {_shown(value)}", "time")
        return value

    def verified(self) -> bool | None:
        """Whether the review is a verified purchase, None when absent or null."""
        value = self.get("verified")
        if value is not None and not isinstance(value, bool):
            raise self.error(f"expected true or false, got {_shown(value)}", "verified")
        return value

    def explain(self, explains: bool, model_name: str) -> bool:
        value = self.values.get("explain", False)
        if not isinstance(value, bool):
            raise self.error(f"expected true or false, got {_shown(value)}", "explain")
        if value and not explains:
            raise self.error(f"model '{model_name}' does not support explanations: only the paper's model (mrhp) "
                             "does", "explain")
        return value


class RequestReader:
    """Reads one request (the module docstring) as the input of `checkpoint`'s model. Built once per loaded model
    (`mrhp.ranking.ranker.Ranker`): what the model does with images and explanations comes from its registry entry,
    `text_states` and `image_files` turn texts and image files into its inputs."""

    def __init__(self, checkpoint: Checkpoint, *, text_states: TextStates, image_files: ImageFiles) -> None:
        self.checkpoint = checkpoint
        self.text_states = text_states
        self.image_files = image_files
        self.uses_images = reads_images(checkpoint.config.model, checkpoint.inputs)
        self.explains = explains(checkpoint.config.model)
        self.feature_dim = checkpoint.inputs.image_dim

    def read(self, request: object, *, where: str | None = None, base_dir: Path | None = None,
             limits: RequestLimits = RequestLimits()) -> RankingRequest:
        """One request as the model's input. `where` names it in errors; image paths are read relative to
        `base_dir`, and refused when it is None."""
        if not isinstance(request, Mapping):
            raise RequestError((), f"expected a JSON object, got {type(request).__name__}", where)
        product = RequestFields(request, (), where, limits)
        product.only(PRODUCT_FIELDS)
        product_id = product.id("product_id") if product.has("product_id") else None
        product_text = product.product_text()
        if "reviews" not in request:
            raise product.error("missing required field", "reviews")
        reviews = request["reviews"]
        if not isinstance(reviews, list | tuple):
            raise product.error(f"expected a list of review objects, got {type(reviews).__name__}", "reviews")
        if limits.max_reviews is not None and len(reviews) > limits.max_reviews:
            raise product.error(f"{len(reviews)} reviews exceed the limit of {limits.max_reviews} per request",
                                "reviews")
        explain = product.explain(self.explains, self.checkpoint.config.model.name)
        images = _RequestImages(self, base_dir, where, limits)
        product_regions, _ = images.regions(product)
        review_ids: list[str] = []
        texts: list[str] = []
        regions: list[np.ndarray] = []
        region_images: list[np.ndarray] = []
        ratings: list[float] = []
        side_reviews: list[RawReview] = []
        for review, review_id in unique_ids(self._reviews(reviews, where, limits), "review"):
            review_ids.append(review_id)
            texts.append(review.review_text())
            review_regions, images_of_regions = images.regions(review)
            regions.append(review_regions)
            region_images.append(images_of_regions)
            ratings.append(review.rating())
            side_reviews.append(RawReview(review_id, "request", "", 0, rating=None if np.isnan(ratings[-1])
                                          else ratings[-1], image_refs=("image",) * len(review.images()),
                                          time=review.time(), verified=review.verified()))
        sides = stored_side_features({"request": RawSplit("request", [], side_reviews)})["request"]  # [N, K]
        return self.tokenized(product_id, product_text, product_regions, review_ids, texts, regions, region_images,
                              ratings, explain, list(sides))

    @staticmethod
    def _reviews(reviews: Sequence[object], where: str | None, limits: RequestLimits) -> Iterator[RequestFields]:
        for k, review in enumerate(reviews):
            if not isinstance(review, Mapping):
                raise RequestError(("reviews", k), f"expected a JSON object, got {type(review).__name__}", where)
            fields = RequestFields(review, ("reviews", k), where, limits)
            fields.only(REVIEW_FIELDS)
            yield fields

    def tokenized(self, product_id: str | None, product_text: str, product_regions: np.ndarray,
                  review_ids: list[str], texts: list[str], regions: list[np.ndarray],
                  region_images: list[np.ndarray], ratings: list[float], explain: bool,
                  sides: list[np.ndarray | None] | None = None) -> RankingRequest:
        vocab, max_tokens = self.checkpoint.vocab, self.checkpoint.config.data.max_tokens
        product_states, *review_states = self.text_states.encode_request(product_text, texts)
        product = Item(np.asarray(vocab.encode(product_text), dtype=np.int64), product_regions, product_states)
        sides = sides if sides is not None else [None] * len(texts)
        items = [Item(np.asarray(vocab.encode(text), dtype=np.int64), item_regions, states, rating,
                      spell(tokenize(text)), side)
                 for text, item_regions, states, rating, side in zip(texts, regions, review_states, ratings, sides)]
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


class _RequestImages:
    """The images of one request as region features. A model without an image side ignores them once their form
    is checked; they must still agree with each other in width (`ignored_width`)."""

    def __init__(self, reader: RequestReader, base_dir: Path | None, where: str | None,
                 limits: RequestLimits) -> None:
        self.reader = reader
        self.uses_images = reader.uses_images
        self.feature_dim = reader.feature_dim
        self.base_dir = base_dir
        self.where = where
        self.limits = limits
        self.ignored_width: int | None = None
        self.image_files_read = 0

    def error(self, loc: Loc, reason: str) -> RequestError:
        return RequestError(loc, reason, self.where)

    def regions(self, item: RequestFields) -> tuple[np.ndarray, np.ndarray]:
        """float32 [m, F] of an item's images, its first `max_regions` regions ([0, F] without image; [0, 0]
        when the model reads no images), and the index of the image of each of them, int64 [m]."""
        loc = (*item.loc, "images")
        found = [(k, array) for k, image in enumerate(item.images())
                 if (array := self.image(image, (*loc, k), item.limits)) is not None and len(array)]
        if not self.uses_images or not found:
            return np.zeros((0, self.feature_dim if self.uses_images else 0), dtype=np.float32), np.zeros(0, np.int64)
        max_regions = self.reader.checkpoint.config.data.max_regions
        kept = cap_regions([array for _, array in found], None, max_regions, where=field_name(loc))
        image_of_region = np.concatenate([np.full(len(array), k) for k, array in found])[:max_regions]
        return kept, image_of_region.astype(np.int64)

    def image(self, image: object, loc: Loc, limits: RequestLimits) -> np.ndarray | None:
        """One image's region features; None for an image without regions or one the model ignores."""
        if isinstance(image, Mapping):
            if limits.known_fields_only and (unknown := [name for name in image if name not in IMAGE_FIELDS]):
                raise self.error((*loc, str(unknown[0])), "unknown field (expected regions or data)")
            if ("regions" in image) == ("data" in image):
                raise self.error(loc, "give exactly one of 'regions' or 'data'")
            if "regions" in image:
                return self.inline(image["regions"], (*loc, "regions"))
            return self.encoded(image["data"], (*loc, "data"))
        if isinstance(image, str | os.PathLike) and self.base_dir is not None:
            return self.file(Path(self.unicode(image, loc) if isinstance(image, str) else image), loc)
        files = " or a file path" if self.base_dir is not None else ""
        raise self.error(loc, f"expected an image {{'regions': ...}} or {{'data': ...}}{files}, got {_shown(image)}")

    def unicode(self, value: str, loc: Loc) -> str:
        if (problem := not_unicode(value)) is not None:
            raise self.error(loc, problem)
        return value

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
        image_files = self.usable_image_files(loc)
        self.image_files_read += 1  # each costs a forward pass of the extractor: refused before that work
        limit = self.limits.max_image_files
        if limit is not None and self.image_files_read > limit:
            raise self.error(loc, f"more than {limit} image files in one request (the limit); send region features "
                                  "or fewer images")
        result = image_files.from_bytes(content, source=field_name(loc))
        if not result.ok:
            raise self.error(loc, f"unusable image: {result.error}")
        return self.checked(result.regions, loc)

    def file(self, path: Path, loc: Loc) -> np.ndarray | None:
        assert self.base_dir is not None
        path = path if path.is_absolute() else self.base_dir / path
        kind = image_file_kind(path)
        if kind == "features":
            try:
                return self.checked(load_npy_regions(path), loc)
            except FileNotFoundError:
                raise self.error(loc, f"feature file not found: {path}") from None
            except (OSError, ValueError, EOFError) as exc:
                raise self.error(loc, f"unreadable feature file {path} ({str(exc)[:200]})") from None
        if kind is None:
            raise self.error(loc, not_a_feature_file(path))
        if not self.uses_images:
            if not path.is_file():
                raise self.error(loc, f"image file not found: {path}")
            return None
        result = self.usable_image_files(loc).from_file(path)
        if not result.ok:
            raise self.error(loc, f"unusable image file {path}: {result.error}")
        return self.checked(result.regions, loc)

    def usable_image_files(self, loc: Loc) -> ImageFiles:
        image_files = self.reader.image_files
        if image_files.unusable is not None:
            raise ImageFilesUnavailable(loc, image_files.unusable, self.where)
        return image_files

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
