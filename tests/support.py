"""Plain helpers several test modules share: tiny models and their inputs, tiny prepared datasets, a JSON-lines
writer, a tiny checkpoint, a service on a free port. Test modules import them (`from support import ...`);
fixtures live in conftest.py."""

from __future__ import annotations

import dataclasses
import gzip
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mrhp.config import Config, DataConfig, ModelConfig, ModelInputs
from mrhp.data.batching import Item, RankingList, collate
from mrhp.data.text import Vocabulary
from mrhp.models.checkpoint import Checkpoint, save_checkpoint
from mrhp.models.registry import build_model
from mrhp.studies.synthetic import SyntheticSpec, write_official_dataset

VOCAB, FEATURES = 40, 6  # vocabulary size and image region width of the tiny models
# The vocabulary of `tiny_checkpoint_file`: real words first, so requests can be written in words.
WORDS = ["<pad>", "<unk>", "great", "pot", "lid", "steel", "bad", "handle", "cheap", "heavy", "ok", "love", "it",
         "the", "is", "a", "and", "broke", "after", "week"]
WORDS += [f"w{k}" for k in range(VOCAB - len(WORDS))]

# `mrhp train` options for a model small enough to train in seconds on one thread.
TINY_TRAIN_ARGS = [
    "--set", "model.hidden_size=16", "--set", "model.embedding_dim=8", "--set", "model.num_heads=2",
    "--set", "model.interaction_layers=2", "--set", "model.feedforward_size=16", "--set", "train.lr=0.003",
    "--set", "data.batch_rows=16", "--set", "train.threads=1", "--no-progress",
]


def tiny_model_config(**overrides) -> ModelConfig:
    """The paper's model (or, with `name=`, a baseline) at a size that runs in milliseconds."""
    settings = dict(hidden_size=16, embedding_dim=8, num_heads=2, interaction_layers=2, feedforward_size=32,
                    dropout=0.0)
    return ModelConfig(**{**settings, **overrides})


def tiny_inputs(**overrides) -> ModelInputs:
    """The data a tiny model is built for: `VOCAB` words, `FEATURES`-d regions, 8-d word embeddings."""
    return ModelInputs(**{"vocab_size": VOCAB, "image_dim": FEATURES, "embedding_dim": 8, **overrides})


def split_inputs(overrides: dict) -> tuple[dict, dict]:
    """Settings of `ModelConfig` and fields of `ModelInputs` among `overrides`."""
    names = {f.name for f in dataclasses.fields(ModelInputs)}
    return ({k: v for k, v in overrides.items() if k not in names}, {k: v for k, v in overrides.items() if k in names})


def tiny_model(**overrides) -> torch.nn.Module:
    """A tiny model of `tiny_model_config` and `tiny_inputs` (each takes its own overrides)."""
    settings, inputs = split_inputs(overrides)
    return build_model(tiny_model_config(**settings), tiny_inputs(**inputs))


def item(rng: np.random.Generator, tokens: int, regions: int) -> Item:
    return Item(rng.integers(2, VOCAB, size=tokens), rng.standard_normal((regions, FEATURES)).astype(np.float32))


def ranking(rng: np.random.Generator, reviews: int, tokens: int = 5, regions: int = 3, group: int = 0) -> RankingList:
    """A product with `reviews` random reviews of 1..`tokens` tokens and 0..`regions` regions, random labels."""
    return RankingList(
        product=item(rng, tokens, regions),
        reviews=[
            item(rng, int(rng.integers(1, tokens + 1)), int(rng.integers(0, regions + 1))) for _ in range(reviews)
        ],
        labels=[int(x) for x in rng.integers(0, 5, size=reviews)],
        review_indices=list(range(reviews)),
        group=group,
    )


def without_images(original: RankingList) -> RankingList:
    """`original` with every image region removed (texts, labels and order kept)."""
    return RankingList(
        Item(original.product.tokens, original.product.regions[:0]),
        [Item(r.tokens, r.regions[:0]) for r in original.reviews],
        original.labels, original.review_indices, original.group,
    )


