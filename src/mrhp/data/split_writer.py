"""Writing one split of a prepared dataset (see :mod:`mrhp.data.prepared` for the layout): its token arrays, its
image rows in the feature store, its labels and its report section. :func:`mrhp.data.prepare.prepare_dataset` calls
it for each split.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from mrhp.data.records import (
    FeatureProblem,
    FeatureSource,
    RawProduct,
    RawReview,
    RawSplit,
    check_missing_rate,
)
from mrhp.data.store import NO_IMAGE, FeatureStoreWriter
from mrhp.data.text import UNK_ID, Vocabulary, tokenize
from mrhp.errors import DataError
from mrhp.progress import progress_bar

# How many missing-image entries the report lists per split (all are counted).
MISSING_LISTED = 20


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


class StoreSink:
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


@dataclass
class _KindTally:
    """What the items of one kind (products or reviews) of a split added up to while they were written."""

    ids: list[str] = field(default_factory=list)
    offsets: list[int] = field(default_factory=lambda: [0])
    # The words that became <unk>, in token order, so character-level models still read their spelling.
    unk_words: list[str] = field(default_factory=list)
    unk_offsets: list[int] = field(default_factory=lambda: [0])
    empty_texts: int = 0
    unk: int = 0
    expected: int = 0
    missing: int = 0
    missing_files: int = 0
    regions: int = 0
    examples: list[tuple[str, FeatureProblem]] = field(default_factory=list)


def write_split(
    split: RawSplit, split_dir: Path, vocab: Vocabulary, sink: StoreSink, max_missing_rate: float,
    relevance_threshold: int,
) -> dict:
    """Write one split's files; returns its report section."""
    missing_listed: list[dict] = []
    images: dict[str, dict] = {}
    text_stats: dict[str, dict] = {}
    for kind, items in (("product", split.products), ("review", split.reviews)):
        text_stats[kind], images[kind] = _write_items(split, split_dir, kind, items, vocab, sink, max_missing_rate,
                                                      missing_listed)
    review_product, labels = _write_reviews_of(split, split_dir)
    return {
        **_list_report(split, review_product, labels, relevance_threshold),
        "text": text_stats,
        "images": images,
        "missing_images_listed": missing_listed,
    }


def _write_items(
    split: RawSplit, split_dir: Path, kind: str, items: Sequence[RawProduct] | Sequence[RawReview],
    vocab: Vocabulary, sink: StoreSink, max_missing_rate: float, missing_listed: list[dict],
) -> tuple[dict, dict]:
    """Write the token arrays, image rows and ids of one kind's items; returns its text and image report sections
    (and adds its missing images to ``missing_listed``)."""
    tally = _KindTally()
    tokens = _ArrayWriter(split_dir / f"{kind}_tokens.npy", "<i4")
    rows = np.full(len(items), NO_IMAGE, dtype=np.int64)
    expected_total = sum(1 for item in items if item.features is not None)
    try:
        for i, item in enumerate(_progress(items, f"{split.name} {kind}s")):
            _add_text(tally, item, vocab, tokens)
            if item.features is None:
                continue
            rows[i] = _add_image(tally, split, kind, item.id, item.features, sink, expected_total, max_missing_rate,
                                 missing_listed)
    finally:
        tokens.close()
    np.save(split_dir / f"{kind}_token_offsets.npy", np.asarray(tally.offsets, dtype=np.int64), allow_pickle=False)
    (split_dir / f"{kind}_unk_words.txt").write_text("".join(w + "\n" for w in tally.unk_words), encoding="utf-8")
    np.save(split_dir / f"{kind}_unk_offsets.npy", np.asarray(tally.unk_offsets, dtype=np.int64), allow_pickle=False)
    np.save(split_dir / f"{kind}_image.npy", rows, allow_pickle=False)
    (split_dir / f"{kind}_ids.json").write_text(json.dumps(tally.ids, ensure_ascii=False), encoding="utf-8")
    refs = [list(item.image_refs) for item in items]
    if any(refs):
        (split_dir / f"{kind}_image_refs.json").write_text(json.dumps(refs, ensure_ascii=False), encoding="utf-8")
    with_images = int(np.count_nonzero(rows >= 0))
    image_report = {
        "with_images": with_images,
        "without_images": len(items) - with_images,
        "should_have_images": tally.expected,
        "missing": tally.missing,
        "missing_files": tally.missing_files,
        "missing_rate": tally.missing / tally.expected if tally.expected else 0.0,
        "regions": tally.regions,
        "with_image_refs_only": sum(1 for r in refs if r),
    }
    total_tokens = tally.offsets[-1]
    text_report = {
        "tokens": total_tokens,
        "empty_texts": tally.empty_texts,
        "unk_rate": tally.unk / total_tokens if total_tokens else 0.0,
    }
    return text_report, image_report


