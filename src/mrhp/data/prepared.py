"""The prepared dataset: what training and evaluation read.

:func:`mrhp.data.prepare.prepare_dataset` writes the directory below; :class:`PreparedDataset` reads it back with
memory-mapped arrays.

Layout of a prepared dataset directory::

    dataset.json     {"format": "mrhp-prepared", "version": 2, "source": {...}, "relevance_threshold": t,
                      "feature_dim": F (0 = no images), "splits": [...], "counts": {...}, "report": {...}, ...}
    report.txt       the report in readable form (format_report)
    vocab.txt        one token per line (UTF-8), line i = id i; "<pad>" = 0, "<unk>" = 1
    embeddings.npy   float32 [V, E] initial word vectors (only when word vectors were given)
    features/        a feature store (only when some item has image regions)
    {split}/
        product_ids.json, review_ids.json            lists of str, in file order
        product_tokens.npy   int32 flat token ids    product_token_offsets.npy  int64 [P + 1]
        review_tokens.npy    int32 flat token ids    review_token_offsets.npy   int64 [N + 1]
        {kind}_unk_words.txt the words that became "<unk>", one a line, in token order (character-level models
                             read their spelling; older datasets lack it, and then "<unk>" has no characters)
        {kind}_unk_offsets.npy int64 [P + 1] / [N + 1] offsets of each item's words in {kind}_unk_words.txt
        review_product.npy   int64 [N]  index of the review's product within the split
        labels.npy           int64 [N]  helpfulness level (0..4 in the benchmarks)
        product_image.npy    int64 [P]  feature store row, -1 = no image
        review_image.npy     int64 [N]  feature store row, -1 = no image
        review_rating.npy    float32 [N] star rating, NaN = unknown (optional: older datasets lack it)
        review_time.npy      int64 [N] when the review was written, seconds since 1970 (UTC); NO_TIME
                             (-2**63) = unknown (version 2; version 1 datasets lack it: all unknown)
        review_side.npy      float32 [N, K] the side features named in dataset.json "side_features"
                             (mrhp.data.side.STORED_SIDE_FEATURES), NaN = unknown (version 2; version 1: all NaN)
        {kind}_image_refs.json  lists of image URLs kept as references, not features (only when some item has)
        {kind}_text_state.npy   int64 [P] / [N] row of the item's token states in text_states/ (only with a
                                pretrained text encoder)
    text_states/     a feature store of token states [S, H] per item (only with a pretrained text encoder; its
                     name, layer and width are in dataset.json under "text_encoder")

Missing images (an item that should have images but whose feature file is missing or unreadable) are masked
(store row -1, zero regions), counted, listed in the report, and the preparation fails when their rate in any
split and kind (products / reviews) exceeds ``RawDataset.max_missing_image_rate``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mrhp.data.records import KINDS
from mrhp.data.side import NO_TIME, STORED_SIDE_FEATURES
from mrhp.data.store import NO_IMAGE, FeatureStore, load_json, read_meta
from mrhp.data.text import PAD_ID, UNK_ID, Vocabulary, spell
from mrhp.errors import DataError, MrhpError

PREPARED_FORMAT = "mrhp-prepared"
# Version 2 added review_time.npy and review_side.npy; version 1 datasets still open (times and side features
# unknown), so nothing prepared before has to be prepared again.
PREPARED_VERSION = 2
PREPARED_VERSIONS_READ = (1, 2)


def _load_npy(path: Path, *, mmap: bool = False) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read array ({exc})", file=path) from None


def _load_ids(path: Path) -> dict[str, list[str]]:
    """The product and review ids of a split folder."""
    ids = {}
    for kind in KINDS:
        value = load_json(path / f"{kind}_ids.json")
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise DataError("expected a JSON list of strings", file=path / f"{kind}_ids.json")
        ids[kind] = value
    return ids


def _load_tokens(path: Path, kind: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The tokens (memory-mapped) and token offsets (``[size + 1]``) of one kind."""
    tokens = _load_npy(path / f"{kind}_tokens.npy", mmap=True)
    offsets = _load_npy(path / f"{kind}_token_offsets.npy")
    if tokens.ndim != 1 or offsets.shape != (size + 1,) or offsets[0] != 0 or \
            offsets[-1] != tokens.shape[0] or np.any(np.diff(offsets) < 0):
        raise DataError("token offsets do not match the tokens", file=path / f"{kind}_token_offsets.npy")
    return tokens, offsets


