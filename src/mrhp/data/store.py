"""The feature store: image region features of items in a safe, memory-mappable directory.

Layout of a store directory:

- ``regions.bin``: raw little-endian float16 or float32 array ``[total_regions, F]``, the regions of all items
  one after the other;
- ``offsets.npy``: int64 ``[num_items + 1]``, item ``i`` owns regions ``offsets[i]:offsets[i + 1]`` (plain npy,
  loaded with ``allow_pickle=False``);
- ``store.json``: ``{"format": "mrhp-feature-store", "version": 1, "dim": F, "dtype": "float16"|"float32",
  "num_items": ..., "num_regions": ...}``.

Items are addressed by the integer row returned by :meth:`FeatureStoreWriter.add`; row ``-1`` means "no image"
everywhere in the project. Nothing in a store is pickled, so opening one never runs code.

:func:`read_meta` checks the format and version of ``store.json`` and, for :mod:`mrhp.data.prepared`, of the
prepared dataset's ``dataset.json``, the other folder that ``mrhp prepare`` writes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from types import TracebackType

import numpy as np

from mrhp import jsontext
from mrhp.errors import DataError
from mrhp.outputs import move_into_place, temporary_beside

logger = logging.getLogger(__name__)

STORE_FORMAT = "mrhp-feature-store"
STORE_VERSION = 1
NO_IMAGE = -1

_DTYPES = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4")}


def load_json(path: Path) -> object:
    """The content of a JSON file; ``DataError`` naming the file when it cannot be read or parsed."""
    try:
        return jsontext.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read JSON ({exc})", file=path) from None


def read_meta(path: Path, what: str, fmt: str, version: int | tuple[int, ...]) -> dict:
    """The metadata file of a folder that ``mrhp prepare`` writes (a feature store, a prepared dataset), of format
    ``fmt`` and ``version`` (or one of the versions); ``DataError`` when it is missing, unreadable, or of another
    format or version."""
    if not path.is_file():
        raise DataError(f"not a {what} (no {path.name}); run `mrhp prepare` first", file=path.parent)
    meta = load_json(path)
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise DataError(f"not a {what} (format is not {fmt!r})", file=path)
    versions = version if isinstance(version, tuple) else (version,)
    if meta.get("version") not in versions or isinstance(meta.get("version"), bool):
        expected = " or ".join(str(v) for v in versions)
        raise DataError(f"{what} version {meta.get('version')!r} is not supported (expected {expected}); prepare "
                        "the dataset again with this version", file=path)
    return meta


class FeatureStoreWriter:
    """Writes a feature store; the store appears at ``path`` only when :meth:`close` succeeds.

    Regions are appended to a temporary directory next to ``path`` (``.{name}.tmp-*``) and the directory is renamed
    to ``path`` at the end, with ``store.json`` written last: a killed run leaves no directory that opens as a
    valid store. Use as a context manager: an exception inside the ``with`` block discards the temporary files.

    Args:
        path: the store directory to create; it must not exist.
        dim: region feature size ``F``.
        dtype: on-disk value type, ``"float16"`` (half the size; Faster R-CNN / CNN features lose nothing that
            matters) or ``"float32"``.
    """

    def __init__(self, path: str | os.PathLike[str], dim: int, dtype: str = "float16") -> None:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f"{self.path}: a feature store cannot be written over an existing path")
        self.dim = int(dim)
        self.dtype = dtype
        self._np_dtype = _DTYPES[dtype]
        self._tmp = temporary_beside(self.path)
        self._tmp.mkdir(parents=True)
        self._regions = (self._tmp / "regions.bin").open("wb")
        self._offsets: list[int] = [0]
        self._closed = False

    @property
    def num_items(self) -> int:
        return len(self._offsets) - 1

    def add(self, regions: np.ndarray, item: str | None = None) -> int:
        """Append one item's regions ``[n, F]`` (n may be 0) and return its row.

        ``item`` names the item (e.g. its id and source file) in error messages. A wrong shape or feature size is
        a ``ValueError``; NaN/inf values (also values beyond the float16 range when storing float16) are a
        ``DataError`` naming the item.
        """
        if self._closed:
            raise ValueError("the feature store writer is closed")
        name = item if item is not None else f"item {self.num_items}"
        array = np.asarray(regions)
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise ValueError(f"{name}: region features must have shape [n, {self.dim}], got {array.shape}")
        with np.errstate(over="ignore", invalid="ignore"):
            stored = np.ascontiguousarray(array, dtype=self._np_dtype)
        # Checked after the conversion: a float32 value above 65504 becomes inf in float16.
        if not np.all(np.isfinite(stored)):
            hint = " (or beyond the float16 range; use dtype float32)" if self.dtype == "float16" else ""
            raise DataError(f"region features hold NaN or infinite values{hint}", file=name)
        self._regions.write(stored.tobytes())
        self._offsets.append(self._offsets[-1] + array.shape[0])
        return self.num_items - 1

    def close(self) -> None:
        """Finish the store: write the index and metadata, then move it into place."""
        if self._closed:
            return
        self._regions.close()
        offsets = np.asarray(self._offsets, dtype=np.int64)
        np.save(self._tmp / "offsets.npy", offsets, allow_pickle=False)
        meta = {
            "format": STORE_FORMAT,
            "version": STORE_VERSION,
            "dim": self.dim,
            "dtype": self.dtype,
            "num_items": self.num_items,
            "num_regions": int(offsets[-1]),
        }
        # Metadata last: a directory without store.json never opens as a store.
        (self._tmp / "store.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        move_into_place(self._tmp, self.path)
        self._closed = True
        logger.info("feature store %s: %d items, %d regions of %d (%s)", self.path, meta["num_items"],
                    meta["num_regions"], self.dim, self.dtype)

    def abort(self) -> None:
        """Discard everything written so far."""
        if self._closed:
            return
        self._regions.close()
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._closed = True

    def __enter__(self) -> FeatureStoreWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class FeatureStore:
    """A read-only feature store; open with :meth:`FeatureStore.open`.

    Attributes:
        path: the store directory.
        dim: region feature size ``F``.
        dtype: on-disk value type.
        num_items: number of items (rows).
    """

    def __init__(self, path: Path, regions: np.ndarray, offsets: np.ndarray, dtype: str) -> None:
        self.path = path
        self._regions = regions
        self._offsets = offsets
        self.dim = int(regions.shape[1])
        self.dtype = dtype
        self.num_items = int(offsets.shape[0] - 1)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> FeatureStore:
        """Open a store, memory-mapping its regions; a missing or inconsistent store is a ``DataError``."""
        path = Path(path)
        meta_path = path / "store.json"
        meta = read_meta(meta_path, "feature store", STORE_FORMAT, STORE_VERSION)
        dtype = meta.get("dtype")
        if dtype not in _DTYPES:
            raise DataError(f"unknown dtype {dtype!r}", file=meta_path, field="dtype")
        for key in ("dim", "num_items", "num_regions"):
            value = meta.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value < (1 if key == "dim" else 0):
                raise DataError(f"invalid value {value!r}", file=meta_path, field=key)
        dim, num_items, num_regions = meta["dim"], meta["num_items"], meta["num_regions"]
        offsets_path = path / "offsets.npy"
        try:
            offsets = np.load(offsets_path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"unreadable offsets ({exc})", file=offsets_path) from None
        if (
            offsets.dtype != np.int64
            or offsets.shape != (num_items + 1,)
            or offsets[0] != 0
            or offsets[-1] != num_regions
            or np.any(np.diff(offsets) < 0)
        ):
            raise DataError("offsets do not match store.json (corrupt or partial store)", file=offsets_path)
        regions_path = path / "regions.bin"
        np_dtype = _DTYPES[dtype]
        expected = num_regions * dim * np_dtype.itemsize
        try:
            size = regions_path.stat().st_size
        except OSError as exc:
            raise DataError(f"missing regions file ({exc})", file=regions_path) from None
        if size != expected:
            raise DataError(f"size {size} bytes, expected {expected} (corrupt or partial store)", file=regions_path)
        if num_regions == 0:
            # np.memmap cannot map an empty file.
            regions = np.zeros((0, dim), dtype=np_dtype)
        else:
            regions = np.memmap(regions_path, dtype=np_dtype, mode="r", shape=(num_regions, dim))
        return cls(path, regions, offsets, dtype)

    def _check_row(self, row: int) -> None:
        if not -1 <= row < self.num_items:
            raise IndexError(f"{self.path}: feature store row {row} out of range (-1..{self.num_items - 1})")

    def count(self, row: int) -> int:
        """Number of regions of item ``row`` (0 for row -1)."""
        self._check_row(row)
        if row == NO_IMAGE:
            return 0
        return int(self._offsets[row + 1] - self._offsets[row])

    def get(self, row: int) -> np.ndarray:
        """Regions of item ``row`` as float32 ``[n, F]`` (a copy); row -1 gives an empty ``[0, F]``."""
        self._check_row(row)
        if row == NO_IMAGE:
            return np.zeros((0, self.dim), dtype=np.float32)
        start, end = int(self._offsets[row]), int(self._offsets[row + 1])
        return np.array(self._regions[start:end], dtype=np.float32)

    def __len__(self) -> int:
        return self.num_items

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.path)!r}, items={self.num_items}, dim={self.dim}, dtype={self.dtype})"
