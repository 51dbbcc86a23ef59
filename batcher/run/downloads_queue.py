"""The download queue: finished jobs waiting for their video, soonest-expiring URL first."""

from __future__ import annotations

import heapq

import anyio

from ..ledger import Job


class ExpiryQueue:
    """Jobs waiting for download, soonest-expiring URL first, bounded: when downloads fall behind,
    `put` waits, so workers stop taking new jobs instead of the backlog growing with the batch."""

    def __init__(self, limit: int = 256) -> None:
        self.limit = limit
        self._heap: list[tuple[float, int, Job]] = []
        self._closed = False
        self._event = anyio.Event()
        self._space = anyio.Event()
        self._n = 0

    def __len__(self) -> int:
        return len(self._heap)

    async def put(self, job: Job) -> None:
        while len(self._heap) >= self.limit:
            if self._space.is_set():
                self._space = anyio.Event()
            await self._space.wait()
        self._n += 1
        heapq.heappush(self._heap, (job.output_expires_at or float("inf"), self._n, job))
        self._event.set()

    def close(self) -> None:
        self._closed = True
        self._event.set()

    async def get(self) -> Job | None:
        while True:
            if self._heap:
                item = heapq.heappop(self._heap)[2]
                self._space.set()
                return item
            if self._closed:
                return None
            if self._event.is_set():
                self._event = anyio.Event()
            await self._event.wait()
