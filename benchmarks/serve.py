"""Throughput and latency of `mrhp serve` under a bounded load, next to the in-process scoring rate of the same model.

Builds an untrained model at the paper's sizes (d = 128, D = 5, 4 heads, 300-d embeddings; vocabulary and image
feature size below) unless `--checkpoint` is given, starts `mrhp serve` on 127.0.0.1 in a subprocess, and sends
`--requests` ranking requests (a product with `--reviews` reviews, texts of `--words` words, `--regions` inline
image regions per item) from `--clients` concurrent clients, stopping after `--max-seconds` at most. Printed:
throughput (requests/s and reviews/s), p50/p99 latency, the server's mean requests per forward pass (from
/healthz), then the in-process rate of the same requests scored with `mrhp.ranking.ranker.Ranker.score` (one forward
per request, as a lone request is served; and packed like `mrhp predict`; on the first `--in-process-requests`
requests), measured before the server starts
and after it stops, and the ratio service / in-process (their mean).

    python benchmarks/serve.py [--requests 120] [--clients 4] [--max-seconds 90] [--reviews 8] [--words 40]
                               [--regions 8] [--image-dim 1280] [--vocab 20000] [--threads N] [--workers 1]
                               [--checkpoint PATH]
    python benchmarks/serve.py --smoke             # 4 short requests to a small model: checks, measures nothing

With `--text-config configs/real-data.toml` it measures instead a model of that config (pretrained text encoder,
untrained otherwise: latency does not depend on the weights) for each `--precisions` variant and each
`--thread-counts`, side by side in one run: 10-review requests of real Magazine reviews (`--data`; generated text
without it), each for another product (so the product cache never helps); p50 and p99 of one client sending one
request after another, requests/s under `--clients` (8) clients, and the floor: the encoder's matmul FLOPs for the
request's 11 texts at their token counts (the four Linear layers and the two attention products of every layer)
divided by this CPU's fp32 matmul rate, measured in the same run at the same thread count (best of several
products of shape [tokens of the request, H] x [H, 4H]). p50 / floor says how far the service is from the fastest
fp32 encoding could be. `--smoke`: 3 requests of 2 reviews, 1 thread, 2 clients (seconds).

    python benchmarks/serve.py --text-config configs/real-data.toml [--precisions fp32 int8]
                               [--thread-counts 1 2] [--requests 40] [--clients 8] [--data ../shared/data]

The clients run in this process while the server runs in its own; on a small machine they share the CPU cores,
and other work on the machine changes every figure: the core count and the load average before and after are
printed with the results.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from _common import add_smoke

from mrhp.config import Config, ModelConfig, ModelInputs, load_config
from mrhp.data.text import PAD, UNK, Vocabulary
from mrhp.features.text_encoder import PRETRAINED
from mrhp.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from mrhp.models.registry import build_model
from mrhp.ranking.ranker import Ranker

sys.path.insert(0, str(Path(__file__).resolve().parent))
from text_encoder import load_reviews  # noqa: E402  (the benchmark beside this one)


def paper_size_checkpoint(path: Path, vocab: int, image_dim: int) -> None:
    torch.manual_seed(0)
    config = Config(model=ModelConfig()).validate()
    inputs = ModelInputs(vocab_size=vocab, image_dim=image_dim, embedding_dim=config.model.embedding_dim)
    words = [PAD, UNK] + [f"w{i}" for i in range(vocab - 2)]
    save_checkpoint(path, Checkpoint(model=build_model(config.model, inputs), config=config, inputs=inputs,
                                     vocab=Vocabulary(words), relevance_threshold=1))


def make_requests(count: int, reviews: int, words: int, regions: int, vocab: int, image_dim: int) -> list[dict]:
    rng = np.random.default_rng(0)

    def text() -> str:
        return " ".join(f"w{i}" for i in rng.integers(0, vocab - 2, words))

    def images() -> list[dict]:
        return [{"regions": rng.uniform(0, 6, (regions, image_dim)).astype(np.float32).round(3).tolist()}] if regions else []

    return [
        {"product_id": f"p{n}", "text": text(), "images": images(),
         "reviews": [{"review_id": f"p{n}-r{k}", "text": text(), "images": images()} for k in range(reviews)]}
        for n in range(count)
    ]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(url: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"the server exited with status {server.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    sys.exit("the server did not come up")


def load(url: str, bodies: list[bytes], clients: int, max_seconds: float) -> tuple[list[float], int, float]:
    """Send every body once from `clients` threads (or until `max_seconds`); latencies in seconds, errors, wall."""
    latencies: list[float] = []
    errors = [0]
    next_index = [0]
    lock = threading.Lock()
    started = time.perf_counter()

    def client() -> None:
        with httpx.Client(timeout=max_seconds) as session:
            while time.perf_counter() - started < max_seconds:
                with lock:
                    index = next_index[0]
                    next_index[0] += 1
                if index >= len(bodies):
                    return
                sent = time.perf_counter()
                response = session.post(f"{url}/v1/rank", content=bodies[index],
                                        headers={"content-type": "application/json"})
                elapsed = time.perf_counter() - sent
                with lock:
                    if response.status_code == 200:
                        latencies.append(elapsed)
                    else:
                        errors[0] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors[0], time.perf_counter() - started


def in_process_rate(checkpoint: Checkpoint, requests: list[dict], packed: bool) -> float:
    """Requests per second scored with `Ranker.score`: one forward per request, or packed like `mrhp predict`.

    Scored on a thread of its own, as the service's scorer thread does: torch's CPU thread pool behaves
    differently on the main thread (on a busy machine, two OpenMP threads on the main thread ran the same forward
    passes up to 10x slower than a worker thread), so this keeps the two measurements comparable."""
    rate: list[float] = []
    worker = threading.Thread(target=lambda: rate.append(_scoring_rate(checkpoint, requests, packed)))
    worker.start()
    worker.join()
    return rate[0]


def _scoring_rate(checkpoint: Checkpoint, requests: list[dict], packed: bool) -> float:
    ranker = Ranker(checkpoint)
    lists = [ranker.parse(request).ranking for request in requests]
    ranker.score(lists[:1])  # warm-up
    started = time.perf_counter()
    if packed:
        ranker.score(lists)
    else:
        for ranking in lists:
            ranker.score([ranking])
    return len(lists) / (time.perf_counter() - started)


def text_model_checkpoint(path: Path, config_path: Path, precision: str) -> None:
    """An untrained model of `config_path` with its pretrained text encoder at `precision`, text only."""
    torch.manual_seed(0)
    config = load_config(config_path, [f"model.text_encoder_precision={precision}"])
    width = PRETRAINED[config.model.text_encoder].hidden_size
    words = [PAD, UNK] + [f"w{i}" for i in range(998)]
    inputs = ModelInputs(vocab_size=len(words), image_dim=0, embedding_dim=config.model.embedding_dim,
                         text_state_dim=width)
    save_checkpoint(path, Checkpoint(model=build_model(config.model, inputs), config=config, inputs=inputs,
                                     vocab=Vocabulary(words), relevance_threshold=1))


def review_requests(data: Path, count: int, reviews: int) -> list[dict]:
    """`count` requests of `reviews` Magazine reviews each (real text when `data` has them), all products distinct."""
    texts, _ = load_reviews(data, count * (reviews + 1))
    rng = np.random.default_rng(0)
    return [{"product_id": f"p{n}", "text": texts[n * (reviews + 1)],
             "reviews": [{"review_id": f"r{k}", "text": texts[n * (reviews + 1) + 1 + k],
                          "rating": int(rng.integers(1, 6))} for k in range(reviews)]}
            for n in range(count)]


def encoder_flops(token_counts: list[int], spec) -> float:
    """Matmul FLOPs of the encoder for texts of these token counts: per layer and token, the q/k/v, attention
    output and feed-forward Linears (2 FLOPs per multiply-add), and the two attention products over the text."""
    hidden, inner, layers = spec.hidden_size, spec.intermediate_size, spec.num_layers
    total = 0.0
    for n in token_counts:
        linears = 2 * n * hidden * (3 * hidden + hidden + 2 * inner)
        attention = 2 * 2 * n * n * hidden
        total += layers * (linears + attention)
    return total


def matmul_rate(rows: int, hidden: int, threads: int, repeats: int = 30) -> float:
    """Best fp32 FLOP/s of [rows, H] x [H, 4H] products on `threads` torch threads, on a thread of its own (as the
    service encodes)."""
    rate: list[float] = []

    def measure() -> None:
        torch.set_num_threads(threads)
        x, w = torch.randn(rows, hidden), torch.randn(hidden, 4 * hidden)
        best = np.inf
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(10):
                torch.mm(x, w)
            best = min(best, (time.perf_counter() - started) / 10)
        rate.append(2 * rows * hidden * 4 * hidden / best)

    worker = threading.Thread(target=measure)
    worker.start()
    worker.join()
    return rate[0]


def serve_and_measure(path: Path, threads: int, bodies: list[bytes], clients: int, max_seconds: float) -> dict:
    """Start `mrhp serve` on `threads` threads; time from start to a ready /healthz, one client's latencies, and
    requests/s under `clients` clients (each body sent once per phase)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "mrhp.cli", "serve", "--checkpoint", str(path), "--port", str(port),
               "--threads", str(threads), "--max-request-bytes", str(max(len(b) for b in bodies) + 1024)]
    started = time.perf_counter()
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_up(url, server, timeout=300)
        ready = time.perf_counter() - started
        first, _, _ = load(url, bodies[:1], 1, max_seconds)
        single, errors_single, _ = load(url, bodies, 1, max_seconds)
        many, errors_many, wall = load(url, bodies, clients, max_seconds)
    finally:
        server.terminate()
        server.wait(timeout=30)
    if not single or not many:
        sys.exit(f"requests failed ({errors_single} + {errors_many} errors)")
    return {"ready": ready, "first": first[0], "p50": float(np.percentile(single, 50)),
            "p99": float(np.percentile(single, 99)), "rps": len(many) / wall, "errors": errors_single + errors_many}


