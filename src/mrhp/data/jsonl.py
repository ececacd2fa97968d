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
                   ``.tiff``), whose features come from :mod:`mrhp.features.image_folder` (``mrhp features``; the ``images``
                   extra) through the ``image_features`` argument of :func:`read_jsonl`. Without it image files
                   are refused with a message saying so. An entry may also be an ``http(s)://`` URL: it stands
                   for the file that ``mrhp fetch-images`` downloaded from it (:mod:`mrhp.features.fetch_images`), found
                   through the ``fetched`` argument (``mrhp prepare --fetched DIR``); a URL whose download failed
                   masks that image like a missing file.
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
``time``           optional: when the review was written, an integer number of seconds since 1970-01-01 UTC
                   (Unix time; e.g. 1700000000 is 2023-11-14). It orders the reviews for ``age`` side features
                   and the time split; absent = unknown.
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

For prediction, :meth:`mrhp.ranking.ranker.Ranker.parse` reads one product with its reviews from one JSON object.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from mrhp.data.records import (
    SPLIT_NAMES,
    VOTE_SCHEMES,
    FeatureProblem,
    FeatureSource,
    ItemFields,
    LoadedFeatures,
    RawDataset,
    RawProduct,
    RawReview,
    RawSplit,
    cap_regions,
    describe_source,
    parse_object_line,
    split_products,
    unique_ids,
    votes_to_level,
)
from mrhp.errors import DataError, MrhpError
from mrhp.files import open_regular

logger = logging.getLogger(__name__)

RAW_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
FEATURE_SUFFIX = ".npy"
# "scheme://...": an image given by URL (only http/https are ever fetched; mrhp.features.fetch_images says why others fail).
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def image_file_kind(entry: str | Path) -> str | None:
    """What an image entry that names a file is, by its suffix: ``"features"`` (a ``.npy`` array), ``"image"``
    (an image file) or None (neither); the one rule of the JSON-lines files and of requests."""
    suffix = Path(entry).suffix.lower()
    if suffix == FEATURE_SUFFIX:
        return "features"
    return "image" if suffix in RAW_IMAGE_SUFFIXES else None


def not_a_feature_file(entry: str | Path) -> str:
    return f"{entry} is neither a .npy feature file nor an image file ({', '.join(RAW_IMAGE_SUFFIXES)})"


class _Fields(ItemFields):
    """A record of the user format: the shared product and review fields plus its image paths and review level."""

    __slots__ = ()

    def image_entries(self) -> list[str]:
        """The ``images`` entries as given (paths or URLs), checked to be non-empty strings."""
        value = self.images()
        for k, entry in enumerate(value):
            if not isinstance(entry, str) or not entry.strip():
                raise self.error(f"entry {k} is not a non-empty path string: {entry!r}", "images")
        return value

    def image_paths(self, base_dir: Path, *, image_files: bool = False,
                    fetched: Callable[[str], Path | FeatureProblem] | None = None) -> list[Path | FeatureProblem]:
        """The ``images`` entries as paths; image files (by suffix) are accepted only when ``image_files``. URL
        entries become their downloaded file through ``fetched``, or the problem of their download."""
        paths: list[Path | FeatureProblem] = []
        for k, entry in enumerate(self.image_entries()):
            if _URL.match(entry):
                if fetched is None:
                    raise self.error(
                        f"entry {k} ({entry}) is a URL: download the images with `mrhp fetch-images --products ... "
                        "--reviews ... --out DIR`, then prepare with --fetched DIR", "images")
                found = fetched(entry)
                if isinstance(found, FeatureProblem):
                    paths.append(found)
                    continue
                entry = str(found)
            kind = image_file_kind(entry)
            if kind == "image" and not image_files:
                raise self.error(
                    f"entry {k} ({entry}) is an image file; image files need the image feature extractor "
                    "(`mrhp features` / `mrhp prepare --format jsonl` with the `images` extra installed: "
                    "pip install 'mrhp[images]'); otherwise give region features as .npy arrays [n_regions, F]",
                    "images")
            if kind is None:
                raise self.error(f"entry {k}: {not_a_feature_file(entry)}", "images")
            path = Path(entry)
            paths.append(path if path.is_absolute() else base_dir / path)
        return paths

    def label(self, votes_scheme: str, max_level: int) -> tuple[int, str]:
        """The review's level from ``label`` or from ``votes``, and which of the two gave it."""
        if self.has("label") and self.has("votes"):
            raise self.error("give either 'label' or 'votes', not both", "label")
        if self.has("label"):
            return self.level("label", max_level), "label"
        if not self.has("votes"):
            raise self.error("missing required field (or 'votes')", "label", "missing label")
        votes = self.integer("votes")
        if votes < 0:
            raise self.error(f"votes must be >= 0, got {votes}", "votes")
        return votes_to_level(votes, votes_scheme, max_level), "votes"


