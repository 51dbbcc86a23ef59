"""The request pacer: API requests go at the pace `RatePolicy` allows, most urgent first."""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable
from typing import ClassVar

import anyio

from ..policy import RatePolicy


class RequestPacer:
    """Lets API requests go at the pace `RatePolicy` allows, most urgent first: polls (their jobs
    may be finished, with URLs that expire) before new submissions. Downloads are not paced: the
    files live on another host."""

    PRIORITY: ClassVar[dict[str, int]] = {"poll": 0, "schema": 0, "submit": 1}

    def __init__(self, policy: RatePolicy, clock: Callable[[], float] = time.monotonic):
        self.policy = policy
        self.clock = clock
        self._waiting: list[tuple[int, int, anyio.Event]] = []
        self._wake = anyio.Event()
        self._seq = 0
        self._granted: deque[float] = deque()

    async def before(self, kind: str) -> None:
        if kind == "download":
            return
        done = anyio.Event()
        self._seq += 1
        heapq.heappush(self._waiting, (self.PRIORITY.get(kind, 0), self._seq, done))
        self._wake.set()
        await done.wait()

    async def after(self, kind: str, status: int | None) -> None:
        if kind == "download":
            return
        if status == 429:
            self.policy.on_rate_limited(self.clock(), 0.0)
        elif status is not None:
            self.policy.on_answer()

    def hold(self, seconds: float) -> None:
        """Retry-After: nothing goes before then."""
        self.policy.on_rate_limited(self.clock(), seconds)

    async def run(self) -> None:
        while True:
            if not self._waiting:
                self._wake = anyio.Event()
                await self._wake.wait()
                continue
            at = self.policy.take(self.clock())
            delay = at - self.clock()
            if delay > 0:
                await anyio.sleep(delay)
            heapq.heappop(self._waiting)[2].set()
            now = self.clock()
            self._granted.append(now)
            while self._granted and self._granted[0] < now - 10.0:
                self._granted.popleft()

    def density(self) -> float:
        """How densely to poll: sparser while requests queue for the rate, denser while it idles."""
        if len(self._waiting) > 1:
            return 0.7
        used = len(self._granted) * 6.0 / max(self.policy.rate, 1e-9)  # share of the rate, last 10 s
        if used < 0.5:
            return 2.0
        if used < 0.8:
            return 1.4
        return 1.0
