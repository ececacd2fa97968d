"""The web page of the service (`GET /`): a form to rank the reviews of one product and read each score's
explanation, in plain HTML, CSS and JavaScript shipped in `mrhp/serve/static/` (no build step, nothing fetched
from elsewhere). The page calls `POST /v1/rank` and `GET /v1/model` like any client."""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI, HTTPException
from fastapi.responses import Response

# The page's files and their media types; nothing else is served from the folder.
STATIC_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
# The page loads only its own files; the empty data: icon keeps the browser from asking for /favicon.ico.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def _read(name: str) -> bytes:
    return resources.files("mrhp.ranking.serve").joinpath("static", name).read_bytes()


def add_page_routes(app: FastAPI) -> None:
    """`GET /` (the page) and `GET /static/{name}` (its script and style sheet), read once here."""
    files = {name: _read(name) for name in STATIC_FILES}

    def answer(name: str) -> Response:
        return Response(files[name], media_type=f"{STATIC_FILES[name]}; charset=utf-8", headers=_HEADERS)

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return answer("index.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in files or name == "index.html":
            raise HTTPException(404, f"no such file: {name}")
        return answer(name)
