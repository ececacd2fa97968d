"""Writing one split of a prepared dataset (see :mod:`mrhp.data.prepared` for the layout): its token arrays, its
image rows in the feature store, its labels and its report section. :func:`mrhp.data.prepare.prepare_dataset` calls
it for each split.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from mrhp.data.records import (
    FeatureProblem,
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