def _add_text(tally: _KindTally, item: RawProduct | RawReview, vocab: Vocabulary, tokens: _ArrayWriter) -> None:
    """Tokenize one item's text and append its tokens (and the spelling of its <unk> words)."""
    tally.ids.append(item.id)
    words = tokenize(item.text)
    encoded = [vocab.id(word) for word in words]
    tokens.append(encoded)
    tally.offsets.append(tally.offsets[-1] + len(encoded))
    tally.unk_words.extend(word for word, token in zip(words, encoded) if token == UNK_ID)
    tally.unk_offsets.append(len(tally.unk_words))
    tally.empty_texts += not encoded
    tally.unk += encoded.count(UNK_ID)


def _add_image(
    tally: _KindTally, split: RawSplit, kind: str, item_id: str, features: FeatureSource, sink: StoreSink,
    expected_total: int, max_missing_rate: float, missing_listed: list[dict],
) -> int:
    """Load one item's image features into the store; returns its store row (``NO_IMAGE`` when missing). A missing
    image is counted and listed; raises once the split's missing rate is certain to be exceeded."""
    tally.expected += 1
    loaded = features.load()
    problems = list(loaded.problems)
    if loaded.regions.shape[0] == 0 and not problems:
        problems.append(FeatureProblem(features.describe(), "the feature file holds no regions"))
    if problems:
        tally.missing += 1
        tally.missing_files += len(problems)
        tally.examples.append((item_id, problems[0]))
        for problem in problems:
            if len(missing_listed) < MISSING_LISTED:
                missing_listed.append({"kind": kind, "id": item_id, "file": problem.file, "reason": problem.reason})
        # Fail as soon as the rate over the whole split is certain to be exceeded, not hours later.
        check_missing_rate(split.name, kind, tally.missing, expected_total, max_missing_rate, tally.examples)
    row = sink.add(loaded.regions, f"{split.name} {kind} {item_id}", features.describe())
    tally.regions += int(loaded.regions.shape[0])
    return row


def _write_reviews_of(split: RawSplit, split_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Write each review's product row, label and rating; returns the product rows and labels (int64 ``[N]``)."""
    product_index = {p.id: i for i, p in enumerate(split.products)}
    review_product = np.fromiter((product_index[r.product_id] for r in split.reviews), dtype=np.int64,
                                 count=len(split.reviews))
    labels = np.fromiter((r.label for r in split.reviews), dtype=np.int64, count=len(split.reviews))
    np.save(split_dir / "review_product.npy", review_product, allow_pickle=False)
    np.save(split_dir / "labels.npy", labels, allow_pickle=False)
    ratings = np.array([np.nan if r.rating is None else r.rating for r in split.reviews], dtype=np.float32)
    np.save(split_dir / "review_rating.npy", ratings, allow_pickle=False)
    return review_product, labels


def _list_report(split: RawSplit, review_product: np.ndarray, labels: np.ndarray, relevance_threshold: int) -> dict:
    """The counts of the split's review lists: sizes, labels, and lists nothing can be ranked in."""
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
    }
