"""The FastAPI application of the HTTP service (see `mrhp.serve`): the batching scorer, request conversion, the app
factory and the server."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from safetensors import safe_open
from starlette.exceptions import HTTPException as StarletteHTTPException

from mrhp import __version__
from mrhp.checkpoint import VERSION as CHECKPOINT_VERSION
from mrhp.checkpoint import Checkpoint, load_checkpoint
from mrhp.data.batching import RankingList
from mrhp.data.records import cap_regions
from mrhp.errors import MrhpError
from mrhp.images import (
    DEFAULT_INPUT_SIZE,
    DEFAULT_MAX_REGIONS,
    FEATURE_DIM,
    INSTALL_HINT,
    ImageFeatureExtractor,
    images_available,
)
from mrhp.inference import file_sha256, make_ranking, ranked_reviews, score_rankings, uses_images
from mrhp.serve.schema import ErrorResponse, ImageInput, RankedReview, RankRequest, RankResponse

log = logging.getLogger(__name__)

DEFAULT_MAX_REQUEST_BYTES = 32 * 2**20
DEFAULT_MAX_REVIEWS = 256
DEFAULT_MAX_TEXT_CHARS = 20_000
DEFAULT_MAX_QUEUED = 64
DEFAULT_BATCH_WAIT_MS = 2.0
IMAGE_FILES_ACCEPTED = "accepted: EfficientNet-Lite0 region features (mrhp.images)"
_WORKER_SETTINGS_ENV = "MRHP_SERVE_SETTINGS"  # how `run_server` hands its settings to uvicorn worker processes


@dataclass(frozen=True)
class Limits:
    """What one request may hold; see the module docstring for the answer to each."""

    max_request_bytes: int
    max_reviews: int
    max_text_chars: int
    max_queued: int


# ---- the scorer: one thread, one model, micro-batches ----------------------------------------------------------


class ServiceBusy(Exception):
    """The scorer's queue is full."""


