"""The run's wiring: one task group per run, tasks named. A feeder claims jobs into a bounded
stream; `concurrency` workers each carry one job from submission to the end of its render;
downloaders take finished jobs from a bounded queue; one writer commits the ledger writes; the
webhook listener (when asked for), the pacer, the heartbeat, the control watcher (`batcher pause /
resume / cancel`), progress and signals run beside them. Memory stays flat in the batch size."""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from ..client import PixelDojoClient
from ..errors import BatcherError, LeaseLost, LedgerError
from ..ledger import Job, Ledger
from ..ledger.control import BatchNotRunning
from ..models import ModelSpec
from ..policy import class_seeds
from ..states import Control
from ..states import JobState as S
from .context import RunContext
from .control import cancel_leftovers, control_at_start, read_control, watch_control
from .downloads import downloader
from .feeder import feed, heartbeat, reap, register
from .hooks import listen
from .options import RunOptions
from .outcomes import Followed, StopReason
from .polling import follow_to_end
from .reporting import BudgetOutlook, Progress, ProgressDisplay, RunReport, WebhookFigures, budget_outlook
from .startup import check_references, prepare_outputs, survey
from .submission import submit_and_follow
from .uploads import UploadReport, upload_local_images

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup  # the backport (anyio's dependency on 3.10)

log = logging.getLogger("batcher.run")


