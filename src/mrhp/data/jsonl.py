"""Reader of the project's own user format: two JSON-lines files.

``products.jsonl``: one JSON object per line.

=================  ==========================================================================================
``product_id``     required; a non-empty string or an integer (used as a string).
``text``           the product text (a string; may be empty) ...
``name``,          ... or, instead of ``text``, a ``name`` and/or a ``description`` (strings); the text is then
``description``    ``name + " " + description`` as in the benchmarks. Giving ``text`` together with either is an
                   error.
``images``         optional list of images, one entry per image, paths relative to the folder of the ``.jsonl``
                   file (or absolute): region feature files (``.npy`` arrays ``[n_regions, F]``, numbers, no
                   pickles) or image files (``.jpg``, ``.jpeg``, ``.png``, ``.webp``, ``.gif``, ``.bmp``, ``.tif``,
                   ``.tiff``), whose features come from :mod:`mrhp.images` (``mrhp features``; the ``images``
                   extra) through the ``image_features`` argument of :func:`read_jsonl`. Without it image files
                   are refused with a message saying so.
``split``          optional ``"train"``, ``"dev"`` or ``"test"``. Either every product has it or none; without
                   it products are split at random by :func:`split_products` (default 80/10/10, seeded).
=================  ==========================================================================================

``reviews.jsonl``: one JSON object per line.

=================  ==========================================================================================
``review_id``      required; a non-empty string or an integer, unique over the file.
``product_id``     required; a product of ``products.jsonl``. The review goes to its product's split.
``text``           required string (may be empty: the review is kept with zero tokens).
``images``         optional, as for products.
``label``          the helpfulness level, an integer 0..``max_level`` (default 4) ...
``votes``          ... or, instead of ``label``, a helpful-vote count (integer >= 0) mapped to a level by
                   :func:`votes_to_level`: ``"log2"`` (default) ``min(max_level, floor(log2(1 + votes)))``, i.e.
                   0 votes -> 0, 1-2 -> 1, 3-6 -> 2, 7-14 -> 3, 15+ -> 4; or ``"linear-cap"``
                   ``min(max_level, votes)``.
=================  ==========================================================================================

Blank lines are ignored. Every error (malformed JSON, missing or mistyped field, duplicate id, review of an
unknown product, label out of range) names the file, the line and the field. A listed ``.npy`` file that is
missing or unreadable, or an image file that is missing or cannot be decoded, masks that image (it is counted and
listed in the report with the reason, and preparing fails when the rate of items with a missing image exceeds
``max_missing_image_rate``).

Example::

    {"product_id": "B001", "name": "Steel stock pot", "description": "6 quart, glass lid", "split": "train",
     "images": ["features/B001-0.npy"]}
    {"review_id": "R1", "product_id": "B001", "text": "Great pot for canning.", "votes": 12}

For prediction, :func:`mrhp.inference.parse_ranking_request` reads one product with its reviews from one JSON object.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from mrhp.data.records import (
    SPLIT_NAMES,
    VOTE_SCHEMES,
    FeatureProblem,
    FeatureSource,
    LoadedFeatures,
    RawDataset,
    RawProduct,
    RawReview,
    RawSplit,
    cap_regions,
    parse_object_line,
    split_products,
    votes_to_level,
)
from mrhp.errors import DataError, MrhpError

logger = logging.getLogger(__name__)

RAW_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
FEATURE_SUFFIX = ".npy"

_MISSING = object()


def _read_lines(path: Path) -> list[tuple[int, dict]]:
    """``(line_number, object)`` for each non-blank line; ``DataError`` naming the line for bad JSON."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise DataError("file not found", file=path) from None
    except OSError as exc:
        raise DataError(f"cannot read file ({exc})", file=path) from None
    with handle:
        numbered = ((line_no, parse_object_line(raw, path, line_no)) for line_no, raw in enumerate(handle, start=1))
        return [(line_no, obj) for line_no, obj in numbered if obj is not None]


