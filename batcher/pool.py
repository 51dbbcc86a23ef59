"""The anyio worker pool: submit, poll and download a batch's jobs under a concurrency cap and a
credit budget, recording every step in the ledger so an interrupted run resumes.

One task group per run, tasks named. A feeder claims jobs from the ledger a few at a time (with
leases, so several runners can share a batch) into a bounded memory stream; `concurrency` workers
each carry one job from submission to the end of its render; downloaders take finished jobs from
a bounded queue, soonest URL expiry first. Memory stays flat whatever the batch size. Ledger writes go through one writer task that commits whatever has queued up
in a single transaction (group commit), inside shielded cancel scopes so Ctrl-C cannot lose them.

The submission protocol (never pay twice):
1. write the intent (job -> submitting, an attempt row, the estimate reserved) and commit;
2. POST, shielded from cancellation;
3. record the answer: accepted (job id, status URL, cost) in one transaction; provably not sent
   (back to pending, retried); refused (failed); anything else -> `unknown`, held for the user.
"""

from __future__ import annotations

import heapq
import logging
import os
import random
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .client import DEFAULT_MAX_RETRY_AFTER, JobStatus, PixelDojoClient, check_schema
from .files import matches, process_alive, publish, sweep_temp_files, temp_name, video_name
from .errors import (
    AuthError, BatcherError, BudgetExceeded, CreditsExhausted, DiskFullError, LeaseLost, MalformedAnswer, NotSentError,
    OutcomeUnknown, OutputGone, OversizeError, RateLimited, RejectedError, SchemaMismatch, ServerError,
)
from .ledger import Job, Ledger
from .models import ModelSpec, format_credits
from .policy import Budget, PollPlanner, RatePolicy, RetryPolicy
from .states import JobState as S

T = TypeVar("T")

try:
    BaseExceptionGroup
except NameError:  # Python 3.10
    from exceptiongroup import BaseExceptionGroup  # type: ignore[no-redef]

log = logging.getLogger("batcher.run")
# Blocking work (ledger, fsync) runs on a few threads, not anyio's default 40: each thread costs a
# malloc arena and a connection with its own page cache, and more threads buy no throughput here.
IO_THREADS = 6


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run blocking `fn` on the pool's small set of I/O threads."""
    return await anyio.to_thread.run_sync(fn, *args, limiter=_io_limiter())


_limiters: dict[int, anyio.CapacityLimiter] = {}


def _io_limiter() -> anyio.CapacityLimiter:
    # one limiter per event loop (anyio primitives belong to the loop that made them)
    import asyncio
    key = id(asyncio.get_running_loop())
    limiter = _limiters.get(key)
    if limiter is None:
        _limiters.clear()
        limiter = _limiters[key] = anyio.CapacityLimiter(IO_THREADS)
    return limiter
# Crash tests: BATCHER_FAILPOINT=NAME[:N] kills this process with SIGKILL the Nth time the run
# reaches step NAME (after-intent, after-post, after-accept, after-rendered, after-publish).
_FAILPOINT = os.environ.get("BATCHER_FAILPOINT", "")
_failpoint_hits: dict[str, int] = {}


def failpoint(name: str) -> None:
    """Die here, like a power cut, when the environment asks for it (crash tests only)."""
    if not _FAILPOINT:
        return
    wanted, _, nth = _FAILPOINT.partition(":")
    if wanted != name:
        return
    _failpoint_hits[name] = _failpoint_hits.get(name, 0) + 1
    if _failpoint_hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class RunOptions:
    """How a run behaves; the CLI's options map one to one."""

    concurrency: int = 4
    budget: float | None = None
    out_dir: Path = Path("outputs")
    max_attempts: int = 2
    job_timeout: float | None = None
    resubmit_unknown: bool = False
    downloads: int = 8
    max_download_bytes: int = 2 * 1024 ** 3
    expected_render: float = 60.0  # first poll guess before anything is learned
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER  # the longest Retry-After honoured as it is
    check_schema: bool = True
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    submit_retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(base=1.0, cap=30.0, max_attempts=6))
    rpm: float | None = None  # client-side request-rate limit, all API calls together
    lease_seconds: float = 60.0  # how long a claimed job stays ours without a renewal
    progress_interval: float = 1.0
    handle_signals: bool = False
    seed: int | None = None


@dataclass(frozen=True)
class BudgetOutlook:
    """What a budget will let a run do, told before anything is spent."""

    budget: float
    committed: float  # already charged, reserved or held, by every runner
    pending: int  # jobs still to submit
    covered: int  # of them, how many the budget covers (in the order they are submitted)
    estimate: float  # what the pending jobs are expected to cost

    def message(self) -> str | None:
        """`budget 1,000 covers about 50 of 60 jobs (estimate 1,200)`, or None if it covers all."""
        if self.covered >= self.pending:
            return None
        spent = f" ({format_credits(self.committed)} committed already)" if self.committed else ""
        left = "jobs" if not self.committed else "jobs left"
        return (f"budget {format_credits(self.budget)}{spent} covers about {self.covered:,} of {self.pending:,} "
                f"{left} (estimate {format_credits(self.estimate)}); the run stops there (exit 3)")