class Runner:
    """Runs one batch of a ledger against one client."""

    def __init__(self, ledger: Ledger, client: PixelDojoClient, model: ModelSpec, batch: str,
                 options: RunOptions | None = None, *,
                 on_progress: Callable[[Progress], None] | None = None,
                 on_force_exit: Callable[[], None] | None = None,
                 wall: Callable[[], float] = time.time, models: Mapping[str, ModelSpec] | None = None):
        options = options or RunOptions()
        if isinstance(on_progress, ProgressDisplay) and options.on_warning is not None:
            options = replace(options, on_warning=self._above_progress(on_progress, options.on_warning))
        self.ctx = RunContext(ledger, client, model, batch, options, wall, models or {})
        self.on_progress = on_progress
        self._shown: Progress | None = None  # the last snapshot given to on_progress
        self.on_force_exit = on_force_exit
        self.outlook: BudgetOutlook | None = None
        self.uploads = UploadReport()
        self._started = 0.0
        self._workers_left = 0

    async def run(self) -> RunReport:
        ctx = self.ctx
        self._started = time.monotonic()
        try:
            await self._start()
        except BaseException:
            with anyio.CancelScope(shield=True):  # a run that could not start leaves no runner row
                await ctx.threads.run(ctx.ledger.write, ctx.ledger.release(ctx.batch, ctx.owner))
            raise
        work_send, work_recv = anyio.create_memory_object_stream[Job](max(1, ctx.options.limits.concurrency))
        try:
            async with anyio.create_task_group() as outer:
                outer.start_soon(ctx.writer.run, name="ledger-writer")
                pacing, listening = anyio.CancelScope(), anyio.CancelScope()
                if ctx.pacer is not None:
                    outer.start_soon(self._run_pacer, pacing, name="request-pacer")
                try:
                    if ctx.options.webhooks is not None:  # listening before the first submission asks for a poke
                        await outer.start(listen, ctx, listening, name="webhook-listener")
                    if ctx.state.submitting_allowed and self._may_send():  # (nothing to send: nothing to check)
                        await self._before_spending()
                    async with anyio.create_task_group() as aux:
                        if self.on_progress:
                            aux.start_soon(self._report_progress, name="progress")
                        if ctx.options.handle_signals:
                            aux.start_soon(self._watch_signals, name="signals")
                        aux.start_soon(heartbeat, ctx, name="lease-heartbeat")
                        aux.start_soon(watch_control, ctx, name="control-watcher")
                        async with anyio.create_task_group() as core:
                            ctx.core = core.cancel_scope
                            core.start_soon(feed, ctx, work_send, name="feeder")
                            self._workers_left = ctx.options.limits.concurrency
                            for i in range(ctx.options.limits.concurrency):
                                core.start_soon(self._worker, work_recv.clone(), name=f"worker-{i}")
                            work_recv.close()
                            for i in range(ctx.options.saving.downloads):
                                core.start_soon(downloader, ctx, name=f"downloader-{i}")
                        aux.cancel_scope.cancel()
                finally:
                    pacing.cancel()
                    listening.cancel()
                    ctx.writer.close()
                    with anyio.CancelScope(shield=True):
                        await self._release()
        except BaseException as e:  # unwrap task-group exception groups
            first = _first_batcher_error(e)
            if ctx.writer.journaled and isinstance(first, LedgerError):
                # The ledger failed after the API acted: the user must hear where the answers are.
                raise ctx.writer.unavailable(first) from None
            raise first from None
        return await self._finish()

    async def _release(self) -> None:
        """Give up our leases. A ledger that cannot be written now must not hide why the run stops
        (the answers the journal kept, say): the leases run out by themselves."""
        try:
            await self.ctx.threads.run(self.ctx.ledger.write, self.ctx.ledger.release(self.ctx.batch, self.ctx.owner))
        except LedgerError as e:
            log.warning("could not release this runner's leases (%s); they run out by themselves", e)

    def _may_send(self) -> bool:
        """Whether this run could ever send anything. Under `--budget 0` (staging only) it cannot,
        whatever refunds come (its committed total never falls below zero), unless a job is free:
        then the checks before spending are skipped. (A budget that covers nothing now could
        cover a job after a refund: its checks stay.)"""
        o = self.outlook
        return o is None or o.budget > 0 or o.covered > 0

    async def _before_spending(self) -> None:
        ctx = self.ctx
        found = await survey(ctx)  # one pass: schema, references, local images
        if ctx.options.preflight:
            await check_references(ctx, found.references)
        self.uploads = await upload_local_images(ctx, ctx.options.reference_store, found.local)
        ctx.image_names.update(self.uploads.names)
        if self.uploads.summary():
            log.info("%s", self.uploads.summary())

    async def _start(self) -> None:
        ctx, o = self.ctx, self.ctx.options
        # What the journal kept is recorded before anything else (when the ledger was opened, or now).
        applied, ctx.ledger.journal_applied = ctx.ledger.journal_applied, []
        for line in applied + await ctx.threads.run(ctx.ledger.apply_journal):
            ctx.state.note(f"from the answer journal: {line}")
        await register(ctx)
        await reap(ctx)
        if o.resubmit_unknown:
            n = await ctx.threads.run(ctx.ledger.write, ctx.ledger.requeue(
                ctx.batch, [S.UNKNOWN], "resubmitted by consent (--resubmit-unknown)"))
            if n:
                ctx.state.note(f"{n} held job(s) requeued by --resubmit-unknown: they may be charged twice")
        ctx.state.generation = await ctx.threads.run(ctx.ledger.generation, ctx.batch)
        await control_at_start(ctx)  # paused: said once, then waited for; cancelled: nothing is sent
        await ctx.threads.run(ctx.ledger.write, ctx.ledger.set_budget(ctx.batch, o.limits.budget))
        await prepare_outputs(ctx)
        spend = await ctx.threads.run(ctx.ledger.spend, ctx.batch)
        ctx.budget.committed = spend.committed
        if o.limits.budget is not None:
            self.outlook = await ctx.threads.run(budget_outlook, ctx.ledger, ctx.batch, ctx.state.generation,
                                                 o.limits.budget)
            told = self.outlook.message()
            if told:  # before anything is spent
                (o.on_warning or log.warning)(told)
        await self._seed_planner()

    async def _seed_planner(self) -> None:
        """Start polling from the render times the ledger measured, per job class, in this batch's
        earlier runs and in other batches of its kind. A model never measured starts from
        --expected-render when it is given, else from its own typical render time, never from
        another model's times."""
        ctx = self.ctx
        batch = await ctx.threads.run(ctx.ledger.batch, ctx.batch)
        history = await ctx.threads.run(ctx.ledger.render_history, bool(batch and batch.simulated))
        seeds = class_seeds(history, _classifier(ctx.models), ctx.planner.min_samples)
        ctx.planner.seed(seeds)
        if ctx.options.polling.expected_render is None:  # not given: each model from its typical render time
            ctx.planner.guesses = {m.api_id: max(0.01, m.expected_render_seconds) for m in ctx.models.values()}
        for cls, seed in seeds.items():
            log.info("polling %s from %d earlier render(s): %.3g s +- %.2g s", "/".join(map(str, cls)),
                     seed.count, seed.mean, seed.std)

    async def _worker(self, recv: MemoryObjectReceiveStream[Job]) -> None:
        ctx = self.ctx
        try:
            async with recv:
                async for job in recv:
                    try:
                        if job.state == S.PENDING.value:
                            if ctx.state.submitting_allowed:
                                await submit_and_follow(ctx, job)
                            else:
                                await ctx.writer.patiently(ctx.ledger.write,
                                                           ctx.ledger.release_jobs([job.id], ctx.owner))
                        elif job.state == S.SUBMITTED.value:
                            followed, job = await follow_to_end(ctx, job, resumed=True)
                            if followed is Followed.REQUEUED:  # failed remotely, refunded: send it again
                                if ctx.state.submitting_allowed:
                                    await submit_and_follow(ctx, job)
                                else:
                                    await ctx.writer.patiently(ctx.ledger.write,
                                                               ctx.ledger.release_jobs([job.id], ctx.owner))
                    except BatchNotRunning as e:
                        # The batch was paused or cancelled before this runner read it: the job
                        # was not sent; it is given back, pending, and the word is read now.
                        log.info("%s", e)
                        await ctx.writer.patiently(ctx.ledger.write, ctx.ledger.release_jobs([job.id], ctx.owner))
                        await read_control(ctx)
                    except LeaseLost as e:
                        log.warning("job %s: %s; leaving it to that runner", job.key, e)
        finally:
            self._workers_left -= 1
            if self._workers_left == 0:
                ctx.downloads.close()

    async def _run_pacer(self, scope: anyio.CancelScope) -> None:
        assert self.ctx.pacer is not None
        with scope:
            await self.ctx.pacer.run()

    async def _finish(self) -> RunReport:
        ctx = self.ctx
        await cancel_leftovers(ctx)  # a cancelled batch keeps no job pending
        f = await ctx.threads.run(lambda: ctx.ledger.figures(ctx.batch, ctx.state.generation))
        if f.held:
            why = "their submission may or may not have been charged"
            if f.lost:
                why += (f"; {f.lost} of them were charged and then lost by the API (polls answered 404 in 2 runs, "
                        f"10+ minutes apart)")
            ctx.state.note(f"{f.held} job(s) held as unknown: {why}. `batcher retry --unknown` resubmits them "
                           f"(up to {f.held_cost:g} credits more).")
        failures = await ctx.threads.run(ctx.ledger.failure_groups, ctx.batch)
        run = ctx.state
        return RunReport(ctx.batch, f.counts, f.spend.spent, f.held, f.held_cost, ctx.options.limits.budget,
                         time.monotonic() - self._started, run.submitted, run.completed, run.stop_reason,
                         run.messages, f.bytes, failures, self.uploads.summary(), run.control.value,
                         _webhook_figures(ctx), run.spent, frozenset(run.told), tuple(ctx.planner.learned()))

    # --- progress and signals ------------------------------------------------------------------

    async def snapshot(self) -> Progress:
        ctx = self.ctx
        # the current manifest's jobs: orphans never finish, and would hold the ETA up
        counts = await ctx.threads.run(lambda: ctx.ledger.counts(ctx.batch, ctx.state.generation, orphans=False))
        total = sum(counts.values())
        covered = None
        if self.outlook is not None and self.outlook.covered < self.outlook.pending:
            covered = total - (self.outlook.pending - self.outlook.covered)
        return Progress(ctx.batch, counts, ctx.budget.committed, ctx.budget.reserved, ctx.budget.limit,
                        time.monotonic() - self._started, ctx.state.completed, total, covered, ctx.state.spent,
                        ctx.state.control is Control.PAUSED)

    async def _report_progress(self) -> None:
        assert self.on_progress is not None
        while True:
            await anyio.sleep(self.ctx.options.progress_interval)
            self._shown = await self.snapshot()
            self.on_progress(self._shown)

    def _above_progress(self, display: ProgressDisplay, say: Callable[[str], None]) -> Callable[[str], None]:
        """`say`, on a line of its own above the progress line (which is drawn again at once)."""
        def told(line: str) -> None:
            display.clear()
            say(line)
            if self._shown is not None:
                display(self._shown)
        return told

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            count = 0
            async for signum in signals:
                count += 1
                if count == 1:
                    self.ctx.state.stop(StopReason.INTERRUPTED, f"interrupted by {signal.Signals(signum).name}: "
                                        f"stopped submitting; submitted jobs are recorded and the next run picks "
                                        f"them up")
                    if self.ctx.core is not None:
                        self.ctx.core.cancel()
                elif self.on_force_exit is not None:
                    self.on_force_exit()


