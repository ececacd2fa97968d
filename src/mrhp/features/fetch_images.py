"""Downloading a dataset's images from their URLs: what ``mrhp fetch-images`` runs and ``prepare --fetched`` reads.

Public datasets give images as URLs (Amazon Reviews'23 ``images`` / ``hi_res``, Amazon 2018 ``image``, a user's
JSON lines). :func:`fetch_images` downloads each URL once into a content-addressed folder; the files then go through
the image feature folder (:mod:`mrhp.features.image_folder`) like any image file. Layout of the folder::

    files/ab/<sha256>.<ext>   one file per distinct content (sha256 of the bytes, extension from the bytes' magic
                              number), written to a temporary name and renamed: a partial file never has its name
    manifest.jsonl            one line per URL: {"url", "items", "outcome", "reason", "status", "tries", "bytes",
                              "sha256", "file"}; appended while running, rewritten with one line per URL at the end

Nothing else is written, and no part of a URL ever becomes a path. Each URL is fetched with:

* a global cap on downloads in flight (``concurrency``) and a per-host request rate (``per_host_rate``);
* connect and read timeouts; up to ``retries`` retries on timeouts, 429 (after ``Retry-After`` when given), 5xx and
  broken connections, with exponential backoff (``backoff * 2^k``, at most ``max_backoff``) and jitter (a random
  factor in [0.5, 1], so that many failed downloads do not come back at the same instant); never on other 4xx;
* only ``http``/``https`` (the URL and every redirect target), at most ``max_redirects`` redirects, followed here so
  that each hop is checked and a loop is named as one;
* at most ``max_bytes`` per file: a larger ``Content-Length`` is refused before reading, and the body is counted
  while it streams (after content decoding, so a compressed bomb is stopped too);
* the content checked to be an image by its bytes, never by its header or name: a known magic number, then a full
  decode by :func:`mrhp.features.images.load_image` with the same ``max_pixels`` decompression-bomb guard as ``mrhp features``.

Outcomes (:data:`~mrhp.features.fetched_folder.OUTCOMES`); those of :data:`~mrhp.features.fetched_folder.RETRIED`
are transient, so a rerun tries them again, while the others are final unless ``retry_failed``. A rerun (after a
kill, or with more URLs) fetches only URLs without a final line or whose file is gone. Memory: at most
``concurrency * max_bytes`` of bodies at once.

The ``fetch`` extra (``pip install 'mrhp[fetch]'``: httpx for the protocol, Pillow for the check) is needed to
download; reading a finished folder (:class:`~mrhp.features.fetched_folder.FetchedImages`) needs neither.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import importlib.util
import ipaddress
import itertools
import json
import logging
import math
import random
import socket
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from mrhp import __version__
from mrhp.data.prepared import PreparedDataset
from mrhp.errors import MrhpError
from mrhp.features.fetched_folder import (
    FILES,
    MANIFEST,
    RETRIED,
    is_settled,
    read_manifest,
    write_manifest,
)
from mrhp.features.image_folder import remove_stale_temporaries
from mrhp.features.images import DEFAULT_MAX_PIXELS, ImageError, load_image
from mrhp.outputs import write_atomic
from mrhp.progress import progress_bar

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger(__name__)

FETCH_EXTRAS = ("httpx", "PIL")
INSTALL_HINT = "pip install 'mrhp[fetch]' (httpx, pillow)"
# Magic numbers of the formats Pillow decodes for mrhp.features.images, and the suffix their file gets (one of
# mrhp.data.jsonl.RAW_IMAGE_SUFFIXES, so that the files are taken as image files).
_MAGIC = ((b"\xff\xd8\xff", ".jpg"), (b"\x89PNG\r\n\x1a\n", ".png"), (b"GIF87a", ".gif"), (b"GIF89a", ".gif"),
          (b"BM", ".bmp"), (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"))
_CHECK_SIZE = 32  # the check decodes every pixel but resizes to this side only; the features come later


@dataclass(frozen=True)
class FetchSettings:
    """How :func:`fetch_images` downloads; ``mrhp fetch-images`` makes one option of each field."""

    concurrency: int = field(default=16, metadata={"help": "downloads in flight at once, over all hosts"})
    per_host_rate: float = field(default=10.0, metadata={"help": "requests per second to one host (0 = no limit)"})
    connect_timeout: float = field(default=10.0, metadata={"help": "seconds to connect"})
    read_timeout: float = field(default=30.0, metadata={"help": "seconds without a byte from the server"})
    retries: int = field(default=3, metadata={
        "help": "retries after the first try, on timeouts, 429, 5xx and broken connections"})
    backoff: float = field(default=1.0, metadata={
        "help": "seconds before the first retry; doubled each retry, jittered"})
    max_backoff: float = field(default=60.0, metadata={"help": "longest wait between tries"})
    max_retry_after: float = field(default=300.0, metadata={
        "help": "longest Retry-After honoured (longer ones wait this)"})
    max_bytes: int = field(default=20 * 2**20, metadata={"help": "larger files are refused (too_large)"})
    max_redirects: int = field(default=5, metadata={"help": "more redirects are refused (too_many_redirects)"})
    max_pixels: int = field(default=DEFAULT_MAX_PIXELS, metadata={
        "help": "images with more pixels are refused (decompression bomb guard, as in mrhp features)"})
    user_agent: str = field(default=f"mrhp/{__version__} (fetch-images)", metadata={"help": "User-Agent header"})
    deadline: float = field(default=120.0, metadata={
        "help": "seconds for one try of a file, all of it (a server that trickles bytes is given up)"})
    allow_private_addresses: bool = field(default=False, metadata={
        "help": "also fetch from loopback, private, link-local and other non-public addresses (refused by default: "
                "a dataset's URLs could otherwise reach your internal network)"})

    def __post_init__(self) -> None:
        for setting in fields(self):
            value = getattr(self, setting.name)
            option = f"--{setting.name.replace('_', '-')}"
            # NaN passes every comparison test below as False, and inf would never end a wait.
            if isinstance(value, float) and not math.isfinite(value):
                raise MrhpError(f"{option} must be a finite number, got {value}")
            if isinstance(value, (int, float)) and value < 0:
                raise MrhpError(f"{setting.name} must be >= 0, got {value}")
        if not (self.user_agent.isascii() and self.user_agent.isprintable()):
            raise MrhpError(f"--user-agent must be printable ASCII (an HTTP header value), got {self.user_agent!r}")
        for name in ("concurrency", "max_bytes", "max_pixels"):
            if getattr(self, name) < 1:
                raise MrhpError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("connect_timeout", "read_timeout", "deadline"):
            if getattr(self, name) <= 0:
                raise MrhpError(f"{name} must be > 0, got {getattr(self, name)}")


def require_fetch_extra() -> None:
    """Raise ``MrhpError`` with the install command when the ``fetch`` extra is missing."""
    missing = [name for name in FETCH_EXTRAS if importlib.util.find_spec(name) is None]
    if missing:
        raise MrhpError(f"downloading images needs the optional packages {', '.join(missing)}: {INSTALL_HINT}")


def image_suffix(data: bytes) -> str | None:
    """The file suffix of an image format recognised by its magic number, or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return next((suffix for magic, suffix in _MAGIC if data.startswith(magic)), None)