def budget_outlook(ledger: Ledger, batch: str, generation: int, budget: float) -> BudgetOutlook:
    """How far `budget` goes for the batch's pending jobs, given what the batch has committed."""
    committed = ledger.committed(batch)
    pending, covered, estimate = ledger.budget_outlook(batch, generation, max(0.0, budget - committed))
    return BudgetOutlook(budget, committed, pending, covered, estimate)


@dataclass
class Progress:
    """A snapshot for progress displays."""

    batch: str
    counts: dict[str, int]
    spent: float
    reserved: float
    budget: float | None
    elapsed: float
    completed_this_run: int
    total: int
    # Jobs the budget lets finish (done, in flight, and the pending ones it covers), when the
    # budget will stop the run before the end; None when it covers everything.
    covered: int | None = None


@dataclass
class RunReport:
    """Where a run left its batch."""

    batch: str
    counts: dict[str, int]
    spent: float
    held_jobs: int
    held_cost: float
    budget: float | None
    elapsed: float
    submitted: int
    completed: int
    stop_reason: str | None  # budget | credits | interrupted | auth | disk | unreachable
    messages: list[str]
    downloaded_bytes: int = 0
    # Failed and expired jobs by reason: (state, reason, count, a few keys), largest first.
    failures: list[tuple[str, str, int, list[str]]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def exit_code(self) -> int:
        if self.stop_reason in ("auth", "disk"):
            return 2
        if self.stop_reason == "interrupted":
            return 130
        if self.stop_reason in ("budget", "credits"):
            return 3
        return 0 if self.counts.get("completed", 0) == self.total else 1


class LedgerWriter:
    """One task that commits queued writes together: one fsync for many jobs under load."""

    def __init__(self, ledger: Ledger, max_batch: int = 256):
        self.ledger = ledger
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
                        results = await in_thread(self.ledger.write_many, [b[0] for b in batch])
                    except BatcherError as e:
                        results = [e] * len(batch)
                    for (_, box, done), result in zip(batch, results):
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


class RequestPacer:
    """Lets API requests go at the pace `RatePolicy` allows, most urgent first: polls (their jobs
    may be finished, with URLs that expire) before new submissions. Downloads are not paced: the
    files live on another host."""

    PRIORITY = {"poll": 0, "schema": 0, "submit": 1}

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


def job_class(params: dict[str, Any]) -> tuple:
    return (params.get("duration"), params.get("resolution"))


class Runner:
    """Runs one batch of a ledger against one client."""

    def __init__(self, ledger: Ledger, client: PixelDojoClient, model: ModelSpec, batch: str,
                 options: RunOptions | None = None, *,
                 on_progress: Callable[[Progress], None] | None = None,
                 on_force_exit: Callable[[], None] | None = None,
                 wall: Callable[[], float] = time.time):
        self.ledger = ledger
        self.client = client
        self.model = model
        self.batch = batch
        self.options = options or RunOptions()
        self.on_progress = on_progress
        self.on_force_exit = on_force_exit
        self.wall = wall
        self.rng = random.Random(self.options.seed)
        self.budget = Budget(self.options.budget)
        self.planner = PollPlanner(initial=max(0.01, self.options.expected_render),
                                   max_interval=max(1.0, self.options.expected_render))
        self.writer = LedgerWriter(ledger)
        self.pacer = RequestPacer(RatePolicy(self.options.rpm)) if self.options.rpm else None
        if self.pacer is not None:
            client.set_hooks(self.pacer.before, self.pacer.after)
        self.downloads = ExpiryQueue(limit=max(64, 8 * self.options.downloads))
        self.stop_reason: str | None = None
        self.outlook: BudgetOutlook | None = None
        self.messages: list[str] = []
        self.submitted = 0
        self.completed = 0
        self._pause_until = 0.0  # a shared pause after 429s
        self._budget_changed = anyio.Event()
        self._core: anyio.CancelScope | None = None
        self._started = 0.0
        self._generation = 0
        self._workers_left = 0
        self._cost_seen: dict[tuple, float] = {}
        self._trouble: list[float] = []
        self._trouble_level = 0
        self._unreachable = 0  # submissions in a row that could not connect
        # Who holds leases: unique per process and run, readable in the ledger.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{self.rng.randrange(1 << 32):08x}"

    TROUBLE_BURST = 5

    # --- helpers -----------------------------------------------------------------------------

    def _note(self, message: str) -> None:
        if message not in self.messages:
            self.messages.append(message)
        log.warning(message)

    def _stop(self, reason: str, message: str) -> None:
        if self.stop_reason is None or reason in ("auth", "disk", "interrupted"):
            if self.stop_reason not in ("auth", "disk", "interrupted"):
                self.stop_reason = reason
        self._note(message)
        self._budget_changed.set()

    @property
    def submitting_allowed(self) -> bool:
        return self.stop_reason is None

    async def _move(self, job: Job, source: S, target: S, kind: str, detail: str | None = None, **fields: Any
                    ) -> None:
        await self.writer.write(self.ledger.move(job.id, source, target, kind, detail,  # type: ignore[arg-type]
                                                 token=job.lease_token, **fields))
        job.state = target.value
        for name, value in fields.items():
            setattr(job, name, value)
        log.info("job %s: %s -> %s (%s)%s", job.key, source.value, target.value, kind,
                 f": {detail}" if detail else "",
                 extra={"job": job.key, "from": source.value, "to": target.value, "event": kind})

    async def _event(self, job: Job, kind: str, detail: str | None = None, **fields: Any) -> None:
        await self.writer.write(self.ledger.note(job.id, kind, detail,  # type: ignore[arg-type]
                                                 token=job.lease_token if fields else None, **fields))
        log.info("job %s: %s%s", job.key, kind, f": {detail}" if detail else "",
                 extra={"job": job.key, "event": kind})

    async def _wait_pause(self, job: Job) -> None:
        """Wait out a shared pause (429s, a burst of server errors); the job's history records it."""
        delay = self._pause_until - time.monotonic()
        if delay > 0:
            await self._event(job, "paused", f"all requests paused for {delay:.1f}s (rate limit or server errors)")
            await anyio.sleep(delay)

    def _pause(self, seconds: float) -> None:
        self._pause_until = max(self._pause_until, time.monotonic() + seconds)
        if self.pacer is not None:
            self.pacer.hold(seconds)

    def _rate_limited(self, e: RateLimited) -> None:
        """A 429: everything waits for its Retry-After, which the client capped at --max-retry-after."""
        if e.asked is not None and e.asked > e.retry_after:
            self._note(f"the API asked to wait {e.asked:,.0f}s before more requests; waiting {e.retry_after:g}s "
                       f"instead (--max-retry-after)")
        self._pause(e.retry_after)

    def _server_trouble(self) -> None:
        """Many 5xx or failed connections at once: pause every request, so a bad minute does not
        become thousands of failing requests. The pause doubles while the trouble lasts."""
        now = time.monotonic()
        self._trouble = [t for t in self._trouble if t > now - 10.0] + [now]
        if len(self._trouble) >= self.TROUBLE_BURST and now >= self._pause_until:
            self._trouble_level = min(self._trouble_level + 1, 6)
            pause = self.options.retry.base * (2 ** self._trouble_level)
            self._pause(pause)
            self._trouble = []
            log.warning("many server errors at once: pausing all requests for %.1fs", pause)

    def _server_fine(self) -> None:
        self._trouble_level = 0

    def _budget_signal(self) -> None:
        self._budget_changed.set()
        self._budget_changed = anyio.Event()

    async def _reserve(self, estimate: float) -> bool:
        """Reserve `estimate`; while other submissions' answers may free room, wait for them."""
        while True:
            if not self.submitting_allowed:
                return False
            if self.budget.reserve(estimate):
                return True
            if self.budget.reservations == 0:
                return False
            await self._budget_changed.wait()

    # --- the run -----------------------------------------------------------------------------

    async def run(self) -> RunReport:
        self._started = time.monotonic()
        await self._reap()
        if self.options.resubmit_unknown:
            n = await in_thread(self.ledger.requeue, self.batch, [S.UNKNOWN],
                                "resubmitted by consent (--resubmit-unknown)")
            if n:
                self._note(f"{n} held job(s) requeued by --resubmit-unknown: they may be charged twice")
        self._generation = await in_thread(self.ledger.generation, self.batch)
        await in_thread(self.ledger.set_budget, self.batch, self.options.budget)
        await in_thread(self._prepare_outputs)
        spend = await in_thread(self.ledger.spend, self.batch)
        self.budget.committed = spend.committed
        if self.options.budget is not None:
            self.outlook = await in_thread(budget_outlook, self.ledger, self.batch, self._generation,
                                           self.options.budget)
        avg = await in_thread(self.ledger.average_render_seconds, self.batch)
        if avg:
            self.planner.initial = max(0.01, avg)

        work_send, work_recv = anyio.create_memory_object_stream[Job](max(1, self.options.concurrency))
        try:
            async with anyio.create_task_group() as outer:
                outer.start_soon(self.writer.run, name="ledger-writer")
                pacing = anyio.CancelScope()
                if self.pacer is not None:
                    outer.start_soon(self._run_pacer, pacing, name="request-pacer")
                try:
                    if self.options.check_schema:
                        await self._check_schema()
                    async with anyio.create_task_group() as aux:
                        if self.on_progress:
                            aux.start_soon(self._report_progress, name="progress")
                        if self.options.handle_signals:
                            aux.start_soon(self._watch_signals, name="signals")
                        aux.start_soon(self._heartbeat, name="lease-heartbeat")
                        async with anyio.create_task_group() as core:
                            self._core = core.cancel_scope
                            core.start_soon(self._feed, work_send, name="feeder")
                            self._workers_left = self.options.concurrency
                            for i in range(self.options.concurrency):
                                core.start_soon(self._worker, work_recv.clone(), name=f"worker-{i}")
                            work_recv.close()
                            for i in range(self.options.downloads):
                                core.start_soon(self._downloader, name=f"downloader-{i}")
                        aux.cancel_scope.cancel()
                finally:
                    pacing.cancel()
                    self.writer.close()
                    with anyio.CancelScope(shield=True):
                        await in_thread(self.ledger.release, self.batch, self.owner)
        except BaseException as e:  # noqa: BLE001 - unwrap task-group exception groups
            raise _first_batcher_error(e) from None
        return await self._finish()

    async def _reap(self) -> None:
        await in_thread(self._expire_dead_owners)
        recovered = await in_thread(self.ledger.recover_interrupted, self.batch)
        if recovered:
            self._note(f"{recovered} job(s) were mid-submission when their runner stopped; they are held as "
                       f"'unknown' (they may have been charged)")

    def _expire_dead_owners(self) -> None:
        """Stale leases of runners that died on this host are reaped at once, not after they expire."""
        host = socket.gethostname()
        for owner in self.ledger.owners(self.batch):
            name, _, rest = owner.partition(":")
            pid = rest.partition(":")[0]
            if owner == self.owner or name != host or not pid.isdigit():
                continue
            if not process_alive(int(pid)):
                self.ledger.expire_owner(self.batch, owner)

    async def _heartbeat(self) -> None:
        """Renew our leases well before they run out, so nobody takes over live work."""
        while True:
            await anyio.sleep(self.options.lease_seconds / 3)
            await in_thread(self.ledger.renew, self.batch, self.owner, self.options.lease_seconds)

    async def _run_pacer(self, scope: anyio.CancelScope) -> None:
        assert self.pacer is not None
        with scope:
            await self.pacer.run()

    async def _finish(self) -> RunReport:
        counts = await in_thread(lambda: self.ledger.counts(self.batch, self._generation))
        spend = await in_thread(self.ledger.spend, self.batch)
        held, held_cost = await in_thread(self.ledger.held_estimate, self.batch)
        _, size = await in_thread(self.ledger.downloaded_bytes, self.batch)
        if held:
            lost = await in_thread(self.ledger.lost_jobs, self.batch)
            why = "their submission may or may not have been charged"
            if lost:
                why += f"; {lost} of them were charged and then lost by the API (a poll answered 404)"
            self._note(f"{held} job(s) held as unknown: {why}. `batcher retry --unknown` resubmits them "
                       f"(up to {held_cost:g} credits more).")
        failures = await in_thread(self.ledger.failure_groups, self.batch)
        return RunReport(self.batch, counts, spend.spent, held, held_cost, self.options.budget,
                         time.monotonic() - self._started, self.submitted, self.completed, self.stop_reason,
                         self.messages, size, failures)

    def _prepare_outputs(self) -> None:
        """Remove temporary files of dead downloaders; send every completed job whose file is gone
        or no longer matches its recorded size and sha256 back to download (while its URL lives)."""
        out = self.options.out_dir
        out.mkdir(parents=True, exist_ok=True)
        self._out_abs = out.resolve()
        sweep_temp_files(out)
        for job_id, file_path, size, sha256 in self.ledger.completed_files(self.batch):
            path = Path(file_path)
            if self.ledger.postgres and not path.exists():
                continue  # on a shared ledger, other runners' files live on their own hosts
            if matches(path, size, sha256):
                continue
            why = "is gone" if not path.exists() else "does not match its recorded size and sha256"
            self.ledger.write(self.ledger.move(job_id, S.COMPLETED, S.RENDERED, "file-mismatch",
                                               f"{file_path} {why}; downloading again"))

    async def _check_schema(self) -> None:
        """Hold the batch's requests against the live schema before spending anything."""
        try:
            schema = await self.client.schema(self.model.api_id)
        except AuthError:
            raise
        except BatcherError as e:
            self._note(f"could not fetch the model schema ({e}); going on with the built-in rules")
            return
        after = -1
        seen: set[int] = set()  # hashes of requests checked: small, whatever the batch size
        while True:
            page = await in_thread(
                lambda: self.ledger.jobs_in(self.batch, [S.PENDING], after_seq=after, limit=2000,
                                            generation=self._generation))
            if not page:
                return
            for job in page:
                digest = hash(job.params)
                if digest in seen:
                    continue
                seen.add(digest)
                problem = check_schema(schema, self.model.to_wire(job.parameters()))
                if problem:
                    raise SchemaMismatch(f"{job.origin}: the live API schema rejects this batch before anything "
                                         f"was spent: {problem}")
            after = page[-1].seq

    async def _feed(self, send: MemoryObjectSendStream[Job]) -> None:
        """Claim work a few jobs at a time (paid work first: rendered, then submitted, then pending)
        so several runners share a batch; finish when nothing is left that anyone could claim."""
        claim_size = max(1, self.options.concurrency)
        async with send:
            while True:
                states = [S.RENDERED, S.SUBMITTED] + ([S.PENDING] if self.submitting_allowed else [])
                jobs = await in_thread(
                    lambda: self.ledger.claim(self.batch, states, self.owner, self.options.lease_seconds,
                                              claim_size, self._generation))
                if jobs:
                    skipped = []
                    for job in jobs:
                        if job.state == S.RENDERED.value:
                            await self.downloads.put(job)
                        elif job.state == S.PENDING.value and not self.submitting_allowed:
                            skipped.append(job.id)
                        else:
                            await send.send(job)
                    # Pending jobs we may no longer submit go back at once, for runners that still can.
                    await in_thread(self.ledger.release_jobs, skipped, self.owner)
                    continue
                # Nothing claimable. Other runners may still hand work back (a lease that runs out,
                # a job whose submission dies with its runner): wait for them, reaping as we go.
                if not await in_thread(self.ledger.held_by_others, self.batch, self.owner,
                                                      self.submitting_allowed):
                    return
                await anyio.sleep(min(2.0, self.options.lease_seconds / 4))
                await self._reap()

    async def _worker(self, recv: MemoryObjectReceiveStream[Job]) -> None:
        try:
            async with recv:
                async for job in recv:
                    try:
                        if job.state == S.PENDING.value:
                            if self.submitting_allowed:
                                await self._submit_and_follow(job)
                            else:
                                await in_thread(self.ledger.release_jobs, [job.id], self.owner)
                        elif job.state == S.SUBMITTED.value:
                            await self._follow_to_end(job)
                    except LeaseLost as e:
                        log.warning("job %s: %s; leaving it to that runner", job.key, e)
        finally:
            self._workers_left -= 1
            if self._workers_left == 0:
                self.downloads.close()

    # --- submission --------------------------------------------------------------------------

    def _estimate(self, job: Job, params: dict[str, Any]) -> float:
        # If the API charged more than our estimate for this kind of job, reserve that instead.
        return max(job.estimate, self._cost_seen.get(job_class(params), 0.0))

    async def _submit_and_follow(self, job: Job) -> None:
        params = job.parameters()
        wire = self.model.to_wire(params)
        not_sent = 0
        first_try = time.monotonic()
        while True:
            estimate = self._estimate(job, params)
            reserved = await self._reserve(estimate)
            if reserved:
                await self._wait_pause(job)
                outcome = await self._submit_once(job, wire, estimate)
                if outcome == "budget":
                    if self.budget.reservations:
                        await self._budget_changed.wait()
                        continue
                    reserved = False
            if not reserved:
                if self.stop_reason is None:
                    remaining = self.budget.remaining or 0
                    self._stop("budget", f"budget reached: {self.budget.committed:g} of {self.budget.limit:g} "
                                         f"credits committed; the next job needs {estimate:g} "
                                         f"({remaining:g} left)")
                return
            if outcome in ("retry", "rate-limited"):
                not_sent += 1
                self._unreachable = self._unreachable + 1 if outcome == "retry" else 0
                if self._unreachable >= max(8, 2 * self.options.concurrency) and self.stop_reason is None:
                    self._stop("unreachable", f"cannot reach the API at {self.client.base_url}: "
                                              f"{self._unreachable} submissions in a row never left this machine; "
                                              f"nothing was charged for them. Check the network or --api-base, "
                                              f"then run again")
                    return
                if self.options.submit_retry.gives_up(not_sent, time.monotonic() - first_try):
                    await self._event(job, "submit-given-up", f"not sent after {not_sent} tries; stays pending")
                    self._note("some submissions could not reach the API; rerun to try them again")
                    return
                delay = self.options.submit_retry.delay(not_sent, self.rng)
                await self._event(job, "submit-retry", f"waiting {delay:.1f}s before sending again")
                await anyio.sleep(delay)
                continue
            if outcome != "submitted":
                return
            self._unreachable = 0
            result = await self._follow_to_end(job)
            if result != "requeued":
                return

    async def _submit_once(self, job: Job, wire: dict[str, Any], estimate: float) -> str:
        """One attempt: intent, POST, answer. Returns submitted | retry | failed | unknown | stopped."""
        with anyio.CancelScope(shield=True):
            source = S(job.state)
            try:
                attempt_id = await self.writer.write(self.ledger.begin_submission(  # type: ignore[arg-type]
                    job.id, source, estimate, token=job.lease_token, batch=self.batch, budget=self.options.budget))
            except BudgetExceeded as e:
                # Other runners share the budget: the database has the last word.
                self.budget.settle(estimate, None)
                self.budget.committed = max(self.budget.committed, e.committed - self.budget.reserved)
                self._budget_signal()
                return "budget"
            job.state = S.SUBMITTING.value
            job.attempts += 1  # as begin_submission counted it in the ledger
            failpoint("after-intent")
            try:
                with anyio.fail_after(self.options.retry.cap + 60):
                    answer = await self.client.submit(self.model.api_id, wire)
            except TimeoutError:
                return await self._held(job, attempt_id, estimate, "no answer to the submission in time")
            except OutcomeUnknown as e:
                self._server_trouble()
                return await self._held(job, attempt_id, estimate, str(e))
            except (NotSentError, RateLimited, CreditsExhausted, AuthError) as e:
                self.budget.settle(estimate, None)
                self._budget_signal()
                await self.writer.write(self.ledger.end_attempt(attempt_id, "not_sent",
                                                                known=("submitting", estimate, self.batch)))
                await self._move(job, S.SUBMITTING, S.PENDING, "not-sent", str(e))
                if isinstance(e, RateLimited):
                    self._rate_limited(e)
                    return "rate-limited"
                if isinstance(e, CreditsExhausted):
                    self._stop("credits", f"the account is out of credits: {e}")
                    return "stopped"
                if isinstance(e, AuthError):
                    self._stop("auth", str(e))
                    return "stopped"
                return "retry"
            except RejectedError as e:
                self.budget.settle(estimate, None)
                self._budget_signal()
                await self.writer.write(self.ledger.end_attempt(attempt_id, "rejected",
                                                                known=("submitting", estimate, self.batch)))
                await self._move(job, S.SUBMITTING, S.FAILED, "rejected", str(e), error=str(e))
                return "failed"
            failpoint("after-post")
            # A charge we cannot believe (negative, not a number) is replaced by the estimate.
            charge = answer.credit_cost if answer.credit_cost is not None else estimate
            self.budget.settle(estimate, charge)
            self._budget_signal()
            cls = job_class(job.parameters())
            self._cost_seen[cls] = max(self._cost_seen.get(cls, 0.0), charge)
            submitted_at = self.wall()

            def accept(conn: Any) -> bool:
                # (a reaper may have moved the attempt to unknown meanwhile: the total moves the same way)
                self.ledger.end_attempt(attempt_id, "accepted", remote_job_id=answer.job_id,
                                        credit_cost=charge,
                                        known=("submitting", estimate, self.batch))(conn)
                try:
                    # A refused move writes nothing, so no savepoint is needed around it.
                    self.ledger.move(job.id, S.SUBMITTING, S.SUBMITTED, "accepted",  # type: ignore[arg-type]
                                     f"job {answer.job_id}, {charge:g} credits", token=job.lease_token,
                                     remote_job_id=answer.job_id, status_url=answer.status_url,
                                     credit_cost=charge, submitted_at=submitted_at, error=None)(conn)
                    if answer.cost_problem:
                        self.ledger.note(job.id, "cost-untrusted", f"{answer.cost_problem}; its estimate "  # type: ignore[arg-type]
                                         f"{estimate:g} is counted against the budget instead")(conn)
                    return True
                except LeaseLost:
                    # We were paused past our lease and the job was held as unknown meanwhile: what
                    # the API told us resolves it (it is submitted, and whoever claims it polls it),
                    # unless someone has acted on it since; either way its history says so.
                    self.ledger.resolve_unknown(job.id, answer.job_id, answer.status_url,  # type: ignore[arg-type]
                                                charge, submitted_at)(conn)
                    return False
            if not await self.writer.write(accept):
                return "stopped"
            failpoint("after-accept")
            job.state, job.remote_job_id, job.status_url = S.SUBMITTED.value, answer.job_id, answer.status_url
            job.credit_cost, job.submitted_at = charge, submitted_at
            if answer.cost_problem:
                self._note("the API answered some submissions with a creditCost that cannot be believed (negative "
                           "or not a number); their estimates are counted instead (`batcher status` counts them)")
            self.submitted += 1
            log.info("job %s: submitted as %s", job.key, answer.job_id)
            return "submitted"

    async def _held(self, job: Job, attempt_id: int, estimate: float, why: str) -> str:
        # The API may have charged us: the reservation stays committed, the job waits for the user.
        self.budget.settle(estimate, estimate)
        self._budget_signal()
        await self.writer.write(self.ledger.end_attempt(attempt_id, "unknown",
                                                        known=("submitting", estimate, self.batch)))
        message = f"submission outcome unknown ({why}); held: it may have been charged"
        await self._move(job, S.SUBMITTING, S.UNKNOWN, "unknown", message, error=message)
        return "unknown"

    # --- polling -----------------------------------------------------------------------------

    async def _follow_to_end(self, job: Job) -> str:
        """Poll a submitted job until it ends. Returns rendered | failed | requeued | left."""
        params = job.parameters()
        cls = job_class(params)
        start_wall = job.submitted_at or self.wall()
        elapsed = lambda: max(0.0, self.wall() - start_wall)  # noqa: E731
        polls = 0
        failures = 0
        first_failure = 0.0
        lower = 0.0
        while True:
            density = self.pacer.density() if self.pacer is not None else 1.0
            due = self.planner.next_poll(cls, elapsed(), polls, density)
            if self.options.job_timeout is not None and due > self.options.job_timeout:
                due = max(elapsed(), self.options.job_timeout)
            delay = due - elapsed()
            if delay > 0:
                await anyio.sleep(delay)
            if self.options.job_timeout is not None and elapsed() >= self.options.job_timeout and polls > 0:
                await self._event(job, "timeout", f"not finished after {self.options.job_timeout:g}s; "
                                                  f"the next run polls it again")
                self._note("some jobs passed --job-timeout; rerun to keep polling them")
                return "left"
            await self._wait_pause(job)
            seen_at = elapsed()
            try:
                status = await self.client.status(job.remote_job_id or "", job.status_url)
            except RateLimited as e:
                self._rate_limited(e)
                await self._event(job, "poll-paused", f"rate limited; pausing {e.retry_after:g}s")
                continue
            except (ServerError, MalformedAnswer) as e:
                self._server_trouble()
                failures += 1
                if failures == 1:
                    first_failure = time.monotonic()
                if self.options.retry.gives_up(failures, time.monotonic() - first_failure):
                    await self._event(job, "poll-given-up", f"{failures} polls failed ({e}); stays submitted, "
                                                            f"the next run polls it again")
                    self._note("polls of some jobs kept failing; they stay submitted and the next run polls them")
                    return "left"
                delay = self.options.retry.delay(failures, self.rng)
                await self._event(job, "poll-retry", f"{e}; retrying in {delay:.1f}s")
                await anyio.sleep(delay)
                continue
            except AuthError as e:
                self._stop("auth", str(e))
                return "left"
            except RejectedError as e:
                # Refused a poll (404: it no longer knows the job). We were charged and nothing says
                # we were refunded: hold it like an unknown outcome, never pay for it again unasked.
                charged = f"{job.credit_cost:g} credits" if job.credit_cost is not None else "its cost"
                message = (f"the API no longer knows this paid job {job.remote_job_id} ({e}); {charged} stay "
                           f"counted as spent. `batcher retry --unknown` renders it again, paying again")
                await self._move(job, S.SUBMITTED, S.UNKNOWN, "lost", message, error=message)
                self._note("some paid jobs are no longer known to the API; they are held as unknown "
                           "(`batcher status --job KEY` shows why)")
                return "held"
            failures = 0
            self._server_fine()
            polls += 1
            if not status.done:
                lower = seen_at
                continue
            self.planner.observe(cls, lower, seen_at)
            return await self._finished(job, status, (lower + seen_at) / 2)

    async def _finished(self, job: Job, status: JobStatus, render_seconds: float) -> str:
        now = self.wall()
        if status.status == "completed":
            if not status.video_url:
                message = "the API reports the job completed but gave no output URL"
                await self._move(job, S.SUBMITTED, S.FAILED, "no-output", message, error=message, finished_at=now)
                return "failed"
            # The downloader records `rendered` before it fetches: the worker is free for the next
            # job at once. A crash in between leaves the job submitted; the next run polls it again.
            job.output_url, job.output_expires_at = status.video_url, status.expires_at
            job.render_seconds, job.finished_at = render_seconds, now
            await self.downloads.put(job)
            return "rendered"
        error = status.error or "the API reported the render failed, without a reason"
        await self.writer.write(self.ledger.refund(job.id))  # type: ignore[arg-type]
        if job.credit_cost:
            self.budget.refund(job.credit_cost)
            self._budget_signal()
        attempts = job.attempts
        if attempts < self.options.max_attempts and self.submitting_allowed:
            await self._move(job, S.SUBMITTED, S.PENDING, "remote-failed",
                             f"{error} (refunded; attempt {attempts} of {self.options.max_attempts}, retrying)",
                             error=error, finished_at=now)
            return "requeued"
        await self._move(job, S.SUBMITTED, S.FAILED, "remote-failed",
                         f"{error} (refunded; {attempts} attempt(s))", error=error, finished_at=now)
        return "failed"

    # --- downloads ---------------------------------------------------------------------------

    async def _downloader(self) -> None:
        while True:
            job = await self.downloads.get()
            if job is None:
                return
            try:
                await self._download(job)
            except LeaseLost as e:
                log.warning("job %s: %s; leaving it to that runner", job.key, e)

    async def _download(self, job: Job) -> None:
        if job.state == S.SUBMITTED.value:
            await self._move(job, S.SUBMITTED, S.RENDERED, "rendered", None, output_url=job.output_url,
                             output_expires_at=job.output_expires_at, render_seconds=job.render_seconds,
                             finished_at=job.finished_at)
            failpoint("after-rendered")
        out = self.options.out_dir
        final = out / video_name(job.label, job.take, job.key)
        url = job.output_url or ""
        failures = 0
        refreshed = False
        while True:
            tmp = out / temp_name(final.name, self.rng.randrange(1 << 30))
            try:
                await self._wait_pause(job)
                result = await self.client.download(url, tmp, max_bytes=self.options.max_download_bytes)
                published = await in_thread(publish, tmp, final, result.sha256,
                                            lambda path: self._may_replace(job, path))
                failpoint("after-publish")
            except OutputGone as e:
                fresh = None if refreshed else await self._fresh_url(job)
                refreshed = True
                if fresh is None or fresh == url:
                    message = f"the output URL expired and the API has no fresh one ({e}); re-render with " \
                              f"`batcher retry --expired`"
                    await self._move(job, S.RENDERED, S.EXPIRED, "expired", message, error=message)
                    return
                url = fresh
                await self._event(job, "url-refreshed", "the output URL had expired; got a fresh one",
                                  output_url=fresh)
                continue
            except OversizeError as e:
                await self._move(job, S.RENDERED, S.FAILED, "oversize", str(e), error=str(e))
                return
            except (ServerError, RateLimited, MalformedAnswer, FileNotFoundError) as e:
                # Not a video (an error page from a proxy, say) is retried like a server error;
                # the clip is paid for, so we never give up on it for good within a run. A
                # temporary file that vanished (someone cleaned the folder) is downloaded again.
                failures += 1
                if isinstance(e, FileNotFoundError):
                    e = ServerError(f"the temporary file {tmp.name} vanished before it was saved")
                elif isinstance(e, RateLimited):
                    self._rate_limited(e)
                else:
                    self._server_trouble()
                if self.options.retry.gives_up(failures, 0):
                    await self._event(job, "download-given-up", f"{e}; the next run downloads it")
                    self._note("some downloads kept failing; the next run fetches them")
                    return
                delay = self.options.retry.delay(failures, self.rng, getattr(e, "retry_after", None))
                await self._event(job, "download-retry", f"{e}; retrying in {delay:.1f}s")
                await anyio.sleep(delay)
                continue
            except DiskFullError as e:
                self._stop("disk", f"{e}: free some space and run the same command again")
                if self._core is not None:
                    self._core.cancel()
                return
            finally:
                with anyio.CancelScope(shield=True):
                    try:
                        tmp.unlink()  # still there only if the download failed
                    except FileNotFoundError:
                        pass
            await self._move(job, S.RENDERED, S.COMPLETED, "downloaded",
                             f"{result.size} bytes, sha256 {result.sha256[:12]}",
                             file_path=str(self._out_abs / published.name), size=result.size, sha256=result.sha256)
            self.completed += 1
            return

    def _may_replace(self, job: Job, path: Path) -> bool:
        """A file already at a video's name may be replaced only if no other job's video is it."""
        return all(owner == job.id for owner in self.ledger.file_owners(str(self._out_abs / path.name)))

    async def _fresh_url(self, job: Job) -> str | None:
        try:
            status = await self.client.status(job.remote_job_id or "", job.status_url)
        except BatcherError:
            return None
        return status.video_url if status.status == "completed" else None

    # --- progress and signals ----------------------------------------------------------------

    async def snapshot(self) -> Progress:
        counts = await in_thread(lambda: self.ledger.counts(self.batch, self._generation))
        total = sum(counts.values())
        covered = None
        if self.outlook is not None and self.outlook.covered < self.outlook.pending:
            covered = total - (self.outlook.pending - self.outlook.covered)
        return Progress(self.batch, counts, self.budget.committed, self.budget.reserved, self.budget.limit,
                        time.monotonic() - self._started, self.completed, total, covered)

    async def _report_progress(self) -> None:
        assert self.on_progress is not None
        while True:
            await anyio.sleep(self.options.progress_interval)
            self.on_progress(await self.snapshot())

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            count = 0
            async for signum in signals:
                count += 1
                if count == 1:
                    self._stop("interrupted", f"interrupted by {signal.Signals(signum).name}: stopped submitting; "
                                              f"submitted jobs are recorded and the next run picks them up")
                    if self._core is not None:
                        self._core.cancel()
                elif self.on_force_exit is not None:
                    self.on_force_exit()


def _first_batcher_error(exc: BaseException) -> BaseException:
    """The most meaningful error inside a (nested) exception group."""
    if isinstance(exc, BaseExceptionGroup):
        found = [_first_batcher_error(e) for e in exc.exceptions]
        for e in found:
            if isinstance(e, BatcherError):
                return e
        return found[0] if found else exc
    return exc


