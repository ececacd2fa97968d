"""What turns the texts and image files of ranking requests into a model's inputs, shared by every request a
loaded model reads (`mrhp.ranking.request.RequestReader`): a pretrained text encoder's token states
(`TextStates`) and the region features of image files (`ImageFiles`). Both load their network on first use;
the text encoder runs on a thread of its own and the image extractor under a lock, so concurrent requests can
share them."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from mrhp.data.text import tokenize
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
from mrhp.models.registry import reads_images, reads_text_states

if TYPE_CHECKING:
    from mrhp.features.text_weights import StateEncoder

_T = TypeVar("_T")


class TextStates:
    """Token states of request texts for a model with a pretrained text encoder: the encoder (the `text` extra), in
    the variant the checkpoint was trained on (`model.text_encoder_precision`; checkpoints without it: fp32), is
    loaded on first use (or by `load`); a model on the LSTM needs none.

    The encoder runs on one thread of its own, whoever asks: torch's OpenMP runtime (libgomp) gives every thread
    that starts parallel work its own team of `torch.get_num_threads() - 1` helper threads, so a service that
    encoded on whichever of its many request threads was free kept several teams, whose idle helpers spin and
    take the cores from the one team at work. One encoding thread means one team, and the threads setting is
    used as set.

    The states of the last `cache_size` distinct product texts are kept (least recently used dropped first): a shop
    ranks the same product's reviews again and again, and a text's states do not depend on the texts encoded with
    it, so a cached product gives exactly what encoding it again would."""

    def __init__(self, checkpoint: Checkpoint, cache_size: int = 256) -> None:
        model, data = checkpoint.config.model, checkpoint.config.data
        self.name = model.text_encoder if reads_text_states(model) else "lstm"
        self.tuned_layers = model.text_tuned_layers
        self.precision = model.text_encoder_precision
        self.max_tokens = data.max_tokens
        self.cache_size = cache_size
        self.cache_hits = 0
        self._products: OrderedDict[str, np.ndarray] = OrderedDict()  # product text -> float16 [S, H]
        self._encoder: StateEncoder | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._start = threading.Lock()

    @property
    def needed(self) -> bool:
        return self.name != "lstm"

    def load(self) -> None:
        """Load the encoder now and run it once (the first pass of a fresh process allocates and tunes kernels),
        so that the first request is as fast as any other."""
        if self.needed:
            self._run(lambda: self._loaded().encode(["warm-up"]))

    def encode(self, texts: Sequence[str]) -> list[np.ndarray | None]:
        """float32 [S_i, H] per text, or None per text for a model that reads token ids."""
        if not self.needed:
            return [None] * len(texts)
        states = self._run(lambda: self._loaded().encode(list(texts)))
        return [np.asarray(s, dtype=np.float32) for s in states]

    def encode_request(self, product_text: str, review_texts: Sequence[str]) -> list[np.ndarray | None]:
        """float32 [S_i, H] of the product text then of each review text (None each for a model on token ids); the
        product's states come from the cache when its text was encoded lately."""
        if not self.needed:
            return [None] * (1 + len(review_texts))
        states = self._run(lambda: self._encode_request(product_text, list(review_texts)))
        return [np.asarray(s, dtype=np.float32) for s in states]

    def words(self, text: str, max_tokens: int) -> list[str]:
        """The tokens of `text` whose positions a model reads (`mrhp.data.batching.collate`): the vocabulary's
        tokens, or for a pretrained encoder its word pieces with the special tokens (none for an empty text)."""
        tokens = tokenize(text)
        if not self.needed:
            return tokens[:max_tokens]
        if not tokens:
            return []
        return self._run(lambda: self._loaded().pieces([text])[0][:max_tokens])

    def _encode_request(self, product_text: str, review_texts: list[str]) -> list[np.ndarray]:
        """On the encoding thread: the states of the product (cached or encoded) and of the reviews."""
        cached = self._products.get(product_text)
        if cached is not None:
            self._products.move_to_end(product_text)
            self.cache_hits += 1
            return [cached, *self._loaded().encode(review_texts)]
        states = self._loaded().encode([product_text, *review_texts])
        if self.cache_size:
            self._products[product_text] = states[0]
            if len(self._products) > self.cache_size:
                self._products.popitem(last=False)
        return states

    def _run(self, work: Callable[[], _T]) -> _T:
        """`work()` on the encoding thread (started on first use), whose one worker also serialises the requests."""
        with self._start:
            if self._thread is None:
                self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mrhp-text-encoder")
        return self._thread.submit(work).result()

    def _loaded(self) -> StateEncoder:
        """The encoder, loaded on first use (on the encoding thread)."""
        if self._encoder is None:
            from mrhp.features.text_weights import StateEncoder

            self._encoder = StateEncoder(self.name, self.tuned_layers, self.max_tokens, precision=self.precision)
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
        width = checkpoint.inputs.image_dim
        self.unusable: str | None = None
        if not reads_images(checkpoint.config.model, checkpoint.inputs):
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
