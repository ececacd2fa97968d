"""The FastAPI application of the HTTP service (see `mrhp.ranking.serve`): the app factory and the server; the
batching scorer is `mrhp.ranking.serve.scorer`. Requests are parsed and scored by `mrhp.ranking.ranker.Ranker`, as
in `mrhp predict`."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mrhp import __version__
from mrhp.compute.devices import resolve_device
from mrhp.errors import MrhpError
from mrhp.models.checkpoint import VERSION as CHECKPOINT_VERSION
from mrhp.models.checkpoint import load_checkpoint
from mrhp.ranking.encoders import ImageFiles
from mrhp.ranking.ranker import NonFiniteScores, Ranker, file_sha256
from mrhp.ranking.request import (
    ImageFilesUnavailable,
    RequestError,
    RequestLimits,
    field_name,
)
from mrhp.ranking.serve.page import add_page_routes
from mrhp.ranking.serve.schema import (
    ErrorResponse,
    RankedReview,
    RankRequest,
    RankResponse,
)
from mrhp.ranking.serve.scorer import BatchScorer, ServiceBusy
from mrhp.ranking.serve.settings import ServeSettings

log = logging.getLogger(__name__)

_WORKER_ENVIRONMENT = "MRHP_SERVE"  # how `run_server` hands the checkpoint and settings to uvicorn worker processes


class _BodyLimit:
    """ASGI middleware, before any parsing: answers 413 to a request body over `max_bytes` (declared or streamed),
    so a client can never make the server hold more than that per request; and, for a POST, 415 to a body not
    declared as JSON (also when no Content-Type is given) and 422 to one that is not UTF-8 (RFC 8259 JSON)."""

    def __init__(self, app: Any, max_bytes: int, timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout  # seconds for the whole body: a client sending a byte now and then is cut off

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(int(declared), scope, receive, send)
            return
        chunks, size, more = [], 0, True
        deadline = asyncio.get_running_loop().time() + self.timeout
        while more:
            try:
                message = await asyncio.wait_for(receive(), deadline - asyncio.get_running_loop().time())
            except TimeoutError:
                await _error(408, f"the request body did not arrive whole within {self.timeout:g} s")(
                    scope, receive, send)
                return
            if message["type"] != "http.request":  # client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await self._too_large(size, scope, receive, send)
                return
        body, replayed = b"".join(chunks), False
        if scope.get("method") == "POST":
            refusal = _refused_body(dict(scope.get("headers", [])).get(b"content-type", b""), body)
            if refusal is not None:
                await refusal(scope, receive, send)
                return

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, size: int, scope: dict, receive: Any, send: Any) -> None:
        message = f"request body of {size} bytes or more exceeds the limit of {self.max_bytes} bytes"
        await _error(413, message)(scope, receive, send)


def _refused_body(content_type: bytes, body: bytes) -> JSONResponse | None:
    """The answer to a POST body that is not JSON text, or None when it may go on to the parser."""
    media = content_type.decode("latin-1").split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        shown = repr(media[:60]) if media else "none"
        return _error(415, f"send the body as JSON (Content-Type: application/json); got {shown}")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as error:
        return _error(422, f"body: not UTF-8 text ({error.reason} at byte {error.start}); JSON must be UTF-8")
    return None


# ---- errors ----------------------------------------------------------------------------------------------------


def _error(status: int, message: str, detail: object = None, headers: dict | None = None) -> JSONResponse:
    """Every error answer: `{"message", "detail"}` as ASCII JSON, so that no text a client sent (a lone surrogate
    in a field name, say) can make the answer itself fail to encode."""
    return _AsciiJSONResponse({"message": message, "detail": detail}, status_code=status, headers=headers)


class _AsciiJSONResponse(JSONResponse):
    def render(self, content: object) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


async def _internal_error(_: Request, error: Exception) -> JSONResponse:
    """A failure nobody foresaw is still the documented JSON 500, never a plain-text page; the log has the trace."""
    log.error("unhandled error answering a request", exc_info=error)
    return _error(500, f"internal error ({type(error).__name__}); the server log has the details")


async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """422 naming each field at fault (the first five in `message`); a body not declared as JSON never gets here
    (415 from `_BodyLimit`)."""
    errors = []
    for item in error.errors():
        loc = list(item.get("loc", ()))
        if item.get("type") == "json_invalid":
            position = loc[1] if len(loc) > 1 else "?"
            errors.append({"field": "body", "loc": loc, "type": "json_invalid",
                           "msg": f"malformed JSON at character {position}: {item.get('ctx', {}).get('error', '')}"})
        else:
            field = field_name(loc[1:] if loc[:1] == ["body"] else loc) or "body"
            errors.append({"field": field, "loc": loc, "type": item.get("type"), "msg": item.get("msg")})
    message = "; ".join(f"{e['field']}: {e['msg']}" for e in errors[:5])
    if len(errors) > 5:
        message += f" (and {len(errors) - 5} more)"
    return _error(422, message, errors)


async def _http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
    """Every other error (also 404/405 raised by the router) in the same `{"message", "detail"}` form."""
    if error.status_code == 400:
        # FastAPI's only 400: a body json.loads gave up on for another reason than a syntax error (in practice
        # RecursionError on arrays nested thousands deep). It is malformed JSON to the client: 422, as documented.
        return _error(422, "body: the JSON cannot be read (nested too deeply?)")
    return _error(error.status_code, str(error.detail), headers=error.headers)


def _json_body(body: bytes) -> object:
    """The JSON value of a body (`_BodyLimit` has checked that it is declared JSON and is UTF-8); 422 when it is
    malformed or cannot be read."""
    try:
        return json.loads(body)
    except json.JSONDecodeError as error:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", error.pos), "msg": "JSON decode error",
                                       "ctx": {"error": error.msg}}]) from None
    except (RecursionError, ValueError):  # nested thousands deep, or an integer of more digits than Python reads
        raise HTTPException(400) from None


_REQUEST_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/RankRequest"}}}}}


def _document_request(app: FastAPI) -> None:
    """Put `RankRequest` and the models it uses in the OpenAPI schema, which `_REQUEST_BODY` refers to (the route
    reads the raw body, so FastAPI does not add them itself)."""
    schema = RankRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas = {**schema.pop("$defs", {}), "RankRequest": schema}
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            generate().setdefault("components", {}).setdefault("schemas", {}).update(schemas)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _answered(error: RequestError) -> Exception:
    """What a request the parser refused is answered with: 501 for an image file that cannot be used, else 422."""
    if isinstance(error, ImageFilesUnavailable):
        return HTTPException(501, f"{field_name(error.loc)}: {error.reason}")
    return RequestValidationError([{"type": "value_error", "loc": ("body", *error.loc), "msg": error.reason}])


# ---- the application -------------------------------------------------------------------------------------------


def describe(ranker: Ranker, checkpoint_path: Path, settings: ServeSettings) -> dict[str, Any]:
    """What `GET /v1/model` answers."""
    checkpoint = ranker.checkpoint
    config = checkpoint.config
    return {
        "model": {
            "name": config.model.name,
            "class": type(checkpoint.model).__name__,
            "parameters": sum(p.numel() for p in checkpoint.model.parameters()),
        },
        "mrhp_version": __version__,
        "checkpoint": {
            "file": checkpoint_path.name,
            "sha256": file_sha256(checkpoint_path),
            "format_version": CHECKPOINT_VERSION,
            "written_by_mrhp": checkpoint.mrhp_version,
        },
        "config": config.to_dict(),
        "metrics": checkpoint.metrics,
        "relevance_threshold": checkpoint.relevance_threshold,
        "inputs": {
            "vocabulary_size": len(checkpoint.vocab),
            "uses_images": ranker.uses_images,
            "explains": ranker.explains,
            "image_feature_size": checkpoint.inputs.image_dim,
            "image_files": ranker.image_files.unusable is None,
            "image_files_note": ranker.image_files.note,
            "max_tokens": config.data.max_tokens,
            "text_encoder": config.model.text_encoder,
            "text_encoder_precision": config.model.text_encoder_precision,
            "max_regions": config.data.max_regions,
        },
        "limits": {
            "max_request_bytes": settings.max_request_bytes,
            "max_reviews": settings.max_reviews,
            "max_image_files": settings.max_image_files,
            "body_timeout_s": settings.body_timeout_s,
            "max_text_chars": settings.max_text_chars,
            "max_queued": settings.max_queued,
            "batch_rows": ranker.batch_rows,
        },
    }


def warm_up(ranker: Ranker) -> None:
    """Load the text encoder and run it and the model once, before the server listens (so before `/healthz`
    answers): the first pass of a fresh process loads weights and allocates and tunes kernels, which made the
    first request of a pretrained-encoder model about 9 times slower than the next ones (issue 22)."""
    started = time.perf_counter()
    ranker.text_states.load()
    request = {"text": "warm-up", "reviews": [{"review_id": "1", "text": "warm-up"}]}
    try:
        ranker.score([ranker.parse(request).ranking])
    except NonFiniteScores as error:  # each request says so (500); the service itself can run
        log.warning("warm-up: %s", error)
    log.info("warmed up in %.1f s", time.perf_counter() - started)


def create_app(checkpoint_path: Path, settings: ServeSettings | None = None) -> FastAPI:
    """Load the checkpoint once (`MrhpError` on a missing, unreadable or incompatible one), load and warm the text
    encoder and the model (`warm_up`), and build the application; the scorer thread runs while the application's
    lifespan does."""
    settings = settings or ServeSettings()
    checkpoint_path = Path(checkpoint_path)
    checkpoint = load_checkpoint(checkpoint_path)
    checkpoint.model.to(resolve_device(settings.device))
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    image_files = ImageFiles(checkpoint, input_size=settings.image_input_size,
                             max_regions=settings.image_max_regions, threads=settings.threads)
    if image_files.unusable is None:
        image_files.extractor()  # load the network now: a broken install fails at start-up, not on a request
    ranker = Ranker(checkpoint, batch_rows=settings.batch_rows, image_files=image_files,
                    product_cache=settings.product_cache)
    warm_up(ranker)
    scorer = BatchScorer(ranker, settings.batch_wait_ms / 1000.0, settings.max_queued)
    description = describe(ranker, checkpoint_path, settings)
    log.info("loaded %s (%s, %d parameters, sha256 %s)", checkpoint_path, description["model"]["class"],
             description["model"]["parameters"], description["checkpoint"]["sha256"][:12])

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        scorer.start()
        yield
        scorer.stop()

    data = checkpoint.config.data
    app = FastAPI(
        title="MRHP review helpfulness ranking",
        version=__version__,
        lifespan=lifespan,
        description=(
            "Ranks the reviews of a product by predicted helpfulness (Nguyen et al., EMNLP 2022).\n\n"
            f"Limits: request body at most {settings.max_request_bytes} bytes (413); at most "
            f"{settings.max_reviews} reviews per request and texts of at most {settings.max_text_chars} characters "
            f"(422); texts are cut at {data.max_tokens} tokens and items at {data.max_regions} image regions, as in "
            f"training; at most {settings.max_queued} requests waiting (503). Images: inline region features "
            f"[n_regions, {checkpoint.inputs.image_dim}]; base64 image files: {image_files.note} (else 501)."
        ),
    )
    app.add_middleware(_BodyLimit, max_bytes=settings.max_request_bytes, timeout=settings.body_timeout_s)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    _add_routes(app, ranker, scorer, settings, description)
    _document_request(app)
    add_page_routes(app)
    return app


def _add_routes(app: FastAPI, ranker: Ranker, scorer: BatchScorer, settings: ServeSettings,
                description: dict[str, Any]) -> None:
    limits = RequestLimits(max_reviews=settings.max_reviews, max_text_chars=settings.max_text_chars,
                           known_fields_only=True, null_is_absent=True,
                           max_image_files=settings.max_image_files)
    errors = {
        413: {"model": ErrorResponse, "description": f"request body over {settings.max_request_bytes} bytes"},
        415: {"model": ErrorResponse, "description": "a body that is not declared as application/json"},
        422: {"model": ErrorResponse, "description": "malformed JSON, wrong type, missing/unknown field, or a "
                                                     "limit exceeded; `message` names the field"},
        500: {"model": ErrorResponse, "description": "the model computed NaN or infinite scores"},
        501: {"model": ErrorResponse, "description": "a base64 image file, when they cannot be used: "
                                                     f"{ranker.image_files.note}"},
        503: {"model": ErrorResponse, "description": f"more than {settings.max_queued} requests waiting; retry"},
    }

    # The body is validated once, by the request parser that `mrhp predict` uses too; `RankRequest` only documents
    # it (`_document_request`). Unset fields are left out: a review's `explanation` appears only when asked for.
    @app.post("/v1/rank", response_model=RankResponse, response_model_exclude_unset=True, responses=errors,
              summary="Rank the reviews of a product", openapi_extra=_REQUEST_BODY)
    async def rank(request: Request) -> RankResponse:
        body = _json_body(await request.body())
        try:  # parsing runs off the event loop: it may decode images
            parsed = await run_in_threadpool(ranker.parse, body, limits=limits)
        except RequestError as error:
            raise _answered(error) from None
        try:
            future = scorer.submit(parsed.ranking, parsed.explain)
        except ServiceBusy:
            raise HTTPException(503, f"more than {settings.max_queued} requests are waiting for the model; retry "
                                     "later", headers={"Retry-After": "1"}) from None
        try:
            scores, split = await asyncio.wrap_future(future)
        except NonFiniteScores as error:
            raise HTTPException(500, str(error)) from None
        ranked = ranker.ranked(parsed, scores, split)
        return RankResponse(
            product_id=parsed.product_id,
            reviews=[RankedReview(**review) for review in ranked.in_rank_order()],
            product_text_truncated=parsed.product_truncated,
            truncated_reviews=parsed.truncated_reviews,
        )

    @app.get("/healthz", summary="Liveness and scorer counters")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "queued": scorer.queued, "forwards": scorer.forwards, "requests": scorer.requests,
                "product_cache_hits": ranker.text_states.cache_hits}

    @app.get("/v1/model", summary="Model, checkpoint, config, training metrics, versions and limits")
    async def model() -> dict[str, Any]:
        return description


# ---- running it ------------------------------------------------------------------------------------------------


def app_from_environment() -> FastAPI:
    """uvicorn factory of each worker process when `run_server` starts several (settings come from the parent)."""
    handed = json.loads(os.environ[_WORKER_ENVIRONMENT])
    return create_app(Path(handed["checkpoint"]), ServeSettings(**handed["settings"]))


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


def run_server(checkpoint_path: Path, settings: ServeSettings | None = None) -> None:
    """Serve until interrupted. With several `workers`, each worker process loads its own copy of the model and
    uses `threads` torch threads (default: the CPU count divided by the workers)."""
    import uvicorn

    settings = settings or ServeSettings()
    if settings.threads is None:
        settings = replace(settings, threads=max(1, (os.cpu_count() or 1) // settings.workers))
    _check_port(settings.host, settings.port)
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: the service has no authentication; put it behind a gateway", settings.host)
    app = create_app(checkpoint_path, settings)  # fails here, before serving, on a bad checkpoint
    if settings.workers == 1:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")
        return
    del app
    os.environ[_WORKER_ENVIRONMENT] = json.dumps(
        {"checkpoint": str(Path(checkpoint_path).resolve()), "settings": asdict(settings)})
    uvicorn.run("mrhp.ranking.serve.app:app_from_environment", factory=True, host=settings.host, port=settings.port,
                workers=settings.workers, log_level="info")