class _Fields:
    """Typed field access for one JSON object; errors name ``file`` (and ``line`` when given)."""

    def __init__(self, obj: dict, file: object, line: int | None) -> None:
        self.obj = obj
        self.file = file
        self.line = line

    def error(self, message: str, name: str | None) -> DataError:
        return DataError(message, file=self.file, line=self.line, field=name)

    def has(self, name: str) -> bool:
        return name in self.obj

    def id(self, name: str) -> str:
        value = self.obj.get(name, _MISSING)
        if value is _MISSING:
            raise self.error("missing required field", name)
        if isinstance(value, str) and value.strip():
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        raise self.error(f"expected a non-empty string or an integer, got {value!r}", name)

    def string(self, name: str, *, required: bool) -> str | None:
        value = self.obj.get(name, _MISSING)
        if value is _MISSING:
            if required:
                raise self.error("missing required field", name)
            return None
        if not isinstance(value, str):
            raise self.error(f"expected a string, got {json.dumps(value)[:60]}", name)
        return value

    def integer(self, name: str) -> int:
        value = self.obj[name]
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"expected an integer, got {json.dumps(value)[:60]}", name)
        return value

    def product_text(self) -> str:
        """``text``, or ``name`` + " " + ``description`` (either may be absent)."""
        text = self.string("text", required=False)
        name = self.string("name", required=False)
        description = self.string("description", required=False)
        if text is not None:
            if name is not None or description is not None:
                raise self.error("give either 'text' or 'name'/'description', not both", "text")
            return text
        if name is None and description is None:
            raise self.error("missing required field (or 'name' and/or 'description')", "text")
        return " ".join(part for part in (name, description) if part is not None)

    def image_paths(self, base_dir: Path, *, image_files: bool = False) -> list[Path]:
        """The ``images`` entries as paths; image files (by suffix) are accepted only when ``image_files``."""
        value = self.obj.get("images", _MISSING)
        if value is _MISSING or value is None:
            return []
        if not isinstance(value, list):
            raise self.error(f"expected a list of feature file paths, got {type(value).__name__}", "images")
        paths = []
        for k, entry in enumerate(value):
            if not isinstance(entry, str) or not entry.strip():
                raise self.error(f"entry {k} is not a non-empty path string: {entry!r}", "images")
            suffix = Path(entry).suffix.lower()
            if suffix in RAW_IMAGE_SUFFIXES and not image_files:
                raise self.error(
                    f"entry {k} ({entry}) is an image file; image files need the image feature extractor "
                    "(`mrhp features` / `mrhp prepare --format jsonl` with the `images` extra installed: "
                    "pip install 'mrhp[images]'); otherwise give region features as .npy arrays [n_regions, F]",
                    "images")
            if suffix != FEATURE_SUFFIX and suffix not in RAW_IMAGE_SUFFIXES:
                raise self.error(f"entry {k} ({entry}) is not a .npy feature file (nor an image file: "
                                 f"{', '.join(RAW_IMAGE_SUFFIXES)})", "images")
            path = Path(entry)
            paths.append(path if path.is_absolute() else base_dir / path)
        return paths


def _is_image_file(path: Path) -> bool:
    return path.suffix.lower() in RAW_IMAGE_SUFFIXES


def load_npy_regions(path: Path) -> np.ndarray:
    """One image's region features from a ``.npy`` file: float32 ``[n_regions, F]`` (no pickles allowed).

    Raises ``OSError`` / ``ValueError`` when the file is missing, unreadable or not a numeric 2-D array.
    """
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"expected a numeric [n_regions, F] array, got shape {array.shape} dtype {array.dtype}")
    return array