class BatchScorer:
    """Runs every forward pass on one thread; concurrent requests are grouped into micro-batches.

    `submit` puts a ranking list in a bounded queue and returns a future of its scores [len(reviews)]. The thread
    takes the oldest request, then adds queued ones and those arriving within `wait_s` while the batch holds
    fewer than `batch_rows` review rows, and scores them with `score_rankings` in one forward pass.
    """

    def __init__(self, checkpoint: Checkpoint, batch_rows: int, wait_s: float, max_queued: int) -> None:
        self.checkpoint = checkpoint
        self.batch_rows = batch_rows
        self.wait_s = wait_s
        self.forwards = 0
        self.requests = 0
        self._queue: queue.Queue[tuple[RankingList, Future] | None] = queue.Queue(maxsize=max_queued)
        self._thread = threading.Thread(target=self._run, name="mrhp-scorer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join()

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def submit(self, ranking: RankingList) -> Future:
        future: Future = Future()
        try:
            self._queue.put_nowait((ranking, future))
        except queue.Full:
            raise ServiceBusy from None
        return future

    def _run(self) -> None:
        carry: tuple[RankingList, Future] | None = None
        while True:
            first = carry if carry is not None else self._queue.get()
            carry = None
            if first is None:
                return
            batch, rows = [first], len(first[0].reviews)
            deadline = time.monotonic() + self.wait_s
            stopping = False
            while rows < self.batch_rows:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                if rows + len(item[0].reviews) > self.batch_rows:
                    carry = item  # starts the next batch, so no request is ever split across batches
                    break
                batch.append(item)
                rows += len(item[0].reviews)
            self._score(batch)
            if stopping:
                return

    def _score(self, batch: Sequence[tuple[RankingList, Future]]) -> None:
        live = [(ranking, future) for ranking, future in batch if future.set_running_or_notify_cancel()]
        if not live:  # every client of this batch went away
            return
        try:
            scores = score_rankings(self.checkpoint, [ranking for ranking, _ in live], self.batch_rows)
        except Exception as error:  # answered as a 500 for these requests; the thread keeps serving
            log.exception("scoring a batch of %d requests failed", len(live))
            for _, future in live:
                future.set_exception(error)
            return
        self.forwards += 1
        self.requests += len(live)
        for (_, future), values in zip(live, scores):
            future.set_result(values)


# ---- request conversion ----------------------------------------------------------------------------------------


def _invalid(loc: Sequence[str | int], message: str, kind: str = "value_error") -> RequestValidationError:
    return RequestValidationError([{"type": kind, "loc": ("body", *loc), "msg": message}])


def _field_name(loc: Sequence[str | int]) -> str:
    """`("body", "reviews", 0, "text")` -> `"reviews[0].text"`."""
    name = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "body"


@dataclass
class _Prepared:
    ranking: RankingList
    review_ids: list[str]
    product_truncated: bool
    truncated_reviews: list[str]


class _Converter:
    """Turns a validated `RankRequest` into the model's input, enforcing the checkpoint-dependent limits.

    `extractor` turns image files into region features (None: image files are answered 501 with
    `no_extractor_reason`); it runs one image at a time under a lock, beside the scorer thread."""

    def __init__(
        self, checkpoint: Checkpoint, limits: Limits, extractor: ImageFeatureExtractor | None, no_extractor_reason: str
    ) -> None:
        self.checkpoint = checkpoint
        self.limits = limits
        self.extractor = extractor
        self.no_extractor_reason = no_extractor_reason
        self._extractor_lock = threading.Lock()
        self.uses_images = uses_images(checkpoint)
        self.feature_dim = checkpoint.config.model.image_dim
        self.max_tokens = checkpoint.config.data.max_tokens
        self.max_regions = checkpoint.config.data.max_regions

    def text(self, value: str, loc: Sequence[str | int]) -> str:
        if len(value) > self.limits.max_text_chars:
            raise _invalid(loc, f"text of {len(value)} characters exceeds the limit of {self.limits.max_text_chars}",
                           "too_long")
        return value

    def regions(self, images: Sequence[ImageInput], loc: Sequence[str | int]) -> np.ndarray:
        """float32 [m, F] of an item's images, its first `max_regions` regions ([0, F] without image)."""
        arrays = []
        for k, image in enumerate(images):
            where = (*loc, "images", k)
            if image.data is not None:
                try:
                    data = base64.b64decode(image.data, validate=True)
                except (binascii.Error, ValueError):
                    raise _invalid((*where, "data"), "not valid base64") from None
                if not self.uses_images:
                    continue  # a model without an image side ignores images, as `mrhp predict` does
                if self.extractor is None:
                    raise HTTPException(501, f"{_field_name(('body', *where, 'data'))}: {self.no_extractor_reason}")
                with self._extractor_lock:
                    result = self.extractor.extract_bytes(data, source=_field_name(("body", *where, "data")))
                if result.regions is None:
                    raise _invalid((*where, "data"), f"unusable image: {result.error}")
                arrays.append(result.regions)
                continue
            rows = image.regions
            assert rows is not None
            if any(len(row) != len(rows[0]) for row in rows):
                raise _invalid((*where, "regions"), "rows of unequal length: expected [n_regions, F]")
            array = np.asarray(rows, dtype=np.float32).reshape(len(rows), len(rows[0]) if rows else 0)
            if not self.uses_images:
                continue
            if len(rows) and array.shape[1] != self.feature_dim:
                raise _invalid((*where, "regions"), f"region feature size {array.shape[1]}, the model takes "
                                                    f"{self.feature_dim}")
            if not np.all(np.isfinite(array)):
                raise _invalid((*where, "regions"), "region features hold NaN or infinite values")
            arrays.append(array if len(rows) else np.zeros((0, self.feature_dim), dtype=np.float32))
        if not arrays:
            return np.zeros((0, self.feature_dim if self.uses_images else 0), dtype=np.float32)
        return cap_regions(arrays, None, self.max_regions, where=_field_name(("body", *loc, "images")))

    def convert(self, request: RankRequest) -> _Prepared:
        if len(request.reviews) > self.limits.max_reviews:
            raise _invalid(("reviews",), f"{len(request.reviews)} reviews exceed the limit of "
                                         f"{self.limits.max_reviews} per request", "too_long")
        for name in ("text", "name", "description"):
            value = getattr(request, name)
            if value is not None:
                self.text(value, (name,))
        product_regions = self.regions(request.images, ())
        review_ids: list[str] = []
        reviews: list[tuple[str, np.ndarray]] = []
        seen: set[str] = set()
        for k, review in enumerate(request.reviews):
            review_id = str(review.review_id)
            if not review_id.strip():
                raise _invalid(("reviews", k, "review_id"), "expected a non-empty id")
            if review_id in seen:
                raise _invalid(("reviews", k, "review_id"), f"duplicate review id {review_id!r}")
            seen.add(review_id)
            review_ids.append(review_id)
            reviews.append((self.text(review.text, ("reviews", k, "text")), self.regions(review.images, ("reviews", k))))
        ranking = make_ranking(self.checkpoint, request.product_text(), product_regions, reviews)
        return _Prepared(
            ranking=ranking,
            review_ids=review_ids,
            product_truncated=len(ranking.product.tokens) > self.max_tokens,
            truncated_reviews=[rid for rid, item in zip(review_ids, ranking.reviews) if len(item.tokens) > self.max_tokens],
        )


# ---- the application -------------------------------------------------------------------------------------------


class _BodyLimit:
    """ASGI middleware: answers 413 to a request body over `max_bytes` (declared or streamed) before any parsing,
    so a client can never make the server hold more than that per request."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(int(declared), scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await self._too_large(size, scope, receive, send)
                return
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, size: int, scope: dict, receive: Any, send: Any) -> None:
        message = f"request body of {size} bytes or more exceeds the limit of {self.max_bytes} bytes"
        await JSONResponse({"message": message, "detail": None}, status_code=413)(scope, receive, send)


def _checkpoint_header(path: Path) -> dict[str, Any]:
    """The checkpoint's JSON header (already validated by `load_checkpoint`)."""
    with safe_open(str(path), framework="pt") as handle:
        return json.loads((handle.metadata() or {})["mrhp"])


def _image_pipeline(
    checkpoint: Checkpoint, input_size: int, max_regions: int, threads: int | None
) -> tuple[ImageFeatureExtractor | None, str]:
    """The image feature extractor for image files in requests, or None and the reason none can be used."""
    feature_dim = checkpoint.config.model.image_dim
    if not uses_images(checkpoint):
        return None, "the model uses no images"
    if feature_dim != FEATURE_DIM:
        return None, (f"this model takes {feature_dim}-d region features and the image feature extractor gives "
                      f"{FEATURE_DIM}-d ones: send region features [n_regions, {feature_dim}] in 'regions'")
    if not images_available():
        return None, f"image files need the optional image feature extractor: {INSTALL_HINT}"
    extractor = ImageFeatureExtractor(input_size, max_regions, threads=threads, batch_size=1)
    return extractor, IMAGE_FILES_ACCEPTED


def _describe(
    checkpoint: Checkpoint, path: Path, limits: Limits, batch_rows: int, image_files: str
) -> dict[str, Any]:
    header = _checkpoint_header(path)
    return {
        "model": {
            "name": header.get("model_name"),
            "class": type(checkpoint.model).__name__,
            "parameters": sum(p.numel() for p in checkpoint.model.parameters()),
        },
        "mrhp_version": __version__,
        "checkpoint": {
            "file": path.name,
            "sha256": file_sha256(path),
            "format_version": CHECKPOINT_VERSION,
            "written_by_mrhp": header.get("mrhp_version"),
        },
        "config": checkpoint.config.to_dict(),
        "metrics": checkpoint.metrics,
        "relevance_threshold": checkpoint.relevance_threshold,
        "inputs": {
            "vocabulary_size": len(checkpoint.vocab),
            "uses_images": uses_images(checkpoint),
            "image_feature_size": checkpoint.config.model.image_dim,
            "image_files": image_files == IMAGE_FILES_ACCEPTED,
            "image_files_note": image_files,
            "max_tokens": checkpoint.config.data.max_tokens,
            "max_regions": checkpoint.config.data.max_regions,
        },
        "limits": {**vars(limits), "batch_rows": batch_rows},
    }


def create_app(
    checkpoint_path: Path,
    *,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    max_reviews: int = DEFAULT_MAX_REVIEWS,
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
    max_queued: int = DEFAULT_MAX_QUEUED,
    batch_rows: int | None = None,
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS,
    threads: int | None = None,
    image_input_size: int = DEFAULT_INPUT_SIZE,
    image_max_regions: int = DEFAULT_MAX_REGIONS,
) -> FastAPI:
    """Load the checkpoint once (raising `MrhpError` on a missing, unreadable or incompatible one) and build the
    application; the scorer thread runs while the application's lifespan does.

    Args:
        batch_rows: most review rows per forward pass (default: the checkpoint's `data.eval_batch_rows`).
        batch_wait_ms: how long the scorer waits for more requests to join a batch.
        threads: torch intra-op threads (default: torch's; all cores when the image extractor is loaded).
        image_input_size, image_max_regions: settings of the image feature extractor for image files; they must
            be those the training images were extracted with.
    """
    checkpoint_path = Path(checkpoint_path)
    for name, value in (("max_request_bytes", max_request_bytes), ("max_reviews", max_reviews),
                        ("max_text_chars", max_text_chars), ("max_queued", max_queued)):
        if value < 1:
            raise MrhpError(f"{name} must be >= 1, got {value}")
    if batch_wait_ms < 0:
        raise MrhpError(f"batch_wait_ms must be >= 0, got {batch_wait_ms}")
    checkpoint = load_checkpoint(checkpoint_path)
    checkpoint.model.eval()
    if threads is not None:
        torch.set_num_threads(threads)
    limits = Limits(max_request_bytes, max_reviews, max_text_chars, max_queued)
    batch_rows = checkpoint.config.data.eval_batch_rows if batch_rows is None else batch_rows
    if batch_rows < 1:
        raise MrhpError(f"batch_rows must be >= 1, got {batch_rows}")
    scorer = BatchScorer(checkpoint, batch_rows, batch_wait_ms / 1000.0, max_queued)
    extractor, image_files = _image_pipeline(checkpoint, image_input_size, image_max_regions, threads)
    converter = _Converter(checkpoint, limits, extractor, image_files)
    description = _describe(checkpoint, checkpoint_path, limits, batch_rows, image_files)
    log.info("loaded %s (%s, %d parameters, sha256 %s)", checkpoint_path, description["model"]["class"],
             description["model"]["parameters"], description["checkpoint"]["sha256"][:12])

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        scorer.start()
        yield
        scorer.stop()

    app = FastAPI(
        title="MRHP review helpfulness ranking",
        version=__version__,
        lifespan=lifespan,
        description=(
            "Ranks the reviews of a product by predicted helpfulness (Nguyen et al., EMNLP 2022).\n\n"
            f"Limits: request body at most {max_request_bytes} bytes (413); at most {max_reviews} reviews per "
            f"request and texts of at most {max_text_chars} characters (422); texts are cut at "
            f"{converter.max_tokens} tokens and items at {converter.max_regions} image regions, as in training; "
            f"at most {max_queued} requests waiting (503). Images: inline region features "
            f"[n_regions, {converter.feature_dim}]; base64 image files: {image_files} (else 501)."
        ),
    )
    app.add_middleware(_BodyLimit, max_bytes=max_request_bytes)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() not in ("application/json", ""):
            return JSONResponse({"message": f"send the body as JSON (Content-Type: application/json), got "
                                            f"{content_type[:60]!r}", "detail": None}, status_code=415)
        errors = []
        for item in error.errors():
            loc = list(item.get("loc", ()))
            if item.get("type") == "json_invalid":
                position = loc[1] if len(loc) > 1 else "?"
                errors.append({"field": "body", "loc": loc, "type": "json_invalid",
                               "msg": f"malformed JSON at character {position}: {item.get('ctx', {}).get('error', '')}"})
            else:
                errors.append({"field": _field_name(loc), "loc": loc, "type": item.get("type"), "msg": item.get("msg")})
        message = "; ".join(f"{e['field']}: {e['msg']}" for e in errors[:5])
        if len(errors) > 5:
            message += f" (and {len(errors) - 5} more)"
        return JSONResponse({"message": message, "detail": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)  # also 404/405 raised by the router
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"message": str(error.detail), "detail": None}, status_code=error.status_code,
                            headers=error.headers)

    errors = {
        413: {"model": ErrorResponse, "description": f"request body over {max_request_bytes} bytes"},
        415: {"model": ErrorResponse, "description": "a body that is not declared as application/json"},
        422: {"model": ErrorResponse, "description": "malformed JSON, wrong type, missing/unknown field, or a "
                                                     "limit exceeded; `message` names the field"},
        501: {"model": ErrorResponse, "description": f"a base64 image file, when they cannot be used: {image_files}"},
        503: {"model": ErrorResponse, "description": f"more than {max_queued} requests waiting; retry"},
    }

    @app.post("/v1/rank", response_model=RankResponse, responses=errors, summary="Rank the reviews of a product")
    async def rank(request: RankRequest) -> RankResponse:
        prepared = await run_in_threadpool(converter.convert, request)  # tokenizing and arrays off the event loop
        try:
            future = scorer.submit(prepared.ranking)
        except ServiceBusy:
            raise HTTPException(503, f"more than {max_queued} requests are waiting for the model; retry later",
                                headers={"Retry-After": "1"}) from None
        scores = await asyncio.wrap_future(future)
        return RankResponse(
            product_id=None if request.product_id is None else str(request.product_id),
            reviews=[RankedReview(**review) for review in ranked_reviews(prepared.review_ids, scores)],
            product_text_truncated=prepared.product_truncated,
            truncated_reviews=prepared.truncated_reviews,
        )

    @app.get("/healthz", summary="Liveness and scorer counters")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "queued": scorer.queued, "forwards": scorer.forwards, "requests": scorer.requests}

    @app.get("/v1/model", summary="Model, checkpoint, config, training metrics, versions and limits")
    async def model() -> dict[str, Any]:
        return description

    return app


