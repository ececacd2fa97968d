"""Reader of Steam store reviews as the ``steamreviews`` package writes them (``mrhp prepare --format steam
--input DIR``); :func:`mrhp.data.dumps.read_dump` runs it through the same pipeline as the other dumps.

The folder ``DIR`` holds:

``review_<appid>.json``              ``{"reviews": {recommendationid: {...}, ...}, "query_summary": {...}}``: one
                                     file per game (the product, id ``<appid>``).
``appdetails/appID_<appid>.json``    the game's store page, optional: the appdetails API's ``data`` object, or
                                     the API's whole answer ``{"<appid>": {"success": ..., "data": {...}}}``.

Fields read from a review: ``review`` (the text; required, may be empty), ``votes_up`` (helpful votes, the
label's source), ``voted_up`` (the reviewer recommends the game: the rating is 5 when true, 1 when false, the two
ends of the 1-5 star scale of the Amazon formats, so ratings mean the same across sources), ``timestamp_created``
(seconds since the epoch, UTC: the review's time) and ``steam_purchase`` (bought on Steam: the verified purchase).
``votes_funny``, ``weighted_vote_score`` and ``comment_count`` derive from other users' votes and are never read;
the author's playtime and review counts are not read either (no dev result has shown a reason to).

Product text: ``name``, ``short_description`` and ``about_the_game`` joined by newlines, HTML removed with the
standard library's :class:`html.parser.HTMLParser` (tolerant of broken markup, no new dependency; block tags
become line breaks and entities are decoded). Product images: ``header_image`` and the screenshots'
``path_full`` URLs, kept as references for ``mrhp fetch-images``. A game without a store page has an empty product
text and is counted in the report; a store page with ``"success": false`` counts the same way.

Errors (``DataError`` naming the file and the field): a ``review_*.json`` that is not a review dump (not a JSON
object with a ``reviews`` object: always an error), bytes that are not UTF-8, invalid JSON, a review without
``review``/``votes_up``/``voted_up`` or with a bad value, an appdetails file whose ``steam_appid`` is not its
review file's appid. With ``lenient`` the bad reviews, and the unreadable or mismatched files, are skipped and
counted instead.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

from mrhp.data.dump_files import SkipLog
from mrhp.data.dump_pipeline import DumpProduct, DumpReview
from mrhp.data.records import Fields, RecordError, not_unicode
from mrhp.errors import DataError

REVIEW_FILE_RE = re.compile(r"review_(\d+)\.json")
APPDETAILS_DIR = "appdetails"
# Rating of a review that recommends the game, and of one that does not.
RECOMMENDED_RATING = 5.0
NOT_RECOMMENDED_RATING = 1.0
# Tags after which the text continues on a new line.
_BLOCK_TAGS = frozenset(("br", "p", "div", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "table"))
_SKIPPED_TAGS = frozenset(("script", "style"))
_SPACES_RE = re.compile(r"[ \t\r\f\v]+")


class _TextOnly(HTMLParser):
    """Collects the text of an HTML fragment: block tags become line breaks, script/style content is dropped."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in _SKIPPED_TAGS:
            self._skipping += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED_TAGS:
            self._skipping = max(0, self._skipping - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    """The visible text of an HTML fragment: tags removed, entities decoded, runs of spaces and blank lines
    collapsed."""
    parser = _TextOnly()
    parser.feed(html)
    parser.close()
    lines = (_SPACES_RE.sub(" ", line).strip() for line in "".join(parser.parts).split("\n"))
    return "\n".join(line for line in lines if line)


def _load_document(path: Path, skips: SkipLog, what: str) -> object | None:
    """The JSON value of a whole file; a file that is not UTF-8 or not JSON is an error naming the line (or, in
    lenient mode, a counted skip: None)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read file ({exc})", file=path) from None
    try:
        text = raw.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        skips.skip(RecordError(f"not UTF-8 text ({exc.reason} at byte {exc.start}); convert the file to UTF-8",
                               "not UTF-8", file=path, line=line))
        return None
    try:
        return json.loads(text)
    except RecursionError:
        skips.skip(RecordError("JSON nested too deeply to read", "invalid JSON", file=path, line=None))
    except json.JSONDecodeError as exc:
        skips.skip(RecordError(f"invalid JSON ({exc.msg}, column {exc.colno}); expected {what}", "invalid JSON",
                               file=path, line=exc.lineno))
    return None


def _fields(values: dict, path: Path, record: str) -> Fields:
    return Fields(values, path, record=record, null_is_absent=True, strip_ids=True)


def _boolean(f: Fields, name: str, *, required: bool) -> bool | None:
    if not required and not f.has(name):
        return None
    value = f.required(name)
    if not isinstance(value, bool):
        raise f.error(f"expected true or false, got {json.dumps(value)[:60]}", name)
    return value


def _time(f: Fields, name: str) -> int | None:
    """Seconds since the epoch (UTC), None when absent."""
    if not f.has(name):
        return None
    value = f.integer(name)
    if value < 0:
        raise f.error(f"expected seconds since 1970 (>= 0), got {value}", name)
    return value


def review_files(folder: Path) -> list[tuple[str, Path]]:
    """``(appid, path)`` of the review dumps of ``folder`` in appid order (or of the one file ``folder``)."""
    if folder.is_file():
        paths = [folder]
    elif folder.is_dir():
        paths = sorted(folder.glob("review_*.json"))
        if not paths:
            raise DataError("no review_<appid>.json file: expected a folder written by the steamreviews package",
                            file=folder)
    else:
        raise DataError("not found", file=folder)
    files = []
    for path in paths:
        match = REVIEW_FILE_RE.fullmatch(path.name)
        if match is None:
            raise DataError("not a Steam review dump name (expected review_<appid>.json)", file=path)
        files.append((match.group(1), path))
    return sorted(files, key=lambda item: int(item[0]))


def _read_reviews(appid: str, path: Path, skips: SkipLog, notes: Counter, seen: dict[str, Path]) -> list[DumpReview]:
    document = _load_document(path, skips, "a Steam review dump")
    if document is None:
        return []
    if not isinstance(document, dict) or not isinstance(document.get("reviews"), dict):
        found = (f"keys {', '.join(sorted(map(str, document)))[:80]}" if isinstance(document, dict)
                 else type(document).__name__)
        raise DataError(f"not a Steam review dump: expected an object with a \"reviews\" object (found {found})",
                        file=path, field="reviews")
    reviews = []
    for key, values in document["reviews"].items():
        with skips.guard():
            if not isinstance(values, dict):
                raise RecordError(f"expected a review object, got {json.dumps(values)[:60]}", "bad review",
                                  file=f"{path}, review {key}", line=None, field="reviews")
            if (problem := not_unicode(key)) is not None:
                raise RecordError(f"review id {problem}", "bad recommendationid", file=path, line=None,
                                  field="reviews")
            f = _fields(values, path, str(key))
            review_id = str(key).strip()
            if not review_id:
                raise f.error("empty review id", "recommendationid")
            text = f.string("review")
            votes = f.integer("votes_up")
            if votes < 0:
                raise f.error(f"expected a vote count >= 0, got {votes}", "votes_up")
            rating = RECOMMENDED_RATING if _boolean(f, "voted_up", required=True) else NOT_RECOMMENDED_RATING
            verified = _boolean(f, "steam_purchase", required=False)
            time = _time(f, "timestamp_created")
            if review_id in seen:
                raise f.error(f"duplicate review id {review_id!r} (also in {seen[review_id]})", "recommendationid",
                              "duplicate review")
            seen[review_id] = path
            notes["reviews with an empty text (kept)"] += not text.strip()
            notes["reviews without timestamp_created (time unknown)"] += time is None
            language = values.get("language")
            if isinstance(language, str) and language != "english":
                notes[f"reviews in {language}"] += 1
            reviews.append(DumpReview(appid, review_id, text.strip(), votes, rating, (), f"{path}, review {key}",
                                      None, time, verified))
    return reviews


def _store_page(appid: str, path: Path, skips: SkipLog, notes: Counter) -> DumpProduct | None:
    """The product side of one appdetails file, None when it is skipped or says the page was not found."""
    document = _load_document(path, skips, "a Steam appdetails object")
    if document is None:
        return None
    answer = next(iter(document.values()), None) if isinstance(document, dict) and len(document) == 1 else None
    if isinstance(answer, dict) and "success" in answer:
        # The API's whole answer, {"<appid>": {"success": ..., "data": {...}}}, rather than its data object.
        if answer["success"] is not True or not isinstance(answer.get("data"), dict):
            notes["store pages that say success: false (no product text)"] += 1
            return None
        document = answer["data"]
    if not isinstance(document, dict):
        raise DataError(f"expected the appdetails data object, got {type(document).__name__}", file=path)
    f = _fields(document, path, "data")
    with skips.guard():
        page_appid = f.id("steam_appid")
        if page_appid != appid:
            raise f.error(f"store page of app {page_appid}, but its review file is review_{appid}.json",
                          "steam_appid", "appid mismatch")
        parts = [f.string(name, required=False) or "" for name in ("name", "short_description", "about_the_game")]
        text = "\n".join(part for part in (html_to_text(p) for p in parts) if part)
        images = []
        header = f.string("header_image", required=False)
        if header and header.strip():
            images.append(header.strip())
        shots = f.get("screenshots") or []
        if not isinstance(shots, list) or not all(isinstance(s, dict) for s in shots):
            raise f.error(f"expected a list of screenshot objects, got {json.dumps(shots)[:60]}", "screenshots")
        images.extend(s["path_full"].strip() for s in shots
                      if isinstance(s.get("path_full"), str) and s["path_full"].strip())
        return DumpProduct(text, tuple(images))
    return None


def read_steam(folder: Path, skips: SkipLog, notes: Counter) -> tuple[list[DumpReview], dict[str, DumpProduct]]:
    """The reviews of every ``review_<appid>.json`` of ``folder`` and the products that have a store page."""
    reviews: list[DumpReview] = []
    products: dict[str, DumpProduct] = {}
    seen: dict[str, Path] = {}
    base = folder if folder.is_dir() else folder.parent
    for appid, path in review_files(folder):
        read = _read_reviews(appid, path, skips, notes, seen)
        reviews.extend(read)
        page = base / APPDETAILS_DIR / f"appID_{appid}.json"
        side = _store_page(appid, page, skips, notes) if page.is_file() else None
        if side is None:
            notes["games without a store page (no product text)"] += 1
        else:
            products[appid] = side
    return reviews, products