class NpyFeatures(FeatureSource):
    """Region features of one item from ``.npy`` files, one per image, concatenated in list order.

    A missing or unreadable file masks that image only (the others are kept); it is reported as a problem. Keeps
    the first ``max_regions_per_image`` regions of each image and at most ``max_regions_per_item`` in all.
    ``problems`` are images of the item known to have failed already (image files whose feature extraction
    failed): they are masked and reported the same way.
    """

    def __init__(self, paths: Sequence[Path], max_regions_per_image: int | None = None,
                 max_regions_per_item: int | None = 128, problems: Sequence[FeatureProblem] = ()) -> None:
        self.paths = list(paths)
        self.max_regions_per_image = max_regions_per_image
        self.max_regions_per_item = max_regions_per_item
        self.problems = list(problems)

    def describe(self) -> str:
        return ", ".join([str(p) for p in self.paths] + [p.file for p in self.problems])

    def missing_files(self) -> list[FeatureProblem]:
        return self.problems + [FeatureProblem(str(p), "file not found") for p in self.paths if not p.is_file()]

    def load(self) -> LoadedFeatures:
        images: list[np.ndarray] = []
        problems: list[FeatureProblem] = list(self.problems)
        for path in self.paths:
            if not path.is_file():
                problems.append(FeatureProblem(str(path), "file not found"))
                continue
            try:
                images.append(load_npy_regions(path))
            except (OSError, ValueError, EOFError) as exc:
                problems.append(FeatureProblem(str(path), f"unreadable ({str(exc)[:200]})"))
        regions = cap_regions(images, self.max_regions_per_image, self.max_regions_per_item,
                              where=self.describe())
        return LoadedFeatures(regions, problems)