def scores_of(model: torch.nn.Module, lists: list[RankingList]) -> torch.Tensor:
    with torch.no_grad():
        return model(collate(lists, max_tokens=32, max_regions=32, feature_dim=FEATURES)).row_scores


def prepare_tiny_dataset(root: Path, spec: SyntheticSpec) -> Path:
    """The synthetic generator's official-format files for `spec` under `root/official`, prepared by
    `mrhp prepare` (every word kept) into `root/prepared`, which is returned."""
    from mrhp.cli import (
        main,  # here, so that only the tests that prepare data depend on the CLI
    )

    features = write_official_dataset(root / "official", "tiny", spec)
    status = main([
        "prepare", "--format", "mrhp", "--data-dir", str(root / "official"), "--category", "tiny",
        "--features", str(features), "--min-count", "1", "--out", str(root / "prepared"),
    ])
    assert status == 0
    return root / "prepared"


def write_lines(path: Path, rows: list, compress: bool = False) -> Path:
    """One line per row: a dict as JSON, a string as it is (to write malformed lines); gzip with `compress`."""
    text = "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)
    if compress:
        with gzip.open(path, "wt", encoding="utf-8") as out:
            out.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@contextmanager
def serving(app) -> Iterator[str]:
    """Run `app` under uvicorn on 127.0.0.1 with a free port (a socket bound here, so no race) in a thread."""
    import uvicorn  # the serve extra: only the tests that serve need it

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


def tiny_checkpoint_file(path: Path, seed: int = 0, **overrides) -> Path:
    """A tiny untrained model of `tiny_model_config(**overrides)` saved as a checkpoint whose vocabulary is `WORDS`
    (scores arbitrary but deterministic)."""
    torch.manual_seed(seed)
    settings, inputs = split_inputs(overrides)
    config = Config(data=DataConfig(max_tokens=12, max_regions=8, eval_batch_rows=8),
                    model=tiny_model_config(**settings)).validate()
    model_inputs = tiny_inputs(**inputs)
    save_checkpoint(path, Checkpoint(model=build_model(config.model, model_inputs), config=config,
                                     inputs=model_inputs, vocab=Vocabulary(WORDS),
                                     relevance_threshold=1, metrics={}, state={"epoch": 1}))
    return path


# ---- the bad-input matrix (test_bad_*.py): bad values, a request, and the error every case must end in ----

SURROGATE = "bad \ud800 text"  # valid JSON ("\ud800" escape), not Unicode text
DEEP = object()  # a value nested 100,000 arrays deep (written as raw text: json.dumps would recurse)
DELETE = object()  # the field is removed


def dumped(record: dict) -> str:
    """One JSON line of `record`, with DEEP values written as raw nested brackets."""
    parts = []
    for key, value in record.items():
        text = "[" * 100_000 + "]" * 100_000 if value is DEEP else json.dumps(value)
        parts.append(f"{json.dumps(key)}: {text}")
    return "{" + ", ".join(parts) + "}"


BAD_IDS = {"missing": DELETE, "null": None, "empty": "", "blank": "   ", "bool": True, "float": 1.5, "list": [],
           "object": {}, "surrogate": SURROGATE, "deep": DEEP}
BAD_TEXTS = {"null": None, "number": 5, "list": ["a"], "object": {}, "bool": False, "surrogate": SURROGATE,
             "deep": DEEP}
WIDTH = 8  # region feature size of the `trained` fixture's dataset


def trained_request() -> dict:
    """A good request for the `trained` fixture's model."""
    return {"product_id": "p1", "text": "a product", "images": [{"regions": [[0.1] * WIDTH] * 2}],
            "reviews": [{"review_id": "a", "text": "good and long", "rating": 4},
                        {"review_id": "b", "text": "bad", "images": [{"regions": [[0.2] * WIDTH]}]}]}