# ---- running it ------------------------------------------------------------------------------------------------


def app_from_environment() -> FastAPI:
    """uvicorn factory of each worker process when `run_server` starts several (settings come from the parent)."""
    settings = json.loads(os.environ[_WORKER_SETTINGS_ENV])
    return create_app(Path(settings.pop("checkpoint_path")), **settings)


def _check_port(host: str, port: int) -> None:
    """Fail with a clear message, before loading anything else, when the address cannot be listened on."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise MrhpError(f"cannot resolve --host {host}: {error.strerror}") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            raise MrhpError(f"cannot listen on {host}:{port}: {error.strerror}") from None


def run_server(
    checkpoint_path: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    threads: int | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    max_reviews: int = DEFAULT_MAX_REVIEWS,
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
    max_queued: int = DEFAULT_MAX_QUEUED,
    batch_rows: int | None = None,
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS,
    image_input_size: int = DEFAULT_INPUT_SIZE,
    image_max_regions: int = DEFAULT_MAX_REGIONS,
) -> None:
    """Serve until interrupted. With `workers` > 1, each worker process loads its own copy of the model and uses
    `threads` torch threads (default: the CPU count divided by the workers)."""
    import uvicorn

    if workers < 1:
        raise MrhpError(f"--workers must be >= 1, got {workers}")
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // workers)
    _check_port(host, port)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: the service has no authentication; put it behind a gateway", host)
    settings = {
        "max_request_bytes": max_request_bytes, "max_reviews": max_reviews, "max_text_chars": max_text_chars,
        "max_queued": max_queued, "batch_rows": batch_rows, "batch_wait_ms": batch_wait_ms, "threads": threads,
        "image_input_size": image_input_size, "image_max_regions": image_max_regions,
    }
    app = create_app(checkpoint_path, **settings)  # fails here, before serving, on a bad checkpoint
    if workers == 1:
        uvicorn.run(app, host=host, port=port, log_level="info")
        return
    del app
    os.environ[_WORKER_SETTINGS_ENV] = json.dumps({"checkpoint_path": str(Path(checkpoint_path).resolve()), **settings})
    uvicorn.run("mrhp.serve.app:app_from_environment", factory=True, host=host, port=port, workers=workers,
                log_level="info")
