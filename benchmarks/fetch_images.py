"""Download throughput of ``mrhp fetch-images`` (mrhp.features.fetch_images) next to the image feature extractor's rate.

Generates ``--images`` photo-like JPEGs (``--width`` x ``--height``, as ``benchmarks/image_features.py`` makes
them) and serves them from a local HTTP server on 127.0.0.1 in a separate process (so that it does not share the
interpreter lock with the client), each response delayed by ``--latency`` seconds to stand in for the round trips
and server time of a real image host. For each ``--concurrency`` setting, a fresh folder is filled by
:func:`mrhp.features.fetch_images.fetch_images` (no per-host rate limit, so that the client is measured): images per second
and bytes per second. Then the downloaded files go through the feature folder of ``mrhp features``
(:class:`mrhp.features.image_folder.ImageFeatureFolder`, ``--threads`` threads) in the same run: images per second. The
download step is not the bottleneck when its rate at a usual concurrency is above the extractor's.

    python benchmarks/fetch_images.py [--images 64] [--latency 0.05] [--concurrency 1 4 16 64] [--threads 1] [--smoke]

Needs the ``fetch`` and ``images`` extras.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from _common import add_smoke
from image_features import make_images

from mrhp.features.fetch_images import FetchSettings, fetch_images


def serve(folder: Path, latency: float) -> None:
    """The server process: every file of ``folder`` at ``/NAME``, after ``latency`` seconds; prints its port."""
    files = {f"/{p.name}": p.read_bytes() for p in folder.glob("*.jpg")}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as image hosts do

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            time.sleep(latency)
            body = files.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        # The default listen backlog (5) drops connections when 64 clients connect at once: they come back only
        # after a SYN retransmit (1 s), which would be measured as the client's slowness.
        request_queue_size = 256

    server = Server(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--width", type=int, default=800)
    parser.add_argument("--height", type=int, default=600)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds the server waits before each response")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--threads", type=int, default=1, help="feature extractor threads")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    add_smoke(parser)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, args.latency)
        return
    if args.smoke:
        from mrhp.features.images import images_available

        if not images_available() or importlib.util.find_spec("httpx") is None:
            print("--smoke: the fetch and images extras are not both installed; nothing to measure")
            return
        args = argparse.Namespace(**{**vars(args), "images": 2, "width": 64, "height": 64, "latency": 0.0,
                                     "concurrency": [2], "threads": 1})

    from mrhp.features.image_folder import ImageFeatureFolder

    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "served").mkdir()
        paths = make_images(root / "served", args.images, args.width, args.height)
        total = sum(p.stat().st_size for p in paths)
        print(f"{args.images} JPEGs {args.width}x{args.height}, {total / len(paths) / 1024:.1f} KiB each; "
              f"server latency {args.latency * 1000:.0f} ms per response")
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(root / "served"), "--latency",
                                   str(args.latency)], stdout=subprocess.PIPE, text=True, env=env)
        try:
            port = int(server.stdout.readline())
            urls = {f"http://127.0.0.1:{port}/{p.name}": [p.name] for p in paths}
            for name in [k for k in os.environ if "proxy" in k.lower()]:
                del os.environ[name]  # the client must reach 127.0.0.1 directly
            print(f"{'concurrency':>11} {'images/s':>9} {'MiB/s':>7} {'seconds':>8}")
            for concurrency in args.concurrency:
                out = root / f"fetched-{concurrency}"
                settings = FetchSettings(concurrency=concurrency, per_host_rate=0,
                                         allow_private_addresses=True)  # the local test server
                report = fetch_images(urls, out, settings, progress=False)
                assert report["outcomes"] == {"ok": len(urls)}, report["outcomes"]
                print(f"{concurrency:>11} {report['files_per_second']:>9.1f} "
                      f"{report['bytes_per_second'] / 2**20:>7.2f} {report['seconds']:>8.2f}")
        finally:
            server.kill()
            server.wait()
        downloaded = sorted((root / f"fetched-{args.concurrency[-1]}" / "files").rglob("*.jpg"))
        folder = ImageFeatureFolder(root / "features", threads=args.threads, progress=False)
        folder.resolve(downloaded)
        report = folder.last_report
        print(f"feature extractor ({args.threads} thread{'s' if args.threads > 1 else ''}): "
              f"{report['extracted_per_second']} images/s over {report['extracted']} downloaded files "
              f"(network load {report['network_load_seconds']} s not counted)")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