def cli_error(capsys, argv: list[str], *expected: str) -> str:
    """Run `mrhp ARGV`; it must fail with exit status 2 and one error line holding every `expected` text."""
    from mrhp.cli import main  # here, as in `prepare_tiny_dataset`

    status = main(argv)
    err = capsys.readouterr().err
    prefix = f"mrhp {argv[0]}: error: "
    lines = [line for line in err.splitlines() if line.startswith(prefix)]
    assert status == 2, f"exit status {status}, stderr: {err[-2000:]}"
    assert "Traceback" not in err and len(lines) == 1, err[-2000:]
    for text in expected:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    return lines[0]


# The JSON-lines dataset of the bad-input cases: 4 products (2 train, 1 dev, 1 test), 3 reviews each.
PRODUCTS = [
    {"product_id": "P1", "name": "steel pot", "description": "six quart", "split": "train"},
    {"product_id": "P2", "text": "glass lid for the pot", "split": "train"},
    {"product_id": "P3", "text": "a pan", "split": "dev"},
    {"product_id": "P4", "text": "a knife", "split": "test"},
]
REVIEWS = [
    {"review_id": f"R{p}{k}", "product_id": f"P{p}", "text": f"review {k} of product {p} is fine", "votes": 3 * k}
    for p in range(1, 5) for k in range(3)
]


def write_jsonl(folder: Path, products: list, reviews: list) -> tuple[Path, Path]:
    """products.jsonl and reviews.jsonl in `folder` (a bytes row is written as it is)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "products.jsonl", folder / "reviews.jsonl"
    for path, rows in zip(paths, (products, reviews)):
        path.write_bytes(b"".join((row if isinstance(row, bytes) else dumped(row).encode()) + b"\n" for row in rows))
    return paths


def rewrite_checkpoint(source: Path, target: Path, header_change=None, tensor_change=None, raw_header: str | None = None) -> Path:
    """A copy of checkpoint `source` at `target`, its header and tensors changed by the given functions (or its
    header replaced by `raw_header`)."""
    tensors = load_file(str(source))
    with safe_open(str(source), framework="pt") as handle:
        header = json.loads(handle.metadata()["mrhp"])
    if header_change is not None:
        header_change(header)
    if tensor_change is not None:
        tensor_change(tensors)
    save_file(tensors, str(target), metadata={"mrhp": raw_header if raw_header is not None else json.dumps(header)})
    return target


def header_set(path: str, value):
    """A header change: set the key at dotted `path` (DELETE removes it)."""
    def change(header: dict) -> None:
        *parents, last = path.split(".")
        holder = header
        for part in parents:
            holder = holder[part]
        if value is DELETE:
            del holder[last]
        else:
            holder[last] = value
    return change


# Small valid public dumps of the bad-input cases: Amazon'23 reviews and metadata, Fine Food CSV lines.
def amazon_review(parent: str, user: str, votes: int) -> dict:
    return {"rating": 4.0, "title": "a title", "text": f"review by {user}", "images": [], "asin": parent,
            "parent_asin": parent, "user_id": user, "timestamp": 1470972512000, "helpful_vote": votes,
            "verified_purchase": True}


AMAZON_REVIEWS = [amazon_review(f"P{p}", f"U{p}{k}", k * 4) for p in range(3) for k in range(3)]
AMAZON_META = [{"parent_asin": f"P{p}", "title": f"magazine {p}", "description": ["monthly"], "features": ["print"],
                "images": []} for p in range(3)]
FINEFOOD_HEADER = "Id,ProductId,UserId,ProfileName,HelpfulnessNumerator,HelpfulnessDenominator,Score,Time,Summary,Text\r\n"
FINEFOOD_GOOD = "".join(f"{k},P{k % 3},U{k},Name,{k % 4},{k % 4},5,100,Sum,Text {k}\r\n" for k in range(1, 10))
