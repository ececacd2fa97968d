"""`mrhp fetch-images` against a local HTTP server on 127.0.0.1 (a free port) that serves generated images and every
failure the downloader must name; then `prepare --fetched` masks failed downloads and extracts the same features
from downloaded files as from the same files on disk. Nothing leaves this machine: the server is the only host."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("httpx")
pytest.importorskip("PIL")

from PIL import Image  # noqa: E402
from support import write_lines  # noqa: E402

from mrhp.cli import main  # noqa: E402
from mrhp.data.jsonl import read_jsonl  # noqa: E402
from mrhp.data.records import FeatureProblem  # noqa: E402
from mrhp.errors import DataError  # noqa: E402
from mrhp.features.fetch_images import FetchSettings, fetch_images  # noqa: E402
from mrhp.features.fetched_folder import MANIFEST, FetchedImages, read_manifest  # noqa: E402
from mrhp.features.images import images_available  # noqa: E402

# Tiny timeouts and backoff so that the file runs in seconds; 3 tries per URL.
SETTINGS = FetchSettings(concurrency=4, per_host_rate=0, connect_timeout=1.0, read_timeout=0.3, retries=2,
                         backoff=0.01, max_backoff=0.05, max_retry_after=2.0, max_bytes=150_000, max_redirects=3,
                         max_pixels=1_000_000, allow_private_addresses=True)
SETTING_ARGS = [arg for f, value in (("concurrency", 4), ("per-host-rate", 0), ("connect-timeout", 1.0),
                                     ("read-timeout", 0.3), ("retries", 2), ("backoff", 0.01), ("max-backoff", 0.05),
                                     ("max-retry-after", 2.0), ("max-bytes", 150_000), ("max-redirects", 3),
                                     ("max-pixels", 1_000_000))
                for arg in (f"--{f}", str(value))] + ["--allow-private-addresses"]


def image_bytes(seed: int, fmt: str = "JPEG", size: tuple[int, int] = (96, 64)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def bomb_png() -> bytes:
    """A small PNG that is 2000 x 2000 = 4 million pixels, above the tests' limit of 1 million."""
    buffer = io.BytesIO()
    Image.new("L", (2000, 2000)).save(buffer, "PNG")
    return buffer.getvalue()


