"""Blocking work (ledger, fsync) on a few threads of the run's own, not anyio's default 40: each
thread costs a malloc arena and a database connection with its own page cache, and more threads
buy no throughput here. The limiter belongs to the run (made inside its event loop)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import anyio

T = TypeVar("T")
IO_THREADS = 6


class IoThreads:
    """A run's small set of I/O threads."""

    def __init__(self, size: int = IO_THREADS) -> None:
        self.size = size
        self._limiter: anyio.CapacityLimiter | None = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking `fn(*args)` on one of the threads."""
        if self._limiter is None:  # made on first use, inside the run's event loop
            self._limiter = anyio.CapacityLimiter(self.size)
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)
