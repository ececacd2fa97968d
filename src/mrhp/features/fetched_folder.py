"""A folder of downloaded images (its layout is described in :mod:`mrhp.features.fetch_images`): the download
outcomes, the manifest, and reading a finished folder for ``prepare --fetched``, which needs neither httpx nor
Pillow.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path

from mrhp import jsontext
from mrhp.data.jsonl import ImageFeatures, link_image_files
from mrhp.data.records import FeatureProblem, RawDataset
from mrhp.errors import DataError, MrhpError
from mrhp.outputs import write_text_atomic

logger = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
FILES = "files"
OUTCOMES = {
    "ok": "downloaded, an image",
    "not_found": "HTTP 404 or 410",
    "http_error": "another HTTP error status that is not retried (4xx, or an unexpected 1xx/3xx)",
    "server_error": "HTTP 5xx on every try",
    "rate_limited": "HTTP 429 on every try",
    "timed_out": "connect or read timeout, or no whole answer within the deadline, on every try",
    "private_address": "the host resolves to a loopback, private, link-local or other non-public address",
    "truncated": "the connection closed before the whole body came, on every try",
    "connection_error": "connection refused or reset, or the name did not resolve, on every try",
    "too_large": "more than max_bytes, declared or streamed",
    "not_an_image": "the bytes start with no known image magic number (HTML, text, ...)",
    "bad_image": "an image format that does not decode, or too many pixels (decompression bomb guard)",
    "redirect_loop": "a redirect back to a URL already visited",
    "too_many_redirects": "more than max_redirects redirects",
    "bad_scheme": "not http or https (the URL or a redirect target)",
    "bad_url": "not a URL that can be requested",
}
RETRIED = frozenset({"server_error", "rate_limited", "timed_out", "truncated", "connection_error"})
_FILE = re.compile(r"^files/[0-9a-f]{2}/[0-9a-f]{64}\.[a-z]{3,4}$")


def read_manifest(path: Path) -> dict[str, dict]:
    """The last line of each URL in a manifest ({} when there is none). A cut last line (a run killed while
    writing it) is ignored; any other bad line is a ``DataError`` naming it."""
    if not path.is_file():
        return {}
    lines = path.read_bytes().split(b"\n")
    entries: dict[str, dict] = {}
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            entry = jsontext.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            if number == len(lines):  # no newline after it: cut while being written
                logger.warning("%s: line %d is incomplete (an interrupted run); ignored", path, number)
                continue
            raise DataError("not a JSON object", file=path, line=number) from None
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str) or entry.get("outcome") not in OUTCOMES:
            raise DataError("expected an object with 'url' and a known 'outcome'", file=path, line=number)
        if entry["outcome"] == "ok" and not (isinstance(entry.get("file"), str) and _FILE.match(entry["file"])):
            raise DataError(f"expected files/xx/<sha256>.<ext>, got {entry.get('file')!r}", file=path, line=number,
                            field="file")
        entries[entry["url"]] = entry
    return entries


def write_manifest(path: Path, entries: Sequence[dict]) -> None:
    text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries)
    write_text_atomic(path, text)


def is_settled(folder: Path, entry: dict, retry_failed: bool) -> bool:
    """Whether a URL's manifest line needs no new download."""
    if entry["outcome"] == "ok":
        return (folder / entry["file"]).is_file()
    return not retry_failed and entry["outcome"] not in RETRIED


class FetchedImages:
    """The downloaded file of each URL of a fetch folder, for ``prepare --fetched``.

    :meth:`resolve` gives a URL's file, or the :class:`FeatureProblem` that masks its image: the download's
    outcome, or that the URL was never fetched. Such images are counted against the missing-image rate like a
    missing feature file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            raise MrhpError(f"{manifest}: no such manifest; download the images first with `mrhp fetch-images ... "
                            f"--out {self.path}`")
        self.entries = read_manifest(manifest)

    def resolve(self, url: str) -> Path | FeatureProblem:
        entry = self.entries.get(url)
        if entry is None:
            return FeatureProblem(url, f"not downloaded (no line in {self.path / MANIFEST}; run mrhp fetch-images)")
        if entry["outcome"] != "ok":
            return FeatureProblem(url, f"download failed: {entry['outcome']} ({entry['reason']})")
        return (self.path / entry["file"]).resolve()


def attach_fetched_images(raw: RawDataset, fetched: FetchedImages, image_features: ImageFeatures,
                          max_regions_per_item: int | None) -> None:
    """Give every item of a dump that has image URLs (``image_refs``) the features of its downloaded images; a
    failed download masks its image. The URLs stop being references only (they are in the fetch manifest)."""
    pending = []
    for split in raw.splits.values():
        for item in [*split.products, *split.reviews]:
            if item.image_refs:
                pending.append((item, [fetched.resolve(url) for url in item.image_refs]))
                item.image_refs = ()
    link_image_files(pending, image_features, None, max_regions_per_item)