class _Quiet(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A client that hung up (a timeout, a refused body) is what several routes test, not an error."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class Server:
    """Routes of the local server; `requests[path]` holds the times each path was requested."""

    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency
        self.images = {k: image_bytes(k) for k in range(12)}
        self.images_png = {k: image_bytes(100 + k, "PNG") for k in range(2)}
        self.bomb = bomb_png()
        self.requests: dict[str, list[float]] = {}
        self.lock = threading.Lock()
        self.httpd = _Quiet(("127.0.0.1", 0), self._handler())
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return self.base + path

    def count(self, path: str) -> int:
        with self.lock:
            return len(self.requests.get(path, []))

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def send(self, status: int, body: bytes = b"", headers: dict | None = None, length: int | None = None):
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                if length is not None:
                    self.send_header("Content-Length", str(length))
                self.end_headers()
                self.wfile.write(body)

            def redirect(self, location: str) -> None:
                self.send(302, headers={"Location": location}, length=0)

            def do_GET(self) -> None:
                path = self.path
                with server.lock:
                    server.requests.setdefault(path, []).append(time.monotonic())
                    seen = len(server.requests[path])
                if server.latency:
                    time.sleep(server.latency)
                image = server.images[0]
                if path.startswith("/img/"):
                    body = server.images[int(path.split("/")[2].split(".")[0])]
                    self.send(200, body, {"Content-Type": "image/jpeg"}, len(body))
                elif path.startswith("/noext/"):
                    body = server.images_png[int(path.split("/")[2])]
                    self.send(200, body, {"Content-Type": "application/octet-stream"}, len(body))
                elif path == "/missing":
                    self.send(404, b"no", length=2)
                elif path == "/forbidden":
                    self.send(403, b"no", length=2)
                elif path == "/flaky":
                    if seen == 1:
                        self.send(500, b"oops", length=4)
                    else:
                        self.send(200, server.images[1], {"Content-Type": "image/jpeg"}, len(server.images[1]))
                elif path == "/down":
                    self.send(503, b"down", length=4)
                elif path == "/limited":
                    if seen == 1:
                        self.send(429, b"", {"Retry-After": "1"}, 0)
                    else:
                        self.send(200, server.images[2], {"Content-Type": "image/jpeg"}, len(server.images[2]))
                elif path == "/slow":
                    time.sleep(1.0)
                    self.send(200, image, length=len(image))
                elif path == "/truncated":
                    self.send(200, image[: len(image) // 2], {"Content-Type": "image/jpeg"}, len(image))
                elif path == "/huge-declared":
                    self.send(200, b"", {"Content-Type": "image/jpeg"}, 10**9)
                elif path == "/huge-stream":
                    # No Content-Length: the body ends when the connection closes (HTTP/1.0), so only counting the
                    # streamed bytes can stop it.
                    self.send(200, b"", {"Content-Type": "image/jpeg"})
                    for _ in range(40):
                        self.wfile.write(b"\xff\xd8\xff" + bytes(10_000))
                elif path == "/html":
                    body = b"<!doctype html><html><body>Sorry, this image moved</body></html>"
                    self.send(200, body, {"Content-Type": "image/jpeg"}, len(body))
                elif path == "/corrupt":
                    body = image[:200] + bytes(2000)
                    self.send(200, body, {"Content-Type": "image/jpeg"}, len(body))
                elif path == "/bomb":
                    self.send(200, server.bomb, {"Content-Type": "image/png"}, len(server.bomb))
                elif path == "/loop-a":
                    self.redirect("/loop-b")
                elif path == "/loop-b":
                    self.redirect(server.url("/loop-a"))
                elif path.startswith("/chain/"):
                    self.redirect(f"/chain/{int(path.split('/')[2]) + 1}")
                elif path == "/to-ftp":
                    self.redirect("ftp://127.0.0.1/image.jpg")
                elif path == "/moved":
                    self.send(301, headers={"Location": "/img/0.jpg"}, length=0)
                else:
                    self.send(404, b"", length=0)

        return Handler

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """The client must talk to 127.0.0.1 directly, whatever proxy the environment names."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# URL path (or full URL with {base}) -> expected outcome, HTTP status, tries.
CASES = {
    "/img/0.jpg": ("ok", 200, 1),
    "/noext/0": ("ok", 200, 1),
    "/moved": ("ok", 200, 1),
    "/missing": ("not_found", 404, 1),
    "/forbidden": ("http_error", 403, 1),
    "/flaky": ("ok", 200, 2),
    "/down": ("server_error", 503, 3),
    "/limited": ("ok", 200, 2),
    "/slow": ("timed_out", None, 3),
    "/truncated": ("truncated", 200, 3),
    "/huge-declared": ("too_large", 200, 1),
    "/huge-stream": ("too_large", 200, 1),
    "/html": ("not_an_image", 200, 1),
    "/corrupt": ("bad_image", 200, 1),
    "/bomb": ("bad_image", 200, 1),
    "/loop-a": ("redirect_loop", 302, 1),
    "/chain/0": ("too_many_redirects", None, 1),
    "/to-ftp": ("bad_scheme", None, 1),
    "file:///etc/passwd": ("bad_scheme", None, 1),
    "http://127.0.0.1:{closed}/x.jpg": ("connection_error", None, 3),
}


def dataset_with_urls(folder: Path, urls: list[str]) -> tuple[Path, Path]:
    """Products P0.. with one URL each (the first also a review's), and one review per product."""
    products = write_lines(folder / "products.jsonl", [
        {"product_id": f"P{k}", "text": "a pot", "split": "train", "images": [url]} for k, url in enumerate(urls)])
    reviews = write_lines(folder / "reviews.jsonl", [
        {"review_id": f"R{k}", "product_id": f"P{k}", "text": "fine", "votes": k,
         "images": [urls[0]] if k == 0 else []} for k in range(len(urls))])
    return products, reviews


def test_every_outcome_in_the_manifest(tmp_path: Path) -> None:
    closed = closed_port()
    with Server() as server:
        urls = [server.url(c) if c.startswith("/") else c.format(closed=closed) for c in CASES]
        products, reviews = dataset_with_urls(tmp_path, urls)
        out = tmp_path / "fetched"
        start = time.perf_counter()
        assert main(["fetch-images", "--products", str(products), "--reviews", str(reviews), "--out", str(out),
                     *SETTING_ARGS, "--no-progress"]) == 0
        seconds = time.perf_counter() - start
        limited = server.requests["/limited"]
        forbidden, missing = server.count("/forbidden"), server.count("/missing")
    lines = [json.loads(line) for line in (out / MANIFEST).read_text(encoding="utf-8").splitlines()]
    assert [line["url"] for line in lines] == urls  # one line per URL, in input order
    for line, (outcome, status, tries) in zip(lines, CASES.values()):
        assert (line["outcome"], line["status"], line["tries"]) == (outcome, status, tries), line
        if outcome == "ok":
            data = (out / line["file"]).read_bytes()
            assert len(data) == line["bytes"] and line["file"].endswith(line["sha256"] + Path(line["file"]).suffix)
        else:
            assert line["file"] is None and line["reason"]
    by_url = {line["url"]: line for line in lines}
    assert by_url[urls[0]]["items"] == ["product P0", "review R0"]
    assert by_url[server.url("/noext/0")]["file"].endswith(".png")  # the suffix comes from the bytes
    assert by_url[server.url("/moved")]["file"] == by_url[urls[0]]["file"]  # same content, one file
    assert "decompression bomb" in by_url[server.url("/bomb")]["reason"]
    assert "after 3 tries" in by_url[server.url("/slow")]["reason"]
    assert "ftp" in by_url[server.url("/to-ftp")]["reason"]
    assert limited[1] - limited[0] >= 0.9  # Retry-After: 1 was honoured
    assert forbidden == 1 and missing == 1  # other 4xx are not retried
    assert seconds < 20
    # Only files/ and the manifest, and no temporary file anywhere.
    assert sorted(p.name for p in out.iterdir()) == ["files", MANIFEST]
    stored = [p for p in (out / "files").rglob("*") if p.is_file()]
    assert all(not p.name.startswith(".") for p in stored)
    assert len(stored) == 4  # img/0 (also /moved), noext/0, flaky, limited
    (tmp_path / "every_outcome_manifest.jsonl").write_text((out / MANIFEST).read_text(encoding="utf-8"))


def test_rerun_fetches_only_what_is_missing(tmp_path: Path) -> None:
    with Server() as server:
        urls = {server.url(f"/img/{k}.jpg"): [f"item {k}"] for k in range(3)} | {server.url("/down"): ["x"],
                                                                                  server.url("/missing"): ["y"]}
        fetch_images(urls, tmp_path / "out", SETTINGS, progress=False)
        first = {path: len(times) for path, times in server.requests.items()}
        report = fetch_images(urls, tmp_path / "out", SETTINGS, progress=False)
        # The 503 is transient, so it is tried again; the 404 and the images are final.
        assert report["fetched"] == 1 and report["already_done"] == 4
        assert server.count("/down") == first["/down"] + 3 and server.count("/missing") == 1
        assert all(server.count(f"/img/{k}.jpg") == 1 for k in range(3))
        report = fetch_images(urls, tmp_path / "out", SETTINGS, retry_failed=True, progress=False)
        assert report["fetched"] == 2 and server.count("/missing") == 2
    assert len(read_manifest(tmp_path / "out" / MANIFEST)) == 5
    assert len((tmp_path / "out" / MANIFEST).read_text().splitlines()) == 5


def test_killed_run_resumes_with_every_file_once(tmp_path: Path) -> None:
    with Server(latency=0.15) as server:
        paths = [f"/img/{k}.jpg" for k in range(12)]
        products, reviews = dataset_with_urls(tmp_path, [server.url(p) for p in paths])
        out = tmp_path / "fetched"
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()} | {"OMP_NUM_THREADS": "1"}
        command = [sys.executable, "-m", "mrhp.cli", "fetch-images", "--products", str(products), "--reviews",
                   str(reviews), "--out", str(out), "--concurrency", "2", "--per-host-rate", "0", "--no-progress",
                   "--allow-private-addresses"]
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                manifest = out / MANIFEST
                if manifest.is_file() and len(manifest.read_text().splitlines()) >= 4:
                    break
                time.sleep(0.02)
            process.send_signal(signal.SIGKILL)
        finally:
            process.wait()
        done = read_manifest(out / MANIFEST)
        assert 4 <= len(done) < len(paths), "the run was killed mid-way"
        report = fetch_images({server.url(p): ["x"] for p in paths}, out, SETTINGS, progress=False)
        assert report["already_done"] == len(done) and report["fetched"] == len(paths) - len(done)
        for url in done:  # nothing finished before the kill was fetched again
            assert server.count(url.removeprefix(server.base)) == 1
    entries = read_manifest(out / MANIFEST)
    assert len(entries) == len(paths) and all(e["outcome"] == "ok" for e in entries.values())
    assert len((out / MANIFEST).read_text().splitlines()) == len(paths)
    stored = sorted(p for p in (out / "files").rglob("*") if p.is_file())
    assert len(stored) == len(paths) and not [p for p in stored if p.name.startswith(".")]
    assert sorted(p.read_bytes() for p in stored) == sorted(server.images.values())


def test_cut_last_manifest_line_is_ignored_and_other_bad_lines_named(tmp_path: Path) -> None:
    manifest = tmp_path / MANIFEST
    good = {"url": "http://127.0.0.1/a", "outcome": "not_found", "reason": "HTTP 404"}
    manifest.write_text(json.dumps(good) + "\n" + '{"url": "http://127.0.0.1/b", "outc')
    assert list(read_manifest(manifest)) == ["http://127.0.0.1/a"]
    manifest.write_text("{oops\n" + json.dumps(good) + "\n")
    with pytest.raises(DataError, match=rf"{MANIFEST}, line 1"):
        read_manifest(manifest)
    bad_file = {**good, "outcome": "ok", "file": "../../etc/passwd"}
    manifest.write_text(json.dumps(bad_file) + "\n")
    with pytest.raises(DataError, match="field 'file'"):
        read_manifest(manifest)


def test_urls_without_fetched_are_refused(tmp_path: Path) -> None:
    products, reviews = dataset_with_urls(tmp_path, ["http://127.0.0.1:9/a.jpg"])
    with pytest.raises(DataError, match=r"products.jsonl, line 1, field 'images'.*mrhp fetch-images"):
        read_jsonl(products, reviews)


needs_images = pytest.mark.skipif(not images_available(), reason="needs the images extra (pip install 'mrhp[images]')")


@needs_images
def test_downloaded_files_give_the_features_of_the_same_files_on_disk(tmp_path: Path, one_thread) -> None:
    from mrhp.features.image_folder import ImageFeatureFolder

    with Server() as server:
        paths = ["/img/0.jpg", "/noext/1", "/img/3.jpg", "/missing"]
        products, reviews = dataset_with_urls(tmp_path, [server.url(p) for p in paths])
        out = tmp_path / "fetched"
        assert main(["fetch-images", "--products", str(products), "--reviews", str(reviews), "--out", str(out),
                     *SETTING_ARGS, "--no-progress"]) == 0
        on_disk = {"/img/0.jpg": server.images[0], "/noext/1": server.images_png[1], "/img/3.jpg": server.images[3]}
    local = tmp_path / "local"
    local.mkdir()
    for k, path in enumerate(paths[:3]):
        (local / f"{k}.img.{'png' if 'noext' in path else 'jpg'}").write_bytes(on_disk[path])
    local_products = write_lines(local / "products.jsonl", [
        {"product_id": f"P{k}", "text": "a pot", "split": "train", "images": [f"{k}.img.{'png' if k == 1 else 'jpg'}"]}
        for k in range(3)])
    local_reviews = write_lines(local / "reviews.jsonl", [
        {"review_id": f"R{k}", "product_id": f"P{k}", "text": "fine", "votes": k} for k in range(3)])

    def folder(path: Path) -> ImageFeatureFolder:
        return ImageFeatureFolder(path, threads=1, batch_size=4, progress=False)

    fetched = FetchedImages(out)
    assert isinstance(fetched.resolve(server.url("/missing")), FeatureProblem)
    with pytest.raises(DataError, match="download failed: not_found"):
        read_jsonl(products, reviews, max_missing_image_rate=0.0, image_features=folder(tmp_path / "f1").resolve,
                   fetched=fetched.resolve)
    raw = read_jsonl(products, reviews, max_missing_image_rate=0.5, image_features=folder(tmp_path / "f1").resolve,
                     fetched=fetched.resolve)
    disk = read_jsonl(local_products, local_reviews, image_features=folder(tmp_path / "f2").resolve)
    downloaded = raw.splits["train"].products
    for k, product in enumerate(disk.splits["train"].products):
        a, b = downloaded[k].features.load(), product.features.load()
        assert not a.problems and not b.problems
        np.testing.assert_array_equal(a.regions, b.regions)
    masked = downloaded[3].features.load()  # every image failed: no regions, the problem listed
    assert masked.regions.size == 0 and "not_found" in masked.problems[0].reason
    # The command line: the rate applies, and a dump's URLs (kept as references) resolve the same way.
    args = ["prepare", "--format", "jsonl", "--products", str(products), "--reviews", str(reviews),
            "--fetched", str(out), "--threads", "1", "--min-count", "1"]
    assert main([*args, "--out", str(tmp_path / "p0")]) == 2
    assert main([*args, "--max-missing-image-rate", "0.5", "--out", str(tmp_path / "p1")]) == 0


@needs_images
def test_a_dumps_references_from_a_prepared_dataset(tmp_path: Path, one_thread) -> None:
    from mrhp.data.prepared import PreparedDataset

    with Server() as server:
        rows = [{"item": f"i{p}", "rid": f"r{p}-{k}", "body": f"review {k} words", "helpful": k,
                 "pics": [server.url(f"/img/{p * 3 + k}.jpg")] if k < 2 else ([server.url("/missing")] if p == 0
                                                                                 else [])}
                for p in range(3) for k in range(3)]
        dump = write_lines(tmp_path / "dump.jsonl", rows)
        common = ["--format", "csv", "--input", str(dump), "--columns", "product=item", "review=rid", "text=body",
                  "votes=helpful", "images=pics", "--split-fractions", "1", "0", "0", "--min-count", "1"]
        assert main(["prepare", *common, "--out", str(tmp_path / "text-only")]) == 0
        out = tmp_path / "fetched"
        assert main(["fetch-images", "--prepared", str(tmp_path / "text-only"), "--out", str(out), *SETTING_ARGS,
                     "--no-progress"]) == 0
    entries = read_manifest(out / MANIFEST)
    assert len(entries) == 7 and sum(e["outcome"] == "ok" for e in entries.values()) == 6
    assert entries[server.url("/img/0.jpg")]["items"] == ["train review r0-0"]
    assert main(["prepare", *common, "--fetched", str(out), "--threads", "1", "--out", str(tmp_path / "multi")]) == 2
    assert main(["prepare", *common, "--fetched", str(out), "--threads", "1", "--max-missing-image-rate", "0.2",
                 "--out", str(tmp_path / "multi")]) == 0
    split = PreparedDataset.open(tmp_path / "multi").split("train")
    with_regions = [split.review_regions(j).shape[0] > 0 for j in range(split.num_reviews)]
    assert sum(with_regions) == 6 and split.image_refs("review") is None
