"""The group writer: one task commits whatever ledger writes have queued, in one transaction (one
fsync for many jobs under load), inside shielded cancel scopes so Ctrl-C cannot lose them. When the
database fails (locked past its busy timeout, a dropped connection, a server restarting), the same
writes are tried again with back-off for `patience` seconds; a write that records something the
API did (a charge, a finished render, a saved video) and still fails is kept in the answer journal
beside the ledger (`ledger.journal`), which the next run records first, and the run stops saying so."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

from ..errors import BatcherError, DiskFullError, IllegalTransition, LedgerError, LedgerUnavailable, WriteRefused
from ..ledger import Ledger
from ..ledger.journal import Record
from ..policy import RetryPolicy
from .threads import IoThreads

log = logging.getLogger("batcher.run")
T = TypeVar("T")

DEFAULT_PATIENCE = 300.0  # seconds a failing ledger is waited for before answers go to the journal
_SHORT = 2.0  # seconds each later write gets once a whole patience went by: the run is stopping


def failed_ledger(e: object) -> bool:
    """A failure of the database itself, not a refused write of ours (an illegal move, a lost lease)."""
    return isinstance(e, LedgerError) and not isinstance(e, IllegalTransition)


def worth_waiting(e: object) -> bool:
    """A failure that may pass while we wait (a lock, a connection); a full disk stops the run at
    once, and so does a write the database refuses as it is (a constraint: waiting cannot help)."""
    return failed_ledger(e) and not isinstance(e, (DiskFullError, WriteRefused))


class LedgerWriter:
    """One task that commits queued writes together: one fsync for many jobs under load."""

    def __init__(self, ledger: Ledger, threads: IoThreads, max_batch: int = 256, *,
                 patience: float = DEFAULT_PATIENCE, sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None):
        self.ledger = ledger
        self.threads = threads
        self.max_batch = max_batch
        self.patience = patience
        self.backoff = RetryPolicy(base=0.25, cap=min(10.0, max(0.25, patience / 4)), max_attempts=10 ** 9,
                                   max_total=patience)
        self._sleep, self._clock, self._rng = sleep, clock, rng or random.Random()
        self._failing_since: float | None = None  # when the ledger started failing, while it does
        self._gave_up = False  # a whole patience went by without a commit
        self.journaled: list[Record] = []  # answers kept in the journal by this run
        self._send, self._recv = anyio.create_memory_object_stream[tuple[Any, list[Any], anyio.Event]](10_000)

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
                    results = await self._commit([b[0] for b in batch])
                    for (_, box, done), result in zip(batch, results, strict=True):  # one result per write
                        box.append(result)
                        done.set()

    async def _commit(self, ops: list[Callable[[Any], Any]]) -> list[Any]:
        """Commit `ops` together (patiently); a failure is each op's result."""
        try:
            return await self.patiently(self.ledger.write_many, ops)
        except Exception as e:  # the writer never dies: every write waiting on it would wait for ever
            failed = e if isinstance(e, BatcherError) else LedgerError(f"ledger write failed: {type(e).__name__}")
            return [failed] * len(ops)

    async def patiently(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a ledger call on an I/O thread (the group commit, a claim, a lease's renewal), waiting
        out a failing database with back-off for as long as patience allows; once a whole patience
        has gone by without an answer, later calls get a short try each: the run is stopping."""
        started, tries = self._clock(), 0
        while True:
            try:
                result = await self.threads.run(fn, *args)
            except BatcherError as e:
                if not worth_waiting(e):
                    raise
                now = self._clock()
                if self._failing_since is None:
                    self._failing_since = now
                    log.warning("ledger write failed (%s); trying again for up to %gs", e, self.patience)
                allowance, since = (_SHORT, started) if self._gave_up else (self.patience, self._failing_since)
                left = allowance - (now - since)
                if left <= 0:
                    self._gave_up = True
                    raise
                tries += 1
                await self._sleep(min(left, self.backoff.delay(tries, self._rng)))
                continue
            if self._failing_since is not None:
                log.warning("the ledger %s answers again", self.ledger.display)
            self._failing_since, self._gave_up = None, False
            return result

    async def write(self, op: Callable[[Any], Any], record: Record | None = None) -> Any:
        """Commit one write (shielded: a cancellation cannot lose it); raise what it raised.

        `record`: what the API did that this write records. If the ledger cannot be written even
        after waiting, the record is kept in the journal and LedgerUnavailable names the job."""
        with anyio.CancelScope(shield=True):
            box: list[Any] = []
            done = anyio.Event()
            await self._send.send((op, box, done))
            await done.wait()
            result = box[0]
            if record is not None and failed_ledger(result):
                raise await self._journal(record, result)
        if isinstance(result, BaseException):
            raise result
        return result

    async def _journal(self, record: Record, cause: BaseException) -> LedgerUnavailable:
        try:
            await self.threads.run(self.ledger.journal_record, record)
        except OSError as e:
            return LedgerUnavailable(f"{cause}; and the answer journal {self.ledger.journal} cannot be written "
                                     f"({e.strerror or e}): {record.describe()}. Record it by hand before "
                                     f"retrying held jobs")
        self.journaled.append(record)
        return self.unavailable(cause)

    def unavailable(self, cause: BaseException) -> LedgerUnavailable:
        """Why the run stops when the ledger failed after the API acted: every answer the journal
        kept, with the job's remote id and status URL."""
        kept = "; ".join(r.describe() for r in self.journaled)
        return LedgerUnavailable(f"{cause}: {kept}; kept in {self.ledger.journal}, which the next run records "
                                 f"before anything else (nothing is submitted again)")

    def close(self) -> None:
        self._send.close()