# ----------------------------------------------------------------------------------------------------------------
# Sources of URLs: each URL with the items that list it


def read_prepared_image_urls(path: str | Path) -> dict[str, list[str]]:
    """The image URLs a prepared dataset keeps as references (``{split}/{kind}_image_refs.json``, what the dump
    converters write), each with its items (``"train review R1"``), in order of first appearance."""
    dataset = PreparedDataset.open(path)
    urls: dict[str, list[str]] = {}
    for name in dataset.splits:
        split = dataset.split(name)
        for kind, ids in (("product", split.product_ids), ("review", split.review_ids)):
            for item_id, refs in zip(ids, split.image_refs(kind) or []):
                for url in refs:
                    urls.setdefault(url, []).append(f"{name} {kind} {item_id}")
    return urls


# ----------------------------------------------------------------------------------------------------------------
# Downloading


@dataclass
class _Result:
    outcome: str
    reason: str = ""
    status: int | None = None
    bytes: int = 0
    sha256: str | None = None
    file: str | None = None
    retry_after: float | None = None  # seconds asked by a 429, for the next try only


def _retry_after(value: str | None, cap: float) -> float | None:
    """Seconds of a ``Retry-After`` header (delta-seconds or an HTTP date), at most ``cap``; None if absent/bad."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), cap)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(max(0.0, when.timestamp() - time.time()), cap)


class _Downloader:
    """One URL at a time per call of :meth:`fetch`, on a shared client; the host schedule spaces requests."""

    def __init__(self, folder: Path, settings: FetchSettings, client: httpx.AsyncClient) -> None:
        self.folder = folder
        self.settings = settings
        self.client = client
        self.next_slot: dict[str, float] = {}  # host -> earliest loop time of its next request

    async def _turn(self, host: str) -> None:
        """Wait for this host's next request slot (per_host_rate); claiming it needs no lock in one event loop."""
        if self.settings.per_host_rate == 0:
            return
        now = asyncio.get_running_loop().time()
        start = max(now, self.next_slot.get(host, now))
        self.next_slot[host] = start + 1.0 / self.settings.per_host_rate
        if start > now:
            await asyncio.sleep(start - now)

    async def fetch(self, url: str) -> tuple[_Result, int]:
        """The final result of a URL and the number of tries it took."""
        tries = self.settings.retries + 1
        for attempt in range(1, tries + 1):
            try:
                result = await asyncio.wait_for(self._try(url), self.settings.deadline)
            except TimeoutError:
                result = _Result("timed_out", f"no complete answer within --deadline {self.settings.deadline:g} s")
            if result.outcome not in RETRIED or attempt == tries:
                if result.outcome in RETRIED:
                    result.reason = f"{result.reason}; after {attempt} tries"
                return result, attempt
            delay = min(self.settings.max_backoff, self.settings.backoff * 2 ** (attempt - 1))
            delay *= random.uniform(0.5, 1.0)
            await asyncio.sleep(delay if result.retry_after is None else result.retry_after)
        raise AssertionError("unreachable: the last try returns")

    async def _try(self, url: str) -> _Result:
        """One try: the request and every redirect it leads to."""
        import httpx  # noqa: PLC0415 (optional extra)

        visited = {url}
        current = url
        for _ in range(self.settings.max_redirects + 1):
            try:
                target = httpx.URL(current)
                _ = target.host  # decodes an IDNA host: a malformed "xn--" label fails this URL only
            except (httpx.InvalidURL, UnicodeError, ValueError) as exc:
                return _Result("bad_url", f"{current}: {exc}")
            hop = "" if current == url else f" (redirected to {current})"
            if target.scheme not in ("http", "https"):
                return _Result("bad_scheme", f"scheme {target.scheme!r}{hop}; only http and https are fetched")
            if not target.host:
                return _Result("bad_url", f"no host{hop}")
            refused = await self._refused_address(target, hop)
            if refused is not None:
                return refused
            host = f"{target.host}:{target.port or target.scheme}"
            await self._turn(host)
            try:
                async with self.client.stream("GET", target) as response:
                    if response.has_redirect_location:
                        current = str(target.join(response.headers["location"]))
                        if current in visited:
                            return _Result("redirect_loop", f"{response.status_code} back to {current}",
                                           response.status_code)
                        visited.add(current)
                        continue
                    return await self._receive(response, host)
            except httpx.TimeoutException as exc:
                return _Result("timed_out", f"{type(exc).__name__}{hop}")
            except httpx.InvalidURL as exc:
                return _Result("bad_url", f"{exc}{hop}")
            except httpx.TransportError as exc:
                return _Result("connection_error", f"{type(exc).__name__}: {str(exc)[:200]}{hop}")
            except (UnicodeError, ValueError, OverflowError) as exc:  # a host IDNA cannot encode, a bad port, ...
                return _Result("bad_url", f"{type(exc).__name__}: {str(exc)[:200]}{hop}")
        return _Result("too_many_redirects", f"more than {self.settings.max_redirects} redirects (last: {current})")

    async def _refused_address(self, target: httpx.URL, hop: str) -> _Result | None:
        """A result that fails the URL when its port is out of range or its host resolves to an address that is
        not public (loopback, private, link-local, ...; unless `allow_private_addresses`); None to go on. Every
        redirect hop is checked the same way. (The connection resolves the name again: a name that changes its
        address in between is not caught.)"""
        port = target.port or (443 if target.scheme == "https" else 80)
        if not 1 <= port <= 65535:
            return _Result("bad_url", f"port {port} is out of range{hop}")
        if self.settings.allow_private_addresses:
            return None
        try:
            found = await asyncio.get_running_loop().getaddrinfo(target.host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError, ValueError) as exc:
            return _Result("connection_error", f"cannot resolve {target.host!r} ({exc}){hop}")
        for *_, address in found:
            ip = ipaddress.ip_address(address[0].split("%", 1)[0])
            ip = getattr(ip, "ipv4_mapped", None) or ip
            if not ip.is_global:
                return _Result("private_address", f"{target.host} resolves to {ip}, not a public address{hop}; "
                                                  "--allow-private-addresses fetches it")
        return None

    async def _receive(self, response: httpx.Response, host: str) -> _Result:
        """The body of a final response, read within the byte cap, then checked and stored."""
        import httpx  # noqa: PLC0415 (optional extra)

        status = response.status_code
        if status == 429:
            wait = _retry_after(response.headers.get("retry-after"), self.settings.max_retry_after)
            if wait is not None:  # the whole host waits, not only this URL
                loop_time = asyncio.get_running_loop().time()
                self.next_slot[host] = max(self.next_slot.get(host, loop_time), loop_time + wait)
            return _Result("rate_limited", "HTTP 429" + (f", Retry-After {wait:g} s" if wait is not None else ""),
                           status, retry_after=wait)
        if status in (404, 410):
            return _Result("not_found", f"HTTP {status}", status)
        if status >= 500:
            return _Result("server_error", f"HTTP {status}", status)
        if not 200 <= status < 300:
            return _Result("http_error", f"HTTP {status}", status)
        cap = self.settings.max_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            return _Result("too_large", f"Content-Length {declared} above the cap of {cap} bytes", status)
        body = bytearray()
        try:
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > cap:
                    return _Result("too_large", f"more than the cap of {cap} bytes (stopped reading)", status,
                                   len(body))
        except httpx.RemoteProtocolError as exc:
            return _Result("truncated", f"{str(exc)[:200]}", status, len(body))
        # Decoding the whole image is CPU work: off the event loop, so downloads keep streaming meanwhile.
        return await asyncio.to_thread(self._store, bytes(body), status)

    def _store(self, data: bytes, status: int) -> _Result:
        suffix = image_suffix(data)
        if suffix is None:
            # The bytes are never echoed: an internal service's answer must not end up in the manifest or report.
            return _Result("not_an_image", f"{len(data)} bytes of no known image format", status, len(data))
        try:
            load_image(data, _CHECK_SIZE, self.settings.max_pixels)
        except ImageError as exc:
            return _Result("bad_image", str(exc), status, len(data))
        digest = hashlib.sha256(data).hexdigest()
        relative = f"{FILES}/{digest[:2]}/{digest}{suffix}"
        path = self.folder / relative
        if not path.is_file():  # the same content from another URL is stored once
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, lambda temporary: temporary.write_bytes(data))
        return _Result("ok", "", status, len(data), digest, relative)