def text_model_study(args: argparse.Namespace) -> None:
    config = load_config(args.text_config)
    spec = PRETRAINED[config.model.text_encoder]
    requests = review_requests(args.data, args.requests, args.reviews)
    bodies = [json.dumps(r).encode() for r in requests]
    from mrhp.features.text_weights import load_pretrained

    tokenizer_of = load_pretrained(config.model.text_encoder)
    counts = [[len(ids) for ids in tokenizer_of.token_ids([r["text"], *(v["text"] for v in r["reviews"])],
                                                          config.data.max_tokens)] for r in requests]
    flops = float(np.median([encoder_flops(c, spec) for c in counts]))
    rows = int(np.median([sum(c) for c in counts]))
    del tokenizer_of
    load_before = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores ({torch.backends.cpu.get_cpu_capability()}); "
          f"load average {load_before:.2f} at the start")
    print(f"model: {args.text_config} ({config.model.text_encoder}, d={config.model.hidden_size}, "
          f"D={config.model.interaction_layers}), untrained; {len(requests)} requests of {args.reviews} reviews, "
          f"{rows} tokens per request (median, {1 + args.reviews} texts), encoder matmuls "
          f"{flops / 1e9:.2f} GFLOP per request; {args.clients} clients for requests/s")
    print(f"{'variant':>7} {'threads':>7} {'fp32 GFLOP/s':>12} {'floor ms':>8} {'ready s':>7} {'first ms':>8} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'p50/floor':>9} {'req/s':>6}")
    with tempfile.TemporaryDirectory() as folder:
        for precision in args.precisions:
            path = Path(folder) / f"{precision}.safetensors"
            text_model_checkpoint(path, args.text_config, precision)
            for threads in args.thread_counts:
                rate = matmul_rate(rows, spec.hidden_size, threads)
                floor = flops / rate
                got = serve_and_measure(path, threads, bodies, args.clients, args.max_seconds)
                print(f"{precision:>7} {threads:>7} {rate / 1e9:>12.1f} {1e3 * floor:>8.0f} {got['ready']:>7.1f} "
                      f"{1e3 * got['first']:>8.0f} {1e3 * got['p50']:>7.0f} {1e3 * got['p99']:>7.0f} "
                      f"{got['p50'] / floor:>9.2f} {got['rps']:>6.2f}", flush=True)
    load_after = os.getloadavg()[0]
    quiet = max(load_before, load_after) <= 0.5 + max(args.thread_counts)
    print(f"load average {load_after:.2f} at the end: the machine was {'quiet' if quiet else 'busy (figures noisy)'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="a trained checkpoint (default: untrained, paper sizes)")
    parser.add_argument("--requests", type=int, default=120)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--max-seconds", type=float, default=90.0, help="stop sending after this long")
    parser.add_argument("--reviews", type=int, default=8, help="reviews per request")
    parser.add_argument("--words", type=int, default=40, help="words per text")
    parser.add_argument("--regions", type=int, default=8, help="inline image regions per item (0 = no images)")
    parser.add_argument("--image-dim", type=int, default=1280, help="region feature size of the built model")
    parser.add_argument("--vocab", type=int, default=20_000, help="vocabulary of the built model")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads, server and in-process")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--in-process-requests", type=int, default=24, help="requests of each in-process measurement")
    parser.add_argument("--text-config", type=Path, help="measure a model of this config (e.g. configs/real-data.toml)")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "int8"], help="text encoder variants (--text-config)")
    parser.add_argument("--thread-counts", type=int, nargs="+", default=[1, 2], help="server threads (--text-config)")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="Magazine reviews (--text-config)")
    add_smoke(parser)
    args = parser.parse_args()
    if args.text_config is not None:
        if args.smoke:
            args.requests, args.reviews, args.clients, args.thread_counts = 3, 2, 2, [1]
        elif args.reviews == parser.get_default("reviews"):
            args.reviews = 10
        if args.requests == parser.get_default("requests") and not args.smoke:
            args.requests = 40
        if args.clients == parser.get_default("clients") and not args.smoke:
            args.clients = 8
        text_model_study(args)
        return
    if args.smoke:  # the same path end to end with a small vocabulary, 4 short requests and 1 client
        args.requests, args.clients, args.reviews, args.words, args.regions = 4, 1, 2, 5, 2
        args.image_dim, args.vocab, args.threads, args.in_process_requests, args.max_seconds = 8, 100, 1, 2, 30.0

    with tempfile.TemporaryDirectory() as folder:
        path = args.checkpoint
        if path is None:
            path = Path(folder) / "paper-size.safetensors"
            paper_size_checkpoint(path, args.vocab, args.image_dim)
        checkpoint = load_checkpoint(path)
        model_config = checkpoint.config.model
        requests = make_requests(args.requests, args.reviews, args.words, args.regions, len(checkpoint.vocab),
                                 checkpoint.inputs.image_dim)
        bodies = [json.dumps(r).encode() for r in requests]
        load_before = os.getloadavg()[0]
        torch.set_num_threads(args.threads)
        sample = requests[: args.in_process_requests]
        rates_before = [in_process_rate(checkpoint, sample, packed) for packed in (False, True)]
        warm_up = bodies[: min(4, len(bodies))]
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "mrhp.cli", "serve", "--checkpoint", str(path), "--port", str(port),
                   "--threads", str(args.threads), "--workers", str(args.workers),
                   "--max-request-bytes", str(max(len(b) for b in bodies) + 1024)]
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until_up(url, server, timeout=120)
            load(url, warm_up, 1, args.max_seconds)
            before = httpx.get(f"{url}/healthz").json()
            latencies, errors, wall = load(url, bodies, args.clients, args.max_seconds)
            after = httpx.get(f"{url}/healthz").json()
        finally:
            server.terminate()
            server.wait(timeout=30)

        if not latencies:
            sys.exit(f"no request succeeded ({errors} errors)")
        done = len(latencies)
        served = done / wall
        rates_after = [in_process_rate(checkpoint, sample, packed) for packed in (False, True)]
        load_after = os.getloadavg()[0]

    forwards = after["forwards"] - before["forwards"]
    per_forward = (after["requests"] - before["requests"]) / max(forwards, 1)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, {args.threads} torch threads, {args.workers} "
          f"worker(s); load average {load_before:.1f} before, {load_after:.1f} after")
    print(f"model: {model_config.name}, d={model_config.hidden_size}, D={model_config.interaction_layers}, "
          f"vocabulary {checkpoint.inputs.vocab_size}, image features {checkpoint.inputs.image_dim}-d")
    print(f"request: {args.reviews} reviews, {args.words} words per text, {args.regions} regions per item, "
          f"{statistics.mean(len(b) for b in bodies) / 1e3:.0f} kB of JSON on average")
    print(f"load: {done} of {len(bodies)} requests done in {wall:.1f} s from {args.clients} clients "
          f"(cap {args.max_seconds:.0f} s), {errors} errors")
    print(f"service: {served:.2f} requests/s = {served * args.reviews:.1f} reviews/s; latency "
          f"p50 {1e3 * np.percentile(latencies, 50):.0f} ms, p99 {1e3 * np.percentile(latencies, 99):.0f} ms; "
          f"{per_forward:.2f} requests per forward pass")
    single, packed = ((before + after) / 2 for before, after in zip(rates_before, rates_after))
    print(f"in-process, one forward per request: {rates_before[0]:.2f} before, {rates_after[0]:.2f} after "
          f"requests/s; packed like `mrhp predict`: {rates_before[1]:.2f} before, {rates_after[1]:.2f} after")
    print(f"ratio service / in-process: {served / single:.2f} (one forward per request), "
          f"{served / packed:.2f} (packed)")


if __name__ == "__main__":
    main()