def _load_image_rows(path: Path, kind: str, size: int, store: FeatureStore | None) -> np.ndarray:
    """The feature store row of each item of one kind: int64 ``[size]`` (-1 = no image)."""
    rows = _load_npy(path / f"{kind}_image.npy")
    limit = store.num_items if store is not None else 0
    if rows.shape != (size,) or (rows.size and (rows.min() < -1 or rows.max() >= limit)):
        raise DataError("image rows do not match the feature store", file=path / f"{kind}_image.npy")
    return rows.astype(np.int64, copy=False)


def _load_unk_words(path: Path, kind: str, size: int) -> tuple[list[str], np.ndarray] | None:
    """The spelling of the <unk> words of one kind and their offsets (``[size + 1]``); None when the dataset has
    none stored."""
    words_path, offsets_path = path / f"{kind}_unk_words.txt", path / f"{kind}_unk_offsets.npy"
    if not words_path.exists():
        return None
    try:
        words = words_path.read_text(encoding="utf-8").split("\n")[:-1]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the unknown words ({exc})", file=words_path) from None
    offsets = _load_npy(offsets_path)
    if offsets.shape != (size + 1,) or offsets[0] != 0 or offsets[-1] != len(words) or \
            np.any(np.diff(offsets) < 0):
        raise DataError("unknown-word offsets do not match the unknown words", file=offsets_path)
    return words, offsets


def _load_text_rows(path: Path, kind: str, size: int, text_store: FeatureStore) -> np.ndarray:
    """The text state store row of each item of one kind: int64 ``[size]``."""
    rows = _load_npy(path / f"{kind}_text_state.npy")
    if rows.shape != (size,) or (rows.size and (rows.min() < 0 or rows.max() >= text_store.num_items)):
        raise DataError("text state rows do not match the text state store",
                        file=path / f"{kind}_text_state.npy")
    return rows.astype(np.int64, copy=False)


def _load_review_labels(path: Path, num_products: int, num_reviews: int) -> tuple[np.ndarray, np.ndarray]:
    """Each review's product index and label: int64 ``[N]`` each."""
    review_product = _load_npy(path / "review_product.npy").astype(np.int64, copy=False)
    labels = _load_npy(path / "labels.npy").astype(np.int64, copy=False)
    if review_product.shape != (num_reviews,) or (
        num_reviews and (review_product.min() < 0 or review_product.max() >= num_products)
    ):
        raise DataError("review products do not match the products", file=path / "review_product.npy")
    if labels.shape != (num_reviews,) or (num_reviews and labels.min() < 0):
        raise DataError("labels do not match the reviews", file=path / "labels.npy")
    return review_product, labels