def _entry(url: str, items: Sequence[str], result: _Result, tries: int) -> dict:
    return {"url": url, "items": list(items), "outcome": result.outcome, "reason": result.reason,
            "status": result.status, "tries": tries, "bytes": result.bytes, "sha256": result.sha256,
            "file": result.file}


async def _download(todo: list[str], urls: Mapping[str, Sequence[str]], folder: Path, settings: FetchSettings,
                    progress: bool) -> dict[str, dict]:
    """Fetch ``todo`` with ``concurrency`` workers, appending each result to the manifest as it comes."""
    import httpx  # noqa: PLC0415 (optional extra)

    results: dict[str, dict] = {}
    pending = iter(todo)  # shared by the workers: next() never awaits, so each URL goes to one worker
    downloaded = 0
    limits = httpx.Limits(max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency)
    timeout = httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout)
    bar = progress_bar(total=len(todo), desc="fetch images", unit="file", show=progress, leave=False)
    client = httpx.AsyncClient(limits=limits, timeout=timeout, follow_redirects=False,
                               headers={"User-Agent": settings.user_agent})
    async with client:
        downloader = _Downloader(folder, settings, client)
        with bar, (folder / MANIFEST).open("a", encoding="utf-8") as log:

            async def worker() -> None:
                nonlocal downloaded
                for url in pending:
                    result, tries = await downloader.fetch(url)
                    entry = _entry(url, urls[url], result, tries)
                    results[url] = entry
                    log.write(json.dumps(entry, ensure_ascii=False) + "\n")
                    log.flush()
                    downloaded += entry["bytes"] if result.outcome == "ok" else 0
                    bar.update()
                    bar.set_postfix_str(f"{downloaded / 2**20:.1f} MiB", refresh=False)

            await asyncio.gather(*(worker() for _ in range(min(settings.concurrency, len(todo)))))
    return results