def _read_records(path: Path) -> list[_Fields]:
    """The records of the non-blank lines; ``DataError`` naming the line for bad JSON."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise DataError("file not found", file=path) from None
    except OSError as exc:
        raise DataError(f"cannot read file ({exc})", file=path) from None
    with handle:
        numbered = ((line_no, parse_object_line(raw, path, line_no)) for line_no, raw in enumerate(handle, start=1))
        return [_Fields(obj, path, line_no) for line_no, obj in numbered if obj is not None]


def _is_image_file(path: Path) -> bool:
    return image_file_kind(path) == "image"


def load_npy_regions(path: Path) -> np.ndarray:
    """One image's region features from a ``.npy`` file: float32 ``[n_regions, F]`` (no pickles allowed).

    Raises ``OSError`` / ``ValueError`` when the file is missing, unreadable or not a numeric 2-D array.
    """
    with open_regular(path) as handle:
        # numpy calls any other file "pickled data", and some of its errors quote the file's first bytes.
        if handle.read(6) != b"\x93NUMPY":
            raise ValueError("not a .npy file (no NumPy header)")
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.number) or array.shape[1] < 1:
        raise ValueError(f"expected a numeric [n_regions, F] array with F >= 1, got shape {array.shape} dtype "
                         f"{array.dtype}")
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


ImageFeatures = Callable[[list[Path]], Mapping[Path, Path | FeatureProblem]]


def link_image_files(items: Iterable[tuple[RawProduct | RawReview, Sequence[Path | FeatureProblem]]],
                     image_features: ImageFeatures, max_regions_per_image: int | None,
                     max_regions_per_item: int | None) -> None:
    """Give each item the features of its images (``.npy`` files, image files, or problems that mask an image),
    running ``image_features`` once over every image file of all the items."""
    items = list(items)
    resolved = image_features([p for _, found in items for p in found if isinstance(p, Path) and _is_image_file(p)])
    for item, found in items:
        linked = [resolved[p] if isinstance(p, Path) and _is_image_file(p) else p for p in found]
        item.features = NpyFeatures([p for p in linked if isinstance(p, Path)], max_regions_per_image,
                                    max_regions_per_item, problems=[p for p in linked if isinstance(p, FeatureProblem)])


class _ImageLinks:
    """Gives items their features: lists of ``.npy`` files at once; lists with image files after both files are
    read (so bad records fail before any extraction), from one extraction run over all the image files."""

    def __init__(self, max_regions_per_image: int | None, max_regions_per_item: int | None,
                 image_features: ImageFeatures | None,
                 fetched: Callable[[str], Path | FeatureProblem] | None) -> None:
        self.caps = (max_regions_per_image, max_regions_per_item)
        self.image_features = image_features
        self.fetched = fetched
        self.deferred: list[tuple[RawProduct | RawReview, list[Path | FeatureProblem]]] = []

    def attach(self, item: RawProduct | RawReview, fields: _Fields, base_dir: Path) -> None:
        found = fields.image_paths(base_dir, image_files=self.image_features is not None, fetched=self.fetched)
        if any(isinstance(p, Path) and _is_image_file(p) for p in found):
            self.deferred.append((item, found))
        elif found:
            item.features = NpyFeatures([p for p in found if isinstance(p, Path)], *self.caps,
                                        problems=[p for p in found if isinstance(p, FeatureProblem)])

    def resolve(self) -> None:
        if not self.deferred:
            return
        assert self.image_features is not None, "image files are refused while reading without image_features"
        link_image_files(self.deferred, self.image_features, *self.caps)


def read_image_urls(products_path: str | Path, reviews_path: str | Path) -> dict[str, list[str]]:
    """The URL entries of ``images`` in both files (other entries are left out), each with the items that list it
    (``"product ID"`` / ``"review ID"``), in order of first appearance; only ids and ``images`` are checked."""
    urls: dict[str, list[str]] = {}
    for kind, path in (("product", Path(products_path)), ("review", Path(reviews_path))):
        for f, item_id in unique_ids(_read_records(path), kind):
            for entry in f.image_entries():
                if _URL.match(entry):
                    urls.setdefault(entry, []).append(f"{kind} {item_id}")
    return urls


def _read_products(path: Path, images: _ImageLinks) -> list[tuple[RawProduct, str | None]]:
    """The products in file order with their ``split`` (None when not given: then no product may give it)."""
    products: list[tuple[RawProduct, str | None]] = []
    first_line: dict[bool, int] = {}  # whether the split is given -> first line that does so
    for f, pid in unique_ids(_read_records(path), "product"):
        text = f.product_text()
        split = f.string("split", required=False)
        if split is not None and split not in SPLIT_NAMES:
            raise f.error(f"unknown split {split!r} (choose from {', '.join(SPLIT_NAMES)})", "split")
        first_line.setdefault(split is not None, f.line)
        if len(first_line) == 2:
            raise f.error(f"some products have a 'split' (line {first_line[True]}) and others not (line "
                          f"{first_line[False]}); give it for all products or for none", "split")
        product = RawProduct(pid, text)
        images.attach(product, f, path.parent)
        products.append((product, split))
    return products


def _read_reviews(path: Path, product_ids: Collection[str], products_name: str, images: _ImageLinks,
                  votes_scheme: str, max_level: int) -> tuple[list[RawReview], dict[str, int]]:
    """The reviews in file order, each of a product of ``product_ids`` (those of the file ``products_name``), and
    how many levels came from ``label`` and from ``votes``."""
    reviews: list[RawReview] = []
    label_source = {"label": 0, "votes": 0}
    for f, rid in unique_ids(_read_records(path), "review"):
        pid = f.id("product_id")
        if pid not in product_ids:
            raise f.error(f"unknown product {pid!r} (not in {products_name})", "product_id")
        text = f.review_text()
        label, source = f.label(votes_scheme, max_level)
        label_source[source] += 1
        time = f.integer("time") if f.has("time") else None
        if time is not None and time < 0:
            raise f.error(f"expected seconds since 1970 (>= 0), got {time}", "time")
        review = RawReview(rid, pid, text, label, time=time)
        images.attach(review, f, path.parent)
        reviews.append(review)
    return reviews, label_source


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
    image_features: ImageFeatures | None = None,
    fetched: Callable[[str], Path | FeatureProblem] | None = None,
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
            :meth:`mrhp.features.image_folder.ImageFeatureFolder.resolve`). None = image files are refused.
        fetched: what gives a URL entry its downloaded image file, or the :class:`FeatureProblem` of its download
            (e.g. :meth:`mrhp.features.fetched_folder.FetchedImages.resolve`). None = URL entries are refused.

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
    images = _ImageLinks(max_regions_per_image, max_regions_per_item, image_features, fetched)
    products = _read_products(products_path, images)
    if any(split is not None for _, split in products):
        assignment = {p.id: split for p, split in products}
        split_source = "field"
    else:
        assignment = split_products([p.id for p, _ in products], fractions, seed)
        split_source = "random"
    reviews, label_source = _read_reviews(reviews_path, assignment, products_path.name, images, votes_scheme,
                                          max_level)
    images.resolve()

    by_split: dict[str, RawSplit] = {name: RawSplit(name, [], []) for name in SPLIT_NAMES}
    for product, _ in products:
        by_split[assignment[product.id]].products.append(product)
    for review in reviews:
        by_split[assignment[review.product_id]].reviews.append(review)
    random = split_source == "random"
    source = describe_source(
        "mrhp-jsonl", products_path.parent, products=products_path, reviews=reviews_path, split_from=split_source,
        fractions=fractions if random else None, seed=seed if random else None, votes_scheme=votes_scheme,
        max_level=max_level, max_regions_per_image=max_regions_per_image, max_regions_per_item=max_regions_per_item,
    )
    raw = RawDataset(
        source,
        splits={name: s for name, s in by_split.items() if s.products},
        max_missing_image_rate=max_missing_image_rate,
        notes={"labels_from": label_source},
    )
    raw.check_feature_files()
    logger.info("read %d products and %d reviews from %s (split from %s)", len(products), len(reviews),
                products_path.parent, split_source)
    return raw
