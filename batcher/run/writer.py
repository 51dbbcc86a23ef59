"""The group writer: one task commits whatever ledger writes have queued, in one transaction (one
fsync for many jobs under load), inside shielded cancel scopes so Ctrl-C cannot lose them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio

from ..errors import BatcherError
from ..ledger import Ledger
from .threads import IoThreads


class LedgerWriter:
    """One task that commits queued writes together: one fsync for many jobs under load."""

    def __init__(self, ledger: Ledger, threads: IoThreads, max_batch: int = 256):
        self.ledger = ledger
        self.threads = threads
        self.max_batch = max_batch
        self._send, self._recv = anyio.create_memory_object_stream[tuple[Any, list, anyio.Event]](10_000)

    async def run(self) -> None:
        async with self._recv:
            async for item in self._recv:
                batch = [item]
                while len(batch) < self.max_batch:
                    try:
                        batch.append(self._recv.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                with anyio.CancelScope(shield=True):
                    try:
                        results = await self.threads.run(self.ledger.write_many, [b[0] for b in batch])
                    except BatcherError as e:
                        results = [e] * len(batch)
                    for (_, box, done), result in zip(batch, results, strict=True):  # one result per write
                        box.append(result)
                        done.set()

    async def write(self, op: Callable[[Any], Any]) -> Any:
        """Commit one write (shielded: a cancellation cannot lose it); raise what it raised."""
        with anyio.CancelScope(shield=True):
            box: list[Any] = []
            done = anyio.Event()
            await self._send.send((op, box, done))
            await done.wait()
        result = box[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def close(self) -> None:
        self._send.close()
