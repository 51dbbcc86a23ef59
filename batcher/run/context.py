"""What every loop of a run is given: the options and the services, fixed for the run (the
ledger and its group writer, the client, the models, the pauses, the poll planner, the download
queue), and three shared parts: the run's word (`RunState`: stop, messages, counters, control
word), the budget with its reservations (`policy.Budget`), and what was learnt of the charges
(`policy.CostMemory`). Loops get the context explicitly; job rows are frozen, so each write
returns the job as it now is."""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio

from ..client import PixelDojoClient
from ..errors import UsageError
from ..ledger import Job, Ledger
from ..ledger.journal import Record
from ..models import ModelSpec
from ..policy import Budget, CostMemory, PollPlanner, RatePolicy, Reservation
from ..states import JobState
from .downloads_queue import ExpiryQueue
from .options import RunOptions
from .pacer import RequestPacer
from .pauses import Pauses
from .pokes import HookState
from .state import RunState
from .threads import IoThreads
from .wakeups import Wakeups
from .writer import LedgerWriter

log = logging.getLogger("batcher.run")


@dataclass
class RunContext:
    """One run of one batch. Every field is set once: when the context is made, except the three
    wired while the run starts (`out_abs`, `hooks`, `core`); what changes lives in `state`,
    `budget` and `costs`."""

    ledger: Ledger
    client: PixelDojoClient
    model: ModelSpec
    batch: str
    options: RunOptions
    wall: Callable[[], float] = time.time
    models: Mapping[str, ModelSpec] = field(default_factory=dict)  # by API id: every model of the batch's jobs
    state: RunState = field(default_factory=RunState)
    rng: random.Random = field(init=False)
    threads: IoThreads = field(init=False)
    writer: LedgerWriter = field(init=False)
    pacer: RequestPacer | None = field(init=False)
    pauses: Pauses = field(init=False)
    budget: Budget = field(init=False)
    costs: CostMemory = field(init=False)
    planner: PollPlanner = field(init=False)
    downloads: ExpiryQueue = field(init=False)
    owner: str = field(init=False)  # who holds leases: unique per process and run, readable in the ledger
    # Local image address -> its object in the store: the start fills it, a worker adds what it uploads late.
    image_names: dict[str, str] = field(default_factory=dict)
    out_abs: Path = Path()  # the output folder, resolved once it exists (`startup.prepare_outputs`)
    hooks: HookState | None = None  # webhooks, once the listener listens (when the run asks for them)
    wakeups: Wakeups = field(default_factory=Wakeups)  # followers to wake when their polls move earlier
    core: anyio.CancelScope | None = None  # the workers and downloaders, once they run

    def __post_init__(self) -> None:
        o = self.options
        self.models = {self.model.api_id: self.model, **self.models}  # a batch may mix models
        self.rng = random.Random(o.seed)
        self.threads = IoThreads()
        self.writer = LedgerWriter(self.ledger, self.threads, patience=o.limits.ledger_patience)
        self.pacer = RequestPacer(RatePolicy(o.limits.rpm)) if o.limits.rpm else None
        if self.pacer is not None:
            self.client.set_hooks(self.pacer.before, self.pacer.after)
        self.pauses = Pauses(o.polling.retry.base, self.pacer, self.state.note)
        self.budget = Budget(o.limits.budget, on_change=self.state.room.wake)
        self.costs = CostMemory(on_change=self.state.room.wake)
        guess = o.polling.expected_render or self.model.expected_render_seconds
        self.planner = PollPlanner(initial=max(0.01, guess), max_interval=max(1.0, guess))
        self.downloads = ExpiryQueue(limit=max(64, 8 * o.saving.downloads))
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{self.rng.randrange(1 << 32):08x}"

    def model_of(self, job: Job) -> ModelSpec:
        """The model a job renders with (the batch's for jobs written before batches mixed models).
        A job of a model this run was not given is refused: guessing its rules could pay for a
        request the API rejects."""
        if not job.model or job.model == self.model.api_id:
            return self.model
        found = self.models.get(job.model)
        if found is None:
            raise UsageError(f"job {job.key} renders with {job.model}, which this run has no description of: "
                             f"run the manifest that names it")
        return found

    # --- writes of one job ---------------------------------------------------------------------

    async def move(self, job: Job, source: JobState, target: JobState, kind: str, detail: str | None = None,
                   *, record: Record | None = None, **fields: Any) -> Job:
        """Change a job's state in the ledger (fenced by its lease) and return the job as it now is;
        `record`: what the API did that this move records, kept in the journal if the ledger fails."""
        await self.writer.write(self.ledger.move(job.id, source, target, kind, detail, token=job.lease_token,
                                                 **fields), record)
        log.info("job %s: %s -> %s (%s)%s", job.key, source.value, target.value, kind,
                 f": {detail}" if detail else "",
                 extra={"job": job.key, "from": source.value, "to": target.value, "event": kind})
        return job.evolve(state=target.value, **fields)

    async def event(self, job: Job, kind: str, detail: str | None = None, **fields: Any) -> Job:
        """Record an event in a job's history (and field updates, fenced by its lease)."""
        await self.writer.write(self.ledger.note(job.id, kind, detail, token=job.lease_token if fields else None,
                                                 **fields))
        log.info("job %s: %s%s", job.key, kind, f": {detail}" if detail else "", extra={"job": job.key, "event": kind})
        return job.evolve(**fields) if fields else job

    async def wait_pause(self, job: Job) -> None:
        """Wait out a shared pause (429s, a burst of server errors); the job's history records it."""
        delay = self.pauses.remaining()
        if delay > 0:
            await self.event(job, "paused", f"all requests paused for {delay:.1f}s (rate limit or server errors)")
            await anyio.sleep(delay)

    # --- the budget ----------------------------------------------------------------------------

    @asynccontextmanager
    async def reserve(self, estimate: Decimal) -> AsyncIterator[Reservation | None]:
        """`estimate` reserved against the budget for the block, which ends it (charged or held);
        any other exit releases it. None: no room that an answer in flight could free, or the run
        stopped."""
        reservation = await self._room_for(estimate)
        if reservation is None:
            yield None
            return
        with reservation:  # (entered with no await since it was made: nothing can cancel in between)
            yield reservation

    async def _room_for(self, estimate: Decimal) -> Reservation | None:
        """Reserve `estimate`; while other submissions' answers may free room, wait for them."""
        while True:
            # The batch is paused (`batcher pause`): nothing new is sent until it resumes. (A pause
            # that comes after this point refuses the intent in the ledger: see `run/control.py`.)
            await self.state.until_submitting()
            if not self.state.submitting_allowed:
                return None
            reservation = self.budget.open(estimate)
            if reservation is not None or self.budget.reservations == 0:
                return reservation
            await self.state.room.wait()