def _classifier(models: Mapping[str, ModelSpec]) -> Callable[[tuple[Any, Any, Any]], tuple[Any, ...] | None]:
    """The run's job class of a ledger key (model, duration, resolution), as `ModelSpec.job_class`
    makes it; None for a model this run does not render, or one whose class is named otherwise."""
    def classify(key: tuple[Any, Any, Any]) -> tuple[Any, ...] | None:
        model, duration, resolution = key
        spec = models.get(model)
        if spec is None or spec.rate_param != "resolution" or spec.seconds_param not in ("duration", ""):
            return None
        params = {name: value for name, value in (("duration", duration), ("resolution", resolution))
                  if value is not None}
        return spec.job_class(params)
    return classify


def _webhook_figures(ctx: RunContext) -> WebhookFigures | None:
    hooks = ctx.hooks
    if hooks is None:
        return None
    return WebhookFigures(hooks.base, hooks.tally.announced, hooks.tally.missed, hooks.board.pokes,
                          tuple(sorted(hooks.refused)), hooks.tally.late)


def _first_batcher_error(exc: BaseException) -> BaseException:
    """The most meaningful error inside a (nested) exception group."""
    if isinstance(exc, BaseExceptionGroup):
        found = [_first_batcher_error(e) for e in exc.exceptions]
        for e in found:
            if isinstance(e, BatcherError):
                return e
        return found[0] if found else exc
    return exc
