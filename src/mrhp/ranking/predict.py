"""`mrhp predict`: resumable streaming batch prediction over a JSON-lines file of any size.

Input: JSON lines, one ranking request per line (the request format of `mrhp.ranking.ranker`; image paths are relative
to the input file)::

    {"product_id": "p1", "text": "...", "images": ["p1.npy"],
     "reviews": [{"review_id": "r1", "text": "...", "images": []}, ...]}

Output: JSON lines in input order, one per product, its reviews sorted by rank (1 = most helpful)::

    {"product_id": "p1", "reviews": [{"review_id": "r1", "score": 1.23, "rank": 1}, ...]}

With `explain` (`mrhp predict --explain`), or for a line with `"explain": true`, each review also carries its
`"explanation"` (`mrhp.ranking.ranker`); only the paper's model explains its scores.

Streaming and resuming. The input is read line by line and scored in batches of about `batch_rows` reviews, so
memory is bounded by one batch (and the longest line), whatever the file size. Complete output lines are
appended to a partial file beside the output (`.NAME.partial`); after each batch the partial file is flushed to
disk and a small progress file (`.NAME.progress.json`) records how many output bytes are complete, the input
byte offset they cover, the SHA-256 of that input prefix and of the checkpoint. A re-run with the same arguments
truncates the partial file to its last recorded size (repairing a line torn by a kill) and continues from the
recorded input offset; it refuses to continue with another checkpoint or when the already-ranked part of the
input changed. At the end the partial file is renamed to the output and the progress file removed, so the output
path only ever holds a complete result.

Requests are parsed and scored by `mrhp.ranking.ranker.Ranker`, as in the HTTP service and the Python API.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mrhp import jsontext
from mrhp.data.records import parse_object_line
from mrhp.errors import MrhpError
from mrhp.outputs import write_text_atomic
from mrhp.progress import progress_bar
from mrhp.ranking.ranker import HASH_CHUNK, Ranker, file_sha256, load_ranker
from mrhp.ranking.request import RankingRequest

log = logging.getLogger(__name__)

PROGRESS_FORMAT = "mrhp-predict-progress"
PROGRESS_VERSION = 1
_Digest = type(hashlib.sha256())  # hashlib does not name its hash object type publicly


@dataclass
class _Progress:
    """What the progress file records: the first `output_bytes` of the partial output are the ranked products
    of the first `input_offset` bytes (`input_lines` lines) of the input."""

    checkpoint_sha256: str
    input_offset: int
    input_lines: int
    input_prefix_sha256: str
    output_bytes: int
    products: int
    explain: bool = False  # --explain: a resumed run must write the same kind of lines


def _partial_paths(output_path: Path) -> tuple[Path, Path]:
    return (
        output_path.with_name(f".{output_path.name}.partial"),
        output_path.with_name(f".{output_path.name}.progress.json"),
    )


def _write_progress(path: Path, progress: _Progress) -> None:
    # Atomic: a kill leaves the old or the new record, never half of one.
    write_text_atomic(path, json.dumps({"format": PROGRESS_FORMAT, "version": PROGRESS_VERSION, **vars(progress)}))


def _read_progress(path: Path) -> _Progress:
    try:
        record = jsontext.loads(path.read_text(encoding="utf-8"))
        if record.pop("format") != PROGRESS_FORMAT or record.pop("version") != PROGRESS_VERSION:
            raise ValueError("not a progress file of this mrhp version")
        return _Progress(**record)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise MrhpError(f"{path}: unreadable progress file ({error}); rerun with --restart to start over") from None


def _resume_point(
    progress_path: Path, partial_path: Path, source: BinaryIO, checkpoint_sha256: str, explain: bool
) -> tuple[_Progress, _Digest]:
    """Check that the run recorded in `progress_path` can be continued with this checkpoint and input; repair the
    partial output's tail. Returns the record and the running SHA-256 of the input prefix it covers (`source`
    is left positioned after that prefix)."""
    progress = _read_progress(progress_path)
    if progress.explain != explain:
        raise MrhpError(f"{progress_path}: the interrupted run was {'' if progress.explain else 'not '}run with "
                        "--explain; rerun with the same options, or with --restart to start over")
    if progress.checkpoint_sha256 != checkpoint_sha256:
        raise MrhpError(
            f"{progress_path}: the interrupted run used another checkpoint (SHA-256 {progress.checkpoint_sha256[:12]}, "
            f"now {checkpoint_sha256[:12]}); rerun with --restart to rank everything with this one"
        )
    prefix = hashlib.sha256()
    remaining = progress.input_offset
    while remaining > 0 and (chunk := source.read(min(HASH_CHUNK, remaining))):
        prefix.update(chunk)
        remaining -= len(chunk)
    if remaining or prefix.hexdigest() != progress.input_prefix_sha256:
        raise MrhpError(
            f"{source.name}: its first {progress.input_lines} lines changed since the interrupted run recorded in "
            f"{progress_path}; rerun with --restart to start over"
        )
    size = partial_path.stat().st_size if partial_path.is_file() else -1
    if size < progress.output_bytes:
        raise MrhpError(
            f"{partial_path}: partial output is missing or shorter ({size} bytes) than recorded in {progress_path} "
            f"({progress.output_bytes}); rerun with --restart to start over"
        )
    if size > progress.output_bytes:
        # Lines written after the last record (the last one possibly torn by the kill) are scored again.
        log.warning("dropping %d bytes of unrecorded output at the end of %s", size - progress.output_bytes, partial_path)
        with partial_path.open("r+b") as handle:
            handle.truncate(progress.output_bytes)
    return progress, prefix


def _parse_line(raw: bytes, number: int, path: Path, ranker: Ranker) -> RankingRequest | None:
    request = parse_object_line(raw, path, number)
    if request is None:
        return None
    return ranker.parse(request, where=f"{path} line {number}", base_dir=path.parent)


def _refuse_overwriting_inputs(output_path: Path, *inputs: Path) -> None:
    """Refuse, before any work, an output (or its partial and progress files) that is one of the inputs: the
    rename at the end would replace the input with its own ranking. Resolved paths see through symlinks and `..`."""
    read = {path.resolve(): path for path in inputs}
    for written in (output_path, *_partial_paths(output_path)):
        if written.resolve() in read:
            raise MrhpError(f"--output {output_path}: writing {written} would overwrite the input "
                            f"{read[written.resolve()]}; choose another output path")


def predict_file(
    checkpoint_path: Path,
    input_path: Path,
    output_path: Path,
    progress: bool = True,
    restart: bool = False,
    batch_rows: int | None = None,
    explain: bool = False,
    device: str = "auto",
) -> int:
    """Rank the reviews of every product of `input_path` into `output_path`, resuming an interrupted run.

    Args:
        restart: discard the progress of an interrupted run instead of continuing it.
        batch_rows: review rows per forward pass (default: the checkpoint's `data.eval_batch_rows`): consecutive
            products are packed up to it, a product with more reviews is scored in pieces of that many.
        explain: add each review's explanation (the paper's model only; `MrhpError` for another).
        device: where the model scores (`mrhp.compute.devices.DEVICE_FORMS`).

    Returns:
        The number of products in the output (those ranked by an interrupted earlier run included).
    """
    input_path, output_path = Path(input_path), Path(output_path)
    if not input_path.is_file():
        raise MrhpError(f"input file not found: {input_path}")
    _refuse_overwriting_inputs(output_path, input_path, Path(checkpoint_path))
    ranker = load_ranker(checkpoint_path, batch_rows=batch_rows, device=device)
    if explain and not ranker.explains:
        raise MrhpError(f"--explain: model '{ranker.checkpoint.config.model.name}' of {checkpoint_path} does not "
                        "support explanations; only the paper's model (mrhp) does")
    checkpoint_sha256 = file_sha256(checkpoint_path)
    partial_path, progress_path = _partial_paths(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with input_path.open("rb") as source:
        if progress_path.is_file() and not restart:
            state, prefix = _resume_point(progress_path, partial_path, source, checkpoint_sha256, explain)
            log.info("resuming after input line %d (%d products already ranked in %s)", state.input_lines,
                     state.products, partial_path)
        else:
            state = _Progress(checkpoint_sha256, 0, 0, hashlib.sha256().hexdigest(), 0, 0, explain)
            prefix = hashlib.sha256()
            partial_path.write_bytes(b"")
            _write_progress(progress_path, state)
        _rank_stream(ranker, source, input_path, partial_path, progress_path, state, prefix, progress)
    os.replace(partial_path, output_path)
    progress_path.unlink()
    log.info("ranked the reviews of %d products into %s", state.products, output_path)
    return state.products


def _rank_stream(
    ranker: Ranker,
    source: BinaryIO,
    input_path: Path,
    partial_path: Path,
    progress_path: Path,
    state: _Progress,
    prefix: _Digest,
    progress: bool,
) -> None:
    """Score the rest of `source` (positioned at `state.input_offset`) in batches of about `batch_rows` reviews,
    appending to the partial output and recording `state` after each batch."""
    offset, number = state.input_offset, state.input_lines
    pending: list[RankingRequest] = []
    pending_rows = 0
    bar = progress_bar(total=os.fstat(source.fileno()).st_size, initial=offset, unit="B", unit_scale=True,
                       desc="ranking", show=progress)
    with partial_path.open("ab") as out:

        def flush() -> None:
            lists = [request.ranking for request in pending]
            if any(request.explain for request in pending):
                scored = ranker.score_explained(lists)
            else:
                scored = [(scores, None) for scores in ranker.score(lists)]
            for request, (values, split) in zip(pending, scored):
                ranked = ranker.ranked(request, values, split)
                line = {"product_id": request.product_id, "reviews": ranked.in_rank_order()}
                out.write((json.dumps(line) + "\n").encode("utf-8"))
            out.flush()
            os.fsync(out.fileno())  # the bytes the progress file vouches for must be on disk before it says so
            state.products += len(pending)
            state.output_bytes = out.tell()
            state.input_offset, state.input_lines, state.input_prefix_sha256 = offset, number, prefix.hexdigest()
            _write_progress(progress_path, state)
            bar.set_postfix(products=state.products)

        for raw in source:  # binary lines keep exact byte offsets for the resume point
            number += 1
            request = _parse_line(raw, number, input_path, ranker)
            if request is not None and state.explain:
                request.explain = True
            offset += len(raw)
            prefix.update(raw)
            bar.update(len(raw))
            if request is None:
                continue
            pending.append(request)
            pending_rows += len(request.review_ids)
            if pending_rows >= ranker.batch_rows:
                flush()
                pending.clear()
                pending_rows = 0
        if pending:
            flush()
    bar.close()
