"""What every loop of a run shares: the ledger and its group writer, the client, the budget, the
pauses, the poll planner, the download queue, the batch's control word as last read, and the run's
stop reason and messages. Loops get the context explicitly; job rows are frozen, so each write
returns the job as it now is."""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from collections.abc import Callable
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
from ..policy import Budget, PollPlanner, RatePolicy
from ..states import Control, JobState
from .downloads_queue import ExpiryQueue
from .options import RunOptions
from .outcomes import StopReason
from .pacer import RequestPacer
from .pauses import Pauses
from .pokes import HookState
from .threads import IoThreads
from .writer import LedgerWriter

log = logging.getLogger("batcher.run")


@dataclass
class RunContext:
    """One run of one batch: shared state and the small actions every loop needs."""

    ledger: Ledger
    client: PixelDojoClient
    model: ModelSpec
    batch: str
    options: RunOptions
    wall: Callable[[], float] = time.time
    rng: random.Random = field(init=False)
    threads: IoThreads = field(init=False)
    writer: LedgerWriter = field(init=False)
    pacer: RequestPacer | None = field(init=False)
    pauses: Pauses = field(init=False)
    budget: Budget = field(init=False)
    planner: PollPlanner = field(init=False)
    downloads: ExpiryQueue = field(init=False)
    owner: str = field(init=False)  # who holds leases: unique per process and run, readable in the ledger
    stop_reason: StopReason | None = None
    messages: list[str] = field(default_factory=list)
    submitted: int = 0
    completed: int = 0
    generation: int = 0
    out_abs: Path = Path()
    cost_seen: dict[tuple[Any, ...], Decimal] = field(default_factory=dict)  # the most charged per job class
    probing: set[tuple[Any, ...]] = field(default_factory=set)  # classes with a first submission in flight
    unreachable: int = 0  # submissions in a row that could not connect
    image_names: dict[str, str] = field(default_factory=dict)  # local image address -> its object in the store
    models: dict[str, ModelSpec] = field(default_factory=dict)  # by API id: every model of the batch's jobs
    core: anyio.CancelScope | None = None
    control: Control = Control.RUNNING  # the batch's control word, as the control watcher last read it
    hooks: HookState | None = None  # webhooks, when the run listens for them
    _budget_changed: anyio.Event | None = None
    _control_changed: anyio.Event | None = None

    def __post_init__(self) -> None:
        o = self.options
        self.rng = random.Random(o.seed)
        self.threads = IoThreads()
        self.writer = LedgerWriter(self.ledger, self.threads, patience=o.limits.ledger_patience)
        self.pacer = RequestPacer(RatePolicy(o.limits.rpm)) if o.limits.rpm else None
        if self.pacer is not None:
            self.client.set_hooks(self.pacer.before, self.pacer.after)
        self.pauses = Pauses(o.polling.retry.base, self.pacer, self.note)
        self.budget = Budget(o.limits.budget)
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

    # --- the run's word ------------------------------------------------------------------------

    def note(self, message: str) -> None:
        """A message for the end summary and the log, once each (the jobs' events say which)."""
        if message not in self.messages:
            self.messages.append(message)
            log.warning(message)

    def stop(self, reason: StopReason, message: str) -> None:
        """Stop submitting; the first reason stays unless a later one overrides it."""
        if self.stop_reason is None or (reason.overriding and not self.stop_reason.overriding):
            self.stop_reason = reason
        self.note(message)
        self.budget_signal()
        self.control_signal()

    @property
    def submitting_allowed(self) -> bool:
        return self.stop_reason is None

    @property
    def paused(self) -> bool:
        """The batch is paused (`batcher pause`) and this run has not stopped for another reason."""
        return self.control is Control.PAUSED and self.submitting_allowed

    @property
    def may_claim_pending(self) -> bool:
        """New submissions may start: not stopped, not paused."""
        return self.submitting_allowed and self.control is Control.RUNNING

    # --- the operator's word (`batcher pause / resume / cancel`) --------------------------------

    def control_signal(self) -> None:
        """Wake whatever waits on the control word (it changed, or the run stopped)."""
        if self._control_changed is not None:
            self._control_changed.set()
        self._control_changed = anyio.Event()

    async def control_changed(self, timeout: float | None = None) -> None:
        """Until the control word changes (or `timeout` seconds pass)."""
        if self._control_changed is None:
            self._control_changed = anyio.Event()
        with anyio.move_on_after(timeout):
            await self._control_changed.wait()

    async def until_submitting(self) -> None:
        """While the batch is paused, wait: for `resume`, or for the run to stop (`cancel`)."""
        while self.paused:
            await self.control_changed()

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

    def budget_signal(self) -> None:
        """Wake submissions waiting for room in the budget (an answer settled a reservation)."""
        if self._budget_changed is not None:
            self._budget_changed.set()
        self._budget_changed = anyio.Event()

    def unreserve(self, estimate: Decimal) -> None:
        """A reservation nothing was charged for goes; whoever waits for room in the budget wakes."""
        self.budget.settle(estimate, None)
        self.budget_signal()

    async def budget_changed(self) -> None:
        if self._budget_changed is None:
            self._budget_changed = anyio.Event()
        await self._budget_changed.wait()

    async def reserve(self, estimate: Decimal) -> bool:
        """Reserve `estimate`; while other submissions' answers may free room, wait for them."""
        while True:
            # The batch is paused (`batcher pause`): nothing new is sent until it resumes. (A pause
            # that comes after this point refuses the intent in the ledger: see `run/control.py`.)
            await self.until_submitting()
            if not self.submitting_allowed:
                return False
            if self.budget.reserve(estimate):
                return True
            if self.budget.reservations == 0:
                return False
            await self.budget_changed()
