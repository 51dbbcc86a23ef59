"""The download queue: finished jobs waiting for their video, soonest-expiring URL first, with
failed downloads retried behind them on at most half the downloaders."""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import anyio

from ..ledger import Job


@dataclass(eq=False)
class Queued:
    """One job's download as it goes through the queue, with what its tries in this run found."""

    job: Job
    failures: int = 0  # failed tries in this run: above zero, it comes back as a retry
    first_failure: float = 0.0  # monotonic time of the first failed try
    repolled: bool = False  # a refused URL has had this job's one re-poll of the run
    # failures counted when a re-poll gave the URL back unchanged past its expiry (None: it did not, or
    # the URL answered anything but 403/404/410 since): every later try gone, the URL is dead
    dead_since: int | None = None
    oversize: int = 0  # answers over the size cap
    in_retry_slot: bool = False  # the queue's: taken as a retry, holding one of the retry slots
    timing: str | None = None  # what its polls found of its render's time, for its `rendered` event


class ExpiryQueue:
    """Jobs waiting for download, soonest-expiring URL first, bounded: when downloads fall behind,
    `put` waits, so workers stop taking new jobs instead of the backlog growing with the batch.

    A failed download comes back through `put_back` after its back-off, behind every fresh job,
    and at most `retry_slots` retries are downloading at once: slow or failing URLs (a slow one
    holds its downloader until its deadline) can never take every downloader, so fresh videos
    keep arriving while they are retried. With one downloader, a retry waits until no fresh job
    does. The bound counts retries too (they are jobs of the backlog)."""

    def __init__(self, limit: int = 256) -> None:
        self.limit = limit
        self.downloaders = 0  # each downloader enlists as it starts
        self._fresh: list[tuple[float, int, Queued]] = []
        self._ready: list[tuple[float, int, Queued]] = []  # retries whose back-off has passed
        self._later: list[tuple[float, int, Queued]] = []  # retries waiting out their back-off, by due time
        self._retrying = 0  # retries being downloaded now
        self._closed = False
        self._event = anyio.Event()
        self._space = anyio.Event()
        self._n = 0

    def __len__(self) -> int:
        return len(self._fresh) + len(self._ready) + len(self._later)

    async def put(self, job: Job, timing: str | None = None) -> None:
        """Queue a job whose render just finished (or that a run found rendered); `timing`: what
        the polls found of its render's time."""
        while len(self) >= self.limit:
            if self._space.is_set():
                self._space = anyio.Event()
            await self._space.wait()
        self._push(self._fresh, _expiry(job), Queued(job, timing=timing))

    def put_back(self, item: Queued, delay: float) -> None:
        """A failed download, to be tried again in `delay` seconds (it never waits: it already
        holds its place in the bound)."""
        self._push(self._later, anyio.current_time() + max(0.0, delay), item)

    def enlist(self) -> None:
        """A downloader starts taking from this queue (half of them, at least one, may retry)."""
        self.downloaders += 1

    @property
    def retry_slots(self) -> int:
        return max(1, self.downloaders // 2)

    def done(self, item: Queued) -> None:
        """A downloader is finished with `item` (downloaded, put back or left for the next run)."""
        if item.in_retry_slot:
            item.in_retry_slot = False
            self._retrying -= 1
            self._event.set()

    def close(self) -> None:
        self._closed = True
        self._event.set()

    async def get(self) -> Queued | None:
        """The next download: a fresh job first; else a retry that is due, while a retry slot is
        free; None once the queue is closed and holds nothing, not even a retry waiting."""
        while True:
            now = anyio.current_time()
            while self._later and self._later[0][0] <= now:
                item = heapq.heappop(self._later)[2]
                self._push(self._ready, _expiry(item.job), item)
            if self._fresh:
                return self._pop(self._fresh)
            if self._ready and self._retrying < self.retry_slots:
                self._retrying += 1
                item = self._pop(self._ready)
                item.in_retry_slot = True
                return item
            if self._closed and not len(self):
                return None
            if self._event.is_set():
                self._event = anyio.Event()
            wake = self._later[0][0] - now if self._later else None
            with anyio.move_on_after(wake):
                await self._event.wait()

    def _push(self, heap: list[tuple[float, int, Queued]], order: float, item: Queued) -> None:
        self._n += 1
        heapq.heappush(heap, (order, self._n, item))
        self._event.set()

    def _pop(self, heap: list[tuple[float, int, Queued]]) -> Queued:
        item = heapq.heappop(heap)[2]
        self._space.set()
        return item


def _expiry(job: Job) -> float:
    return job.output_expires_at or float("inf")