def read_jsonl(
    products_path: str | Path,
    reviews_path: str | Path,
    *,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    votes_scheme: str = "log2",
    max_level: int = 4,
    max_regions_per_image: int | None = None,
    max_regions_per_item: int | None = 128,
    max_missing_image_rate: float = 0.05,
    image_features: Callable[[list[Path]], Mapping[Path, Path | FeatureProblem]] | None = None,
) -> RawDataset:
    """Read a dataset in the user format (see the module docstring).

    Args:
        products_path, reviews_path: the two ``.jsonl`` files.
        fractions: train/dev/test fractions of products, used only when products carry no ``split``.
        seed: seed of that split.
        votes_scheme, max_level: mapping of ``votes`` to levels (:func:`votes_to_level`); ``label`` must be in
            ``0..max_level``.
        max_regions_per_image, max_regions_per_item: region caps (None = no cap). Unlike the official format
            there is no per-image cap by default: the user's extractor decides the regions per image.
        max_missing_image_rate: largest tolerated fraction, per split and kind, of items with images of which at
            least one feature file is missing or unreadable.
        image_features: what turns image files into feature files, called once after both files are read
            (so bad records fail before any extraction) with every image file listed, in order of appearance:
            returns each file's ``.npy`` features or the :class:`FeatureProblem` that masks it (e.g.
            :meth:`mrhp.images.ImageFeatureFolder.resolve`). None = image files are refused.

    Returns:
        The raw dataset with the splits that have products, in the order train, dev, test; products and reviews
        in file order.
    """
    # These come straight from the command line: a user error, not a programming error.
    if votes_scheme not in VOTE_SCHEMES:
        raise MrhpError(f"votes scheme must be one of {VOTE_SCHEMES}, got {votes_scheme!r}")
    if not 0.0 <= max_missing_image_rate <= 1.0:
        raise MrhpError(f"max missing image rate must be in [0, 1], got {max_missing_image_rate}")
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise MrhpError(f"split fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}")
    products_path, reviews_path = Path(products_path), Path(reviews_path)

    # Items listing image files get their features after reading, from one extraction run over all the files.
    deferred: list[tuple[RawProduct | RawReview, list[Path]]] = []

    def attach_features(item: RawProduct | RawReview, paths: list[Path]) -> None:
        if any(_is_image_file(p) for p in paths):
            deferred.append((item, paths))
        elif paths:
            item.features = NpyFeatures(paths, max_regions_per_image, max_regions_per_item)

    products: list[tuple[RawProduct, str | None]] = []
    product_line: dict[str, int] = {}
    with_split = without_split = 0
    first_with: int | None = None
    first_without: int | None = None
    for line_no, obj in _read_lines(products_path):
        f = _Fields(obj, products_path, line_no)
        pid = f.id("product_id")
        if pid in product_line:
            raise f.error(f"duplicate product id {pid!r} (also line {product_line[pid]})", "product_id")
        product_line[pid] = line_no
        text = f.product_text()
        split = f.string("split", required=False)
        if split is not None and split not in SPLIT_NAMES:
            raise f.error(f"unknown split {split!r} (choose from {', '.join(SPLIT_NAMES)})", "split")
        if split is None:
            without_split += 1
            first_without = first_without or line_no
        else:
            with_split += 1
            first_with = first_with or line_no
        if with_split and without_split:
            raise f.error(f"some products have a 'split' (line {first_with}) and others not (line "
                          f"{first_without}); give it for all products or for none", "split")
        product = RawProduct(pid, text)
        attach_features(product, f.image_paths(products_path.parent, image_files=image_features is not None))
        products.append((product, split))

    if with_split:
        assignment = {p.id: split for p, split in products}
        split_source = "field"
    else:
        assignment = split_products([p.id for p, _ in products], fractions, seed)
        split_source = "random"

    by_split: dict[str, RawSplit] = {name: RawSplit(name, [], []) for name in SPLIT_NAMES}
    for product, _ in products:
        by_split[assignment[product.id]].products.append(product)

    review_line: dict[str, int] = {}
    label_source = {"label": 0, "votes": 0}
    for line_no, obj in _read_lines(reviews_path):
        f = _Fields(obj, reviews_path, line_no)
        rid = f.id("review_id")
        if rid in review_line:
            raise f.error(f"duplicate review id {rid!r} (also line {review_line[rid]})", "review_id")
        review_line[rid] = line_no
        pid = f.id("product_id")
        if pid not in product_line:
            raise f.error(f"unknown product {pid!r} (not in {products_path.name})", "product_id")
        text = f.string("text", required=True)
        assert text is not None
        if f.has("label") and f.has("votes"):
            raise f.error("give either 'label' or 'votes', not both", "label")
        if f.has("label"):
            label = f.integer("label")
            if not 0 <= label <= max_level:
                raise f.error(f"level {label} out of range 0..{max_level}", "label")
            label_source["label"] += 1
        elif f.has("votes"):
            votes = f.integer("votes")
            if votes < 0:
                raise f.error(f"votes must be >= 0, got {votes}", "votes")
            label = votes_to_level(votes, votes_scheme, max_level)
            label_source["votes"] += 1
        else:
            raise f.error("missing required field (or 'votes')", "label")
        review = RawReview(rid, pid, text, label)
        attach_features(review, f.image_paths(reviews_path.parent, image_files=image_features is not None))
        by_split[assignment[pid]].reviews.append(review)

    if deferred:
        assert image_features is not None, "image files are refused while reading without image_features"
        resolved = image_features([p for _, paths in deferred for p in paths if _is_image_file(p)])
        for item, paths in deferred:
            found = [resolved[p] if _is_image_file(p) else p for p in paths]
            item.features = NpyFeatures(
                [p for p in found if isinstance(p, Path)], max_regions_per_image, max_regions_per_item,
                problems=[p for p in found if isinstance(p, FeatureProblem)],
            )

    raw = RawDataset(
        source={
            "format": "mrhp-jsonl",
            "path": str(products_path.parent),
            "products": str(products_path),
            "reviews": str(reviews_path),
            "split_from": split_source,
            "fractions": list(fractions) if split_source == "random" else None,
            "seed": seed if split_source == "random" else None,
            "votes_scheme": votes_scheme,
            "max_level": max_level,
            "max_regions_per_image": max_regions_per_image,
            "max_regions_per_item": max_regions_per_item,
        },
        splits={name: s for name, s in by_split.items() if s.products},
        max_missing_image_rate=max_missing_image_rate,
        notes={"labels_from": label_source},
    )
    raw.check_feature_files()
    logger.info("read %d products and %d reviews from %s (split from %s)", len(products), len(review_line),
                products_path.parent, split_source)
    return raw