def _load_review_extras(path: Path, num_reviews: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each review's rating (float64 ``[N]``), time (int64 ``[N]``) and side features (float32 ``[N, S]``); the
    unknown values of datasets prepared before these were stored."""
    rating_path = path / "review_rating.npy"
    rating = _load_npy(rating_path).astype(np.float64) if rating_path.exists() else np.full(num_reviews, np.nan)
    if rating.shape != (num_reviews,):
        raise DataError("ratings do not match the reviews", file=rating_path)
    time_path = path / "review_time.npy"
    time = (
        _load_npy(time_path).astype(np.int64, copy=False) if time_path.exists()
        else np.full(num_reviews, NO_TIME, dtype=np.int64)
    )
    if time.shape != (num_reviews,):
        raise DataError("review times do not match the reviews", file=time_path)
    side_path = path / "review_side.npy"
    width = len(STORED_SIDE_FEATURES)
    side = (
        _load_npy(side_path).astype(np.float32, copy=False) if side_path.exists()
        else np.full((num_reviews, width), np.nan, dtype=np.float32)
    )
    if side.shape != (num_reviews, width):
        raise DataError(f"side features {side.shape} do not match the reviews ({num_reviews}, "
                        f"{width})", file=side_path)
    return rating, time, side


class PreparedSplit:
    """One split of a prepared dataset (arrays memory-mapped; token ids returned as int64).

    Attributes:
        name: the split name.
        num_products, num_reviews: sizes ``P`` and ``N``.
        product_ids, review_ids: ids as str, in file order.
        review_product: int64 ``[N]``, index of each review's product within the split.
        labels: int64 ``[N]`` helpfulness levels.
        product_image, review_image: int64 ``[P]`` / ``[N]`` feature store rows (-1 = no image).
        product_lengths, review_lengths: int64 ``[P]`` / ``[N]`` token counts (0 for an empty text).
        review_rating: float64 ``[N]`` star ratings, NaN where unknown (all NaN for datasets prepared before
            ratings were stored).
        review_time: int64 ``[N]`` review times in seconds since the epoch (UTC), ``NO_TIME`` where unknown (all
            unknown for version 1 datasets).
        review_side: float32 ``[N, len(STORED_SIDE_FEATURES)]`` stored side features (:mod:`mrhp.data.side`),
            NaN where unknown (all NaN for version 1 datasets).
    """

    def __init__(
        self, path: Path, name: str, store: FeatureStore | None, feature_dim: int,
        text_store: FeatureStore | None = None, spelling: np.ndarray | None = None,
    ) -> None:
        self.path = path
        self.name = name
        self._spelling = spelling
        self._store = store
        self._feature_dim = feature_dim
        self._text_store = text_store
        ids = _load_ids(path)
        self.product_ids: list[str] = ids["product"]
        self.review_ids: list[str] = ids["review"]
        self.num_products = len(self.product_ids)
        self.num_reviews = len(self.review_ids)
        sizes = {"product": self.num_products, "review": self.num_reviews}
        self._tokens: dict[str, np.ndarray] = {}
        self._offsets: dict[str, np.ndarray] = {}
        images: dict[str, np.ndarray] = {}
        for kind in KINDS:
            self._tokens[kind], self._offsets[kind] = _load_tokens(path, kind, sizes[kind])
            images[kind] = _load_image_rows(path, kind, sizes[kind], store)
        self._unk_words: dict[str, list[str]] = {}
        self._unk_offsets: dict[str, np.ndarray] = {}
        for kind in KINDS:
            unknown = _load_unk_words(path, kind, sizes[kind])
            if unknown is not None:
                self._unk_words[kind], self._unk_offsets[kind] = unknown
        self.product_image: np.ndarray = images["product"]
        self._text_rows: dict[str, np.ndarray] = {}
        if text_store is not None:
            for kind in KINDS:
                self._text_rows[kind] = _load_text_rows(path, kind, sizes[kind], text_store)
        self.review_image: np.ndarray = images["review"]
        self.product_lengths: np.ndarray = np.diff(self._offsets["product"])
        self.review_lengths: np.ndarray = np.diff(self._offsets["review"])
        self.review_product, self.labels = _load_review_labels(path, self.num_products, self.num_reviews)
        self.review_rating, self.review_time, self.review_side = _load_review_extras(path, self.num_reviews)
        # Reviews grouped by product, file order kept within a product (stable sort).
        self._by_product = np.argsort(self.review_product, kind="stable")
        self._group_start = np.searchsorted(self.review_product[self._by_product], np.arange(self.num_products + 1))

    def __repr__(self) -> str:
        return f"PreparedSplit({self.name!r}, products={self.num_products}, reviews={self.num_reviews})"

    def product_tokens(self, i: int) -> np.ndarray:
        """Token ids of product ``i``: int64 ``[L]`` (L may be 0)."""
        offsets = self._offsets["product"]
        return np.asarray(self._tokens["product"][offsets[i]:offsets[i + 1]], dtype=np.int64)

    def review_tokens(self, j: int) -> np.ndarray:
        """Token ids of review ``j``: int64 ``[L]`` (L may be 0)."""
        offsets = self._offsets["review"]
        return np.asarray(self._tokens["review"][offsets[j]:offsets[j + 1]], dtype=np.int64)

    def _chars(self, kind: str, i: int, tokens: np.ndarray) -> np.ndarray | None:
        if self._spelling is None:
            return None
        chars = self._spelling[tokens]  # [L, C]
        if kind in self._unk_offsets:
            start, end = self._unk_offsets[kind][i], self._unk_offsets[kind][i + 1]
            unknown = tokens == UNK_ID
            if int(unknown.sum()) != end - start:
                raise DataError(f"{kind} {i}: {int(unknown.sum())} <unk> tokens but {end - start} unknown words",
                                file=self.path / f"{kind}_unk_offsets.npy")
            chars[unknown] = spell(self._unk_words[kind][start:end])
        return chars

    def product_chars(self, i: int) -> np.ndarray | None:
        """Code points of product ``i``'s words (the spelling of words that became ``<unk>`` included): int32
        ``[L, MAX_WORD_CHARS]``; None when the split was opened without the vocabulary's spelling."""
        return self._chars("product", i, self.product_tokens(i))

    def review_chars(self, j: int) -> np.ndarray | None:
        """Code points of review ``j``'s words, as :meth:`product_chars`."""
        return self._chars("review", j, self.review_tokens(j))

    def _regions(self, row: int) -> np.ndarray:
        if self._store is None or row == NO_IMAGE:
            return np.zeros((0, self._feature_dim), dtype=np.float32)
        return self._store.get(int(row))

    def product_regions(self, i: int) -> np.ndarray:
        """Image regions of product ``i``: float32 ``[m, F]``, m = 0 when it has no image."""
        return self._regions(int(self.product_image[i]))

    def review_regions(self, j: int) -> np.ndarray:
        """Image regions of review ``j``: float32 ``[m, F]``, m = 0 when it has no image."""
        return self._regions(int(self.review_image[j]))

    def _states(self, kind: str, i: int) -> np.ndarray | None:
        if self._text_store is None:
            return None
        return self._text_store.get(int(self._text_rows[kind][i]))

    def product_states(self, i: int) -> np.ndarray | None:
        """Pretrained-encoder token states of product ``i``: float32 ``[S, H]``; None without a text encoder."""
        return self._states("product", i)

    def review_states(self, j: int) -> np.ndarray | None:
        """Pretrained-encoder token states of review ``j``: float32 ``[S, H]``; None without a text encoder."""
        return self._states("review", j)

    def reviews_of(self, i: int) -> np.ndarray:
        """Indices (int64) of the reviews of product ``i``, in file order."""
        return self._by_product[self._group_start[i]:self._group_start[i + 1]]

    def image_refs(self, kind: str) -> list[list[str]] | None:
        """Image URLs kept as references (not features) per product or review (``kind``), None when none were."""
        path = self.path / f"{kind}_image_refs.json"
        if not path.exists():
            return None
        refs = load_json(path)
        size = self.num_products if kind == "product" else self.num_reviews
        if not isinstance(refs, list) or len(refs) != size or not all(
                isinstance(item, list) and all(isinstance(url, str) for url in item) for item in refs):
            raise DataError(f"expected a JSON list of {size} lists of URL strings", file=path)
        return refs


class PreparedDataset:
    """A prepared dataset directory, opened with :meth:`PreparedDataset.open`.

    Attributes:
        path: the directory.
        vocab: the vocabulary (built from the train split).
        feature_dim: region feature size ``F``; 0 = the dataset has no images.
        relevance_threshold: a review is relevant iff ``label > relevance_threshold``.
        text_encoder: ``{"name", "layer", "dim", "max_tokens", "precision"}`` of the pretrained text encoder whose
            token states the dataset stores (no ``precision``: written before int8 existed, so fp32), or None (the
            LSTM reads the token ids).
        meta: the content of ``dataset.json`` (including the preparation report under ``"report"``).
        splits: split names in order.
    """

    def __init__(
        self, path: Path, meta: dict, vocab: Vocabulary, store: FeatureStore | None,
        text_store: FeatureStore | None = None,
    ) -> None:
        self.path = path
        self.meta = meta
        self.vocab = vocab
        self.feature_dim = int(meta["feature_dim"])
        self.relevance_threshold = int(meta["relevance_threshold"])
        self.splits: tuple[str, ...] = tuple(meta["splits"])
        self._store = store
        self._text_store = text_store
        self.text_encoder: dict | None = meta.get("text_encoder")
        self._split_cache: dict[str, PreparedSplit] = {}
        # Code points of every vocabulary word; "<unk>" has none (its words' own spelling is stored per split).
        self._spelling = spell(vocab.tokens)
        self._spelling[UNK_ID] = 0

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> PreparedDataset:
        """Open a prepared dataset; ``DataError`` naming the path if it is missing or of another format/version."""
        path = Path(path)
        meta_path = path / "dataset.json"
        meta = read_meta(meta_path, "prepared dataset", PREPARED_FORMAT, PREPARED_VERSIONS_READ)
        if meta["version"] >= 2 and meta.get("side_features") != list(STORED_SIDE_FEATURES):
            raise DataError(f"side features {meta.get('side_features')!r} are not this version's "
                            f"{list(STORED_SIDE_FEATURES)}", file=meta_path, field="side_features")
        for key, kind in (("feature_dim", int), ("relevance_threshold", int), ("splits", list)):
            if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
                raise DataError(f"missing or invalid value {meta.get(key)!r}", file=meta_path, field=key)
        vocab_path = path / "vocab.txt"
        try:
            text = vocab_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read the vocabulary ({exc})", file=vocab_path) from None
        # Split on "\n" only: str.splitlines would also split on characters such as U+2028 inside a token.
        tokens = text.split("\n")
        if tokens and tokens[-1] == "":
            tokens.pop()
        try:
            vocab = Vocabulary(tokens)
        except ValueError as exc:
            raise DataError(f"invalid vocabulary ({exc})", file=vocab_path) from None
        store = None
        if meta["feature_dim"] > 0:
            store = FeatureStore.open(path / "features")
            if store.dim != meta["feature_dim"]:
                raise DataError(f"feature store dim {store.dim} differs from feature_dim {meta['feature_dim']}",
                                file=meta_path, field="feature_dim")
        text_store = None
        if meta.get("text_encoder") is not None:
            encoder = meta["text_encoder"]
            if not isinstance(encoder, dict) or not isinstance(encoder.get("dim"), int):
                raise DataError(f"invalid text encoder entry {encoder!r}", file=meta_path, field="text_encoder")
            text_store = FeatureStore.open(path / "text_states")
            if text_store.dim != encoder["dim"]:
                raise DataError(f"text state store dim {text_store.dim} differs from the text encoder's "
                                f"{encoder['dim']}", file=meta_path, field="text_encoder")
        return cls(path, meta, vocab, store, text_store)

    def __repr__(self) -> str:
        return f"PreparedDataset({str(self.path)!r}, splits={self.splits}, vocab={len(self.vocab)})"

    @property
    def vocab_fingerprint(self) -> str:
        """:meth:`Vocabulary.fingerprint` of the vocabulary (computed, so datasets prepared before it was stored in
        ``dataset.json`` have one too)."""
        return self.vocab.fingerprint()

    def interface(self) -> dict[str, object]:
        """What a model trained on this dataset depends on: the vocabulary, the pretrained text encoder (name,
        layer, width, token cut), the image region width and the word-vector width. Datasets trained on together
        must agree on all of it (:func:`check_same_interface`)."""
        return {
            "vocabulary": f"{self.vocab_fingerprint} ({len(self.vocab)} words)",
            "text encoder": self.text_encoder,
            "image feature width": self.feature_dim,
            "word-vector width": int(self.meta.get("embedding_dim") or 0),
        }

    def embeddings(self) -> np.ndarray | None:
        """Initial word vectors float32 ``[V, E]``, or None when the dataset was prepared without vectors."""
        path = self.path / "embeddings.npy"
        if not path.exists():
            return None
        matrix = _load_npy(path)
        if matrix.ndim != 2 or matrix.shape[0] != len(self.vocab) or matrix.dtype != np.float32:
            raise DataError(f"embeddings shape {matrix.shape} / {matrix.dtype} do not match the vocabulary "
                            f"({len(self.vocab)} tokens, float32)", file=path)
        if np.any(matrix[PAD_ID] != 0):
            raise DataError("the <pad> row of the embeddings is not zero", file=path)
        return matrix

    def split(self, name: str) -> PreparedSplit:
        """The split ``name``; ``DataError`` listing the available splits when there is none of that name."""
        if name not in self.splits:
            raise DataError(f"no split {name!r} (available: {', '.join(self.splits)})", file=self.path)
        if name not in self._split_cache:
            split = PreparedSplit(self.path / name, name, self._store, self.feature_dim, self._text_store,
                                  self._spelling)
            for kind in KINDS:  # an id beyond the vocabulary would index past the embedding table
                tokens = split._tokens[kind]
                if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= len(self.vocab)):
                    raise DataError(f"token ids {int(tokens.min())}..{int(tokens.max())} are outside the vocabulary "
                                    f"of {self.path / 'vocab.txt'} (0..{len(self.vocab) - 1})",
                                    file=split.path / f"{kind}_tokens.npy")
            self._split_cache[name] = split
        return self._split_cache[name]


def check_same_interface(datasets: list[PreparedDataset]) -> None:
    """``MrhpError`` naming both folders and what differs unless every dataset was prepared with the first one's
    vocabulary, text encoder and widths (prepare the others with ``mrhp prepare --vocabulary-from FIRST``)."""
    first = datasets[0]
    expected = first.interface()
    for other in datasets[1:]:
        found = other.interface()
        differ = [f"{key} {expected[key]!r} vs {found[key]!r}" for key in expected if expected[key] != found[key]]
        if differ:
            raise MrhpError(f"{first.path} and {other.path} were prepared differently: {'; '.join(differ)}; one run "
                            f"needs one vocabulary and text encoder: prepare {other.path} with "
                            f"`mrhp prepare ... --vocabulary-from {first.path}`")
