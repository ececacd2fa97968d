"""The scorer of the HTTP service (see `mrhp.ranking.serve`): one thread, one model, concurrent requests grouped
into micro-batches."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future

from mrhp.data.batching import RankingList
from mrhp.ranking.ranker import Ranker

log = logging.getLogger(__name__)


class ServiceBusy(Exception):
    """The scorer's queue is full."""


class BatchScorer:
    """Runs every forward pass on one thread; concurrent requests are grouped into micro-batches.

    `submit` puts a ranking list in a bounded queue and returns a future of its scores [len(reviews)] and, when
    `explain`, their split (`ScoreSplit`, else None). The thread takes the oldest request, then adds queued ones
    and those arriving within `wait_s` while the batch holds fewer than the ranker's `batch_rows` review rows, and
    scores them with `Ranker.score` (`Ranker.score_explained` when one of them asks) in one forward pass.
    """

    def __init__(self, ranker: Ranker, wait_s: float, max_queued: int) -> None:
        self.ranker = ranker
        self.batch_rows = ranker.batch_rows
        self.wait_s = wait_s
        self.forwards = 0
        self.requests = 0
        self._queue: queue.Queue[tuple[RankingList, Future, bool] | None] = queue.Queue(maxsize=max_queued)
        self._thread = threading.Thread(target=self._run, name="mrhp-scorer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join()

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def submit(self, ranking: RankingList, explain: bool = False) -> Future:
        future: Future = Future()
        try:
            self._queue.put_nowait((ranking, future, explain))
        except queue.Full:
            raise ServiceBusy from None
        return future

    def _run(self) -> None:
        carry: tuple[RankingList, Future, bool] | None = None
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

    def _score(self, batch: Sequence[tuple[RankingList, Future, bool]]) -> None:
        live = [(ranking, future, explain) for ranking, future, explain in batch
                if future.set_running_or_notify_cancel()]
        if not live:  # every client of this batch went away
            return
        lists = [ranking for ranking, _, _ in live]
        try:
            if any(explain for _, _, explain in live):
                scored = self.ranker.score_explained(lists)
            else:
                scored = [(scores, None) for scores in self.ranker.score(lists)]
        except Exception as error:  # answered as a 500 for these requests; the thread keeps serving
            log.exception("scoring a batch of %d requests failed", len(live))
            for _, future, _ in live:
                future.set_exception(error)
            return
        self.forwards += 1
        self.requests += len(live)
        for (_, future, explain), (values, split) in zip(live, scored):
            future.set_result((values, split if explain else None))
