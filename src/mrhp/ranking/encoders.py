"""What turns the texts and image files of ranking requests into a model's inputs, shared by every request a
loaded model reads (`mrhp.ranking.request.RequestReader`): a pretrained text encoder's token states
(`TextStates`) and the region features of image files (`ImageFiles`). Both load their network on first use and
run it under a lock, so concurrent requests can share them."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

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
    from mrhp.features.text_encoder import StateEncoder


class TextStates:
    """Token states of request texts for a model with a pretrained text encoder: the encoder (the `text` extra) is
    loaded on first use and runs under a lock, so concurrent requests share it; a model on the LSTM needs none."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        model, data = checkpoint.config.model, checkpoint.config.data
        self.name = model.text_encoder if reads_text_states(model) else "lstm"
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