def fetch_images(urls: Mapping[str, Sequence[str]], folder: str | Path, settings: FetchSettings = FetchSettings(),
                 *, retry_failed: bool = False, progress: bool = True) -> dict:
    """Download every URL of ``urls`` (URL -> the items that list it) into ``folder`` (see the module docstring).

    Resumes a folder: URLs with a final manifest line (``ok`` with its file present, or a failure not in
    :data:`RETRIED` unless ``retry_failed``) are not fetched again. Returns the report
    (:func:`format_fetch_report`); the manifest then has one line per URL, lines of other URLs kept.
    """
    require_fetch_extra()
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise MrhpError(f"{folder}: exists and is not a folder")
    (folder / FILES).mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(itertools.chain(folder.glob(".*.tmp-*"), (folder / FILES).glob("*/.*.tmp-*")))
    manifest = folder / MANIFEST
    previous = read_manifest(manifest)
    # Rewritten before appending: drops repeated lines and a cut last line, which would break the next line.
    write_manifest(manifest, list(previous.values()))
    settled = {url: entry for url, entry in previous.items() if url in urls and is_settled(folder, entry, retry_failed)}
    todo = [url for url in urls if url not in settled]
    start = time.perf_counter()
    fresh = asyncio.run(_download(todo, urls, folder, settings, progress)) if todo else {}
    seconds = time.perf_counter() - start
    entries = {url: fresh[url] if url in fresh else {**settled[url], "items": list(urls[url])} for url in urls}
    write_manifest(manifest, [*entries.values(), *(e for url, e in previous.items() if url not in urls)])
    ok_bytes = sum(e["bytes"] for e in fresh.values() if e["outcome"] == "ok")
    report = {
        "folder": str(folder),
        "urls": len(urls),
        "fetched": len(todo),
        "already_done": len(settled),
        "outcomes": dict(Counter(e["outcome"] for e in entries.values()).most_common()),
        "files": len({e["file"] for e in entries.values() if e["outcome"] == "ok"}),
        "bytes_downloaded": ok_bytes,
        "seconds": round(seconds, 3),
        "files_per_second": round(sum(e["outcome"] == "ok" for e in fresh.values()) / seconds, 2) if fresh else None,
        "bytes_per_second": round(ok_bytes / seconds) if fresh else None,
        "failures": [{"url": e["url"], "outcome": e["outcome"], "reason": e["reason"]}
                     for e in entries.values() if e["outcome"] != "ok"],
    }
    logger.info("fetched images into %s: %d URLs, %d fetched now, %d already done, outcomes %s (%.1f s)", folder,
                len(urls), len(todo), len(settled), report["outcomes"], seconds)
    return report


def format_fetch_report(report: dict, listed: int = 20) -> str:
    """The report of :func:`fetch_images` in readable form (at most ``listed`` failures)."""
    rate = ""
    if report["files_per_second"] is not None:
        rate = f" ({report['files_per_second']} files/s, {report['bytes_per_second'] / 2**20:.2f} MiB/s)"
    outcomes = ", ".join(f"{name} {count}" for name, count in report["outcomes"].items())
    lines = [
        f"images from URLs: {report['folder']}",
        f"  {report['urls']} URLs: {report['fetched']} fetched now{rate}, {report['already_done']} already done; "
        f"{outcomes}; {report['files']} distinct files",
    ]
    for failure in report["failures"][:listed]:
        lines.append(f"  {failure['outcome']}: {failure['url']}: {failure['reason']}")
    if len(report["failures"]) > listed:
        lines.append(f"  ... {len(report['failures']) - listed} more failures in {report['folder']}/{MANIFEST}")
    return "\n".join(lines)
