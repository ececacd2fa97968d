"""A resumable folder of image region features: what ``mrhp features`` and ``mrhp prepare --format jsonl`` use.

Every image file listed by a dataset goes through the extractor of :mod:`mrhp.features.images` once; its features are kept
by content, so a rerun (after an interruption, or on a dataset with new images) extracts only images whose content
has no feature file yet; files that failed are tried again (they fail fast, before the network runs). Layout::

    features.json            the extraction settings; a run with other settings is refused
    regions/ab/<sha256>.npy  float16 [R, 1280], one file per distinct image content (sha256 of the file bytes),
                             written to a temporary name and renamed: a killed run leaves no partial .npy
    index.jsonl              of the last run, one line per image file: {"file", "features", "error"}
    report.json              of the last run: counts, failures with reasons, seconds, images per second

API::

    ImageFeatureFolder(path, input_size=224, max_regions_per_image=49, threads=None, batch_size=16,
                       max_pixels=64_000_000, progress=True).resolve(files) -> {file: npy path | FeatureProblem}
    format_folder_report(folder.last_report) -> str
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from mrhp import jsontext
from mrhp.data.records import FeatureProblem
from mrhp.errors import MrhpError
from mrhp.features.images import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_INPUT_SIZE,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_REGIONS,
    EXTRACTOR_NAME,
    FEATURE_DIM,
    PIXEL_MEAN,
    PIXEL_STD,
    ImageError,
    ImageFeatureExtractor,
    available_cores,
    check_settings,
    load_image,
    prefetch,
    region_grid,
)
from mrhp.files import read_regular
from mrhp.outputs import write_atomic, write_text_atomic
from mrhp.progress import progress_bar

logger = logging.getLogger(__name__)

FOLDER_FORMAT = "mrhp-image-features"
FOLDER_VERSION = 1
_TEMP_PATTERN = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]{8}$")


def _write_json_atomic(path: Path, value: object) -> None:
    text = json.dumps(value, indent=1, ensure_ascii=False) + "\n"
    write_text_atomic(path, text)


def _save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(exist_ok=True)
    write_atomic(path, lambda temporary: _np_save(temporary, array))


def _np_save(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as handle:  # np.save given a name would add ".npy" to the temporary's
        np.save(handle, array, allow_pickle=False)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(candidates: Iterable[Path]) -> None:
    """Delete the temporary files of :func:`write_atomic` among ``candidates`` whose process is gone (left by
    killed runs; they are never read)."""
    for tmp in candidates:
        match = _TEMP_PATTERN.match(tmp.name)
        if match and not _process_alive(int(match.group(1))):
            tmp.unlink(missing_ok=True)
            logger.debug("removed %s (left by an interrupted run)", tmp)


class ImageFeatureFolder:
    """A resumable folder of per-image region features (layout in the module docstring).

    The folder is created (or its settings checked) on the first :meth:`resolve`, and the network is loaded only
    when some image has no features yet, so resolving a finished folder needs neither.

    Args:
        path: the folder.
        input_size, max_regions_per_image, threads, batch_size, max_pixels: as for
            :class:`ImageFeatureExtractor`; ``input_size`` and ``max_regions_per_image`` are part of the folder's
            settings, the others only of a run.
        progress: show a progress bar (on a terminal).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        input_size: int = DEFAULT_INPUT_SIZE,
        max_regions_per_image: int = DEFAULT_MAX_REGIONS,
        threads: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        progress: bool = True,
    ) -> None:
        check_settings(input_size, max_regions_per_image, batch_size, max_pixels, threads)
        self.path = Path(path)
        self.input_size = input_size
        self.max_regions_per_image = max_regions_per_image
        self.threads = threads if threads is not None else available_cores()
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.progress = progress
        grid = region_grid(input_size, max_regions_per_image)
        self.num_regions = grid * grid
        self.settings = {
            "format": FOLDER_FORMAT,
            "version": FOLDER_VERSION,
            "extractor": EXTRACTOR_NAME,
            "input_size": input_size,
            "grid": grid,
            "regions_per_image": self.num_regions,
            "dim": FEATURE_DIM,
            "dtype": "float16",
            "preprocessing": "EXIF orientation, alpha on white, RGB, bicubic resize to input_size x input_size "
                             f"(aspect not kept), (x - {PIXEL_MEAN:g}) / {PIXEL_STD:g}",
        }
        self.last_report: dict | None = None
        self._extractor: ImageFeatureExtractor | None = None
        self._load_seconds = 0.0

    def feature_path(self, digest: str) -> Path:
        """Where the features of the image whose bytes have this sha256 are stored."""
        return self.path / "regions" / digest[:2] / f"{digest}.npy"

    def _open(self) -> None:
        """Create the folder with its settings, or check that an existing folder has the same settings."""
        manifest = self.path / "features.json"
        if manifest.is_file():
            try:
                stored = jsontext.loads(manifest.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise MrhpError(f"{manifest}: unreadable settings of the image feature folder ({exc})") from None
            if not isinstance(stored, dict) or stored.get("format") != FOLDER_FORMAT:
                raise MrhpError(f"{manifest}: not an image feature folder (format is not {FOLDER_FORMAT!r})")
            for key in ("version", "extractor", "input_size", "grid", "dim", "dtype"):
                if stored.get(key) != self.settings[key]:
                    raise MrhpError(
                        f"{manifest}: the folder holds features with {key} = {stored.get(key)!r}, this run asks for "
                        f"{self.settings[key]!r}; use another folder (or the folder's settings)")
        elif self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise MrhpError(f"{self.path}: exists and is not an image feature folder (no features.json)")
        else:
            (self.path / "regions").mkdir(parents=True, exist_ok=True)
            _write_json_atomic(manifest, self.settings)
        remove_stale_temporaries(itertools.chain(self.path.glob(".*.tmp-*"),
                                                 (self.path / "regions").glob("*/.*.tmp-*")))


    def _has_features(self, path: Path) -> bool:
        """A feature file that exists and has the right header (reads the header only)."""
        if not path.is_file():
            return False
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            logger.warning("%s: unreadable feature file, extracting it again", path)
            return False
        return array.shape == (self.num_regions, FEATURE_DIM) and array.dtype == np.float16

    def _inspect(self, path: Path) -> tuple[str, np.ndarray | None] | FeatureProblem:
        """In a worker thread: ``(sha256, pixels)`` of an image to extract, ``(sha256, None)`` when its features
        exist, or the problem."""
        try:
            data = read_regular(path)
        except FileNotFoundError:
            return FeatureProblem(str(path), "file not found")
        except OSError as exc:
            return FeatureProblem(str(path), f"cannot read file ({exc.strerror or exc})")
        digest = hashlib.sha256(data).hexdigest()
        if self._has_features(self.feature_path(digest)):
            return digest, None
        try:
            return digest, load_image(data, self.input_size, self.max_pixels)
        except ImageError as exc:
            return FeatureProblem(str(path), str(exc))

    def _save(self, batch: list[tuple[str, np.ndarray]]) -> None:
        """Run the network on a batch of ``(sha256, pixels)`` and write each image's features."""
        if self._extractor is None:
            start = time.perf_counter()
            self._extractor = ImageFeatureExtractor(self.input_size, self.max_regions_per_image, self.threads,
                                                    self.batch_size, self.max_pixels)
            self._load_seconds = time.perf_counter() - start
        features = self._extractor.forward(np.stack([pixels for _, pixels in batch]))
        for (digest, _), regions in zip(batch, features):
            _save_npy(self.feature_path(digest), regions.astype(np.float16))

    def resolve(self, files: Sequence[str | os.PathLike[str]]) -> dict[Path, Path | FeatureProblem]:
        """Make sure every image file has features; returns each file's feature file, or its problem.

        Runs over the files in order with bounded prefetching (decoding and hashing in ``threads`` threads, the
        network in the main thread, ``batch_size`` images at a time); each batch's features are on disk before
        the next batch starts, so an interrupted run loses at most one batch. Writes ``index.jsonl`` and
        ``report.json`` at the end (:attr:`last_report` holds the report).
        """
        unique = list(dict.fromkeys(Path(f) for f in files))
        self._open()
        start = time.perf_counter()
        self._load_seconds = 0.0
        resolved: dict[Path, Path | FeatureProblem] = {}
        waiting: dict[str, list[Path]] = {}  # sha256 -> files with that content, queued for the network
        produced: set[str] = set()  # sha256 of the images extracted by this run
        batch: list[tuple[str, np.ndarray]] = []
        reused = extracted = duplicates = 0

        def flush() -> None:
            self._save(batch)
            for digest, _ in batch:
                produced.add(digest)
                for path in waiting.pop(digest):
                    resolved[path] = self.feature_path(digest)
            batch.clear()

        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="mrhp-decode")
        bar = progress_bar(total=len(unique), desc="image features", unit="image", show=self.progress, leave=False)
        try:
            with bar:
                for path, outcome in prefetch(pool, self._inspect, unique, 2 * self.batch_size):
                    bar.update()
                    if isinstance(outcome, FeatureProblem):
                        resolved[path] = outcome
                        continue
                    digest, pixels = outcome
                    # The same content under another name: queued or extracted earlier in this run.
                    if digest in waiting:
                        waiting[digest].append(path)
                        duplicates += 1
                    elif digest in produced:
                        resolved[path] = self.feature_path(digest)
                        duplicates += 1
                    elif pixels is None:
                        resolved[path] = self.feature_path(digest)
                        reused += 1
                    else:
                        waiting[digest] = [path]
                        batch.append((digest, pixels))
                        extracted += 1
                        if len(batch) == self.batch_size:
                            flush()
                if batch:
                    flush()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        seconds = time.perf_counter() - start
        self._finish(unique, resolved, seconds, extracted=extracted, reused=reused, duplicates=duplicates)
        return resolved

    def _finish(self, unique: list[Path], resolved: dict[Path, Path | FeatureProblem], seconds: float, *,
                extracted: int, reused: int, duplicates: int) -> None:
        """Write ``index.jsonl`` and ``report.json`` for a :meth:`resolve` run and keep the report."""
        # The rate leaves out loading the network (once per process, about a second).
        working = seconds - self._load_seconds
        failures = [{"file": str(p), "reason": r.reason} for p, r in resolved.items()
                    if isinstance(r, FeatureProblem)]
        report = {
            "folder": str(self.path),
            "settings": self.settings,
            "images": len(unique),
            "extracted": extracted,
            "already_extracted": reused,
            "duplicates": duplicates,
            "failed": len(failures),
            "failures": failures,
            "seconds": round(seconds, 3),
            "network_load_seconds": round(self._load_seconds, 3),
            "extracted_per_second": round(extracted / working, 2) if extracted and working > 0 else None,
        }
        lines = []
        for path in unique:
            value = resolved[path]
            problem = isinstance(value, FeatureProblem)
            lines.append(json.dumps({
                "file": str(path),
                "features": None if problem else str(value.relative_to(self.path)),
                "error": value.reason if problem else None,
            }, ensure_ascii=False) + "\n")
        write_text_atomic(self.path / "index.jsonl", "".join(lines))
        _write_json_atomic(self.path / "report.json", report)
        self.last_report = report
        logger.info("image features in %s: %d images, %d extracted, %d already there, %d failed (%.1f s)",
                    self.path, len(unique), extracted, reused, len(failures), seconds)


def format_folder_report(report: dict, listed: int = 20) -> str:
    """The report of :meth:`ImageFeatureFolder.resolve` in readable form (at most ``listed`` failures)."""
    rate = report["extracted_per_second"]
    lines = [
        f"image features: {report['folder']} ({report['settings']['regions_per_image']} regions of "
        f"{report['settings']['dim']} per image, input {report['settings']['input_size']} px)",
        f"  {report['images']} image files: {report['extracted']} extracted"
        + (f" ({rate} images/s)" if rate else "")
        + f", {report['already_extracted']} already extracted, {report['duplicates']} duplicates, "
        f"{report['failed']} failed",
    ]
    for failure in report["failures"][:listed]:
        lines.append(f"  failed: {failure['file']}: {failure['reason']}")
    if report["failed"] > listed:
        lines.append(f"  ... {report['failed'] - listed} more failures in {report['folder']}/report.json")
    return "\n".join(lines)
