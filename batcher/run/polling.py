"""Polling: follow one submitted job to the end of its render, as often as the learned render
times say (sparsely, as a safety net, when a webhook should announce its end; a poke asks at
once), and record how it ended: rendered (queued for download), failed and refunded
(requeued while attempts remain), held (paid, then unknown to the API over several runs), or left
for the next run (a status the API refuses or does not find for this one job, polls that keep
failing, a timeout)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio

from ..client import JobStatus
from ..errors import (
    AuthError,
    CreditsExhausted,
    JobForbidden,
    MalformedAnswer,
    RateLimited,
    RejectedError,
    ServerError,
)
from ..ledger import Job
from ..policy import PROBES, model_of
from ..states import JobState as S
from .context import RunContext
from .outcomes import Followed, StopReason

# A paid job whose status the API answers 404 (or another 4xx) is held `unknown` only once it has
# said so in at least NOT_FOUND_RUNS runs spread over NOT_FOUND_SECONDS: one such answer may be as
# transient as any other, and holding a finished clip sends the user to `retry --unknown`, paying again.
NOT_FOUND_RUNS = 2
NOT_FOUND_SECONDS = 600.0
NOT_FOUND = "poll-not-found"  # the event each such answer writes (one a run: it stops following the job)


@dataclass(frozen=True)
class RenderTiming:
    """How long a render took, as far as anyone can tell: by the API's own clock when its answer
    gives createdAt and completedAt, and always the bounds the polls set (seconds after submission:
    the last poll that found it running, the answer that found it ended). A poll that comes late
    widens the bounds; it never becomes the render's time. Kept in the job's `rendered` event."""

    api: float | None
    low: float
    high: float

    @classmethod
    def of(cls, status: JobStatus, low: float, high: float) -> RenderTiming:
        start, end = status.created_at, status.completed_at
        return cls(end - start if start is not None and end is not None and end >= start else None, low, high)

    def detail(self) -> str:
        said = (f"render {self.api:.3f} s by the API's createdAt and completedAt" if self.api is not None
                else "render time not given by the API")
        return f"{said}; polls: ended between {self.low:.3f} s and {self.high:.3f} s after submission"

    @classmethod
    def read(cls, detail: str | None) -> RenderTiming | None:
        """The timing a `rendered` event's detail keeps (None: it keeps none, as in older ledgers)."""
        found = _TIMING.fullmatch(detail or "")
        if found is None:
            return None
        api, low, high = found.group("api"), float(found.group("low")), float(found.group("high"))
        return cls(float(api) if api is not None else None, low, high)


_TIMING = re.compile(r"(?:render (?P<api>[0-9.]+) s by the API's createdAt and completedAt|render time not given "
                     r"by the API); polls: ended between (?P<low>[0-9.]+) s and (?P<high>[0-9.]+) s after submission")


async def follow_to_end(ctx: RunContext, job: Job, *, hooked: bool = False, resumed: bool = False
                        ) -> tuple[Followed, Job]:
    """Poll a submitted job until it ends (or this run stops following it); `hooked`: this run
    submitted it with a webhook URL, so its end should be announced (polls are a safety net);
    `resumed`: an earlier run submitted it (its time since then is no render's time)."""
    o, hooks, timeout = ctx.options, ctx.hooks, ctx.options.polling.job_timeout
    cls = ctx.model_of(job).job_class(job.parameters())
    start_wall = job.submitted_at or ctx.wall()

    def elapsed() -> float:
        return max(0.0, ctx.wall() - start_wall)
    probe = None if resumed else ctx.planner.enlist(cls, 1 if hooked else PROBES)  # (hooked: in case none come)
    polls = failures = tries = 0
    first_failure = lower = 0.0
    while True:
        poked = await _until_due(ctx, job, cls, hooked, elapsed, Pace(polls, lower, probe))
        if timeout is not None and elapsed() >= timeout and tries > 0:
            await ctx.event(job, "timeout", f"not finished after {timeout:g}s; the next run polls it again")
            ctx.state.note("some jobs passed --job-timeout; rerun to keep polling them")
            return Followed.LEFT, job
        await ctx.wait_pause(job)
        seen_at = elapsed()
        tries += 1
        try:
            status = await ctx.client.status(job.remote_job_id or "", job.status_url)
        except RateLimited as e:
            ctx.pauses.rate_limited(e)
            await ctx.event(job, "poll-paused", f"rate limited; pausing {e.retry_after:g}s")
            continue
        except (ServerError, MalformedAnswer, CreditsExhausted) as e:
            # (402 on a poll is nonsense, but only this job's problem: retried like a server error)
            ctx.pauses.server_trouble()
            failures += 1
            if failures == 1:
                first_failure = time.monotonic()
            if o.polling.retry.gives_up(failures, time.monotonic() - first_failure):
                await ctx.event(job, "poll-given-up", f"{failures} polls failed ({e}); stays submitted, "
                                                      f"the next run polls it again")
                ctx.state.note("polls of some jobs kept failing; they stay submitted and the next run polls them")
                return Followed.LEFT, job
            delay = o.polling.retry.delay(failures, ctx.rng)
            await ctx.event(job, "poll-retry", f"{e}; retrying in {delay:.1f}s")
            await anyio.sleep(delay)
            continue
        except (JobForbidden, RejectedError) as e:  # (JobForbidden first: an AuthError would stop the run)
            return await _refused(ctx, job, e)
        except AuthError as e:
            ctx.state.stop(StopReason.AUTH, str(e))
            return Followed.LEFT, job
        failures = 0
        ctx.pauses.server_fine()
        polls += 1
        if not status.done:
            lower = seen_at
            continue
        if hooked and hooks is not None:
            hooks.tally.record(announced=poked, key=job.key)
        if status.status == "completed" and (lower > 0 or not resumed):
            _learn(ctx, cls, seen_at if poked else lower, seen_at)
        return await _finished(ctx, job, status, RenderTiming.of(status, lower, elapsed()), (lower + seen_at) / 2)


def _learn(ctx: RunContext, cls: tuple[Any, ...], lower: float, upper: float) -> None:
    """A render ended within [lower, upper] (a poke comes as it ends: its time is the render's
    length, the delivery's delay included, which later polls should allow for too): the planner
    learns it, and the followers of its model plan again when it says so. Only a completed render
    teaches (a failure's time is not a render's), and a job an earlier run submitted only once a
    poll of this run saw it running."""
    if ctx.planner.observe(cls, lower, upper):
        ctx.wakeups.changed(model_of(cls))


@dataclass(frozen=True)
class Pace:
    """Where a followed job stands: polls that found it running, the last at `last` seconds after
    its submission (0: none yet), and its number on the ladder if it is a probe."""

    polls: int
    last: float
    probe: int | None


async def _until_due(ctx: RunContext, job: Job, cls: tuple[Any, ...], hooked: bool, elapsed: Callable[[], float],
                     pace: Pace) -> bool:
    """Wait for the job's next poll (its safety poll, when a webhook should announce its end), or
    for a poke, whichever comes first; whether a poke came. When what the run learns moves the
    poll earlier meanwhile, the wait is planned again (the new time may have passed: at once)."""
    hooks, timeout = ctx.hooks, ctx.options.polling.job_timeout
    density = ctx.pacer.density() if ctx.pacer is not None else 1.0
    since = elapsed()  # the safety net's polls are spread from when its wait began
    # A probe climbs its ladder until its class is learned, webhooks or not, and while no
    # webhook has come but a poll found a job done, jobs are polled: a dead webhook path must not
    # leave a wrong guess standing.
    hooked = (hooked and hooks is not None and not hooks.tally.silent
              and (pace.probe is None or ctx.planner.expected(cls) is not None))
    if hooked and hooks is not None:
        due = ctx.planner.safety_poll(cls, since, hooks.tally.lost, density)
    else:
        due = ctx.planner.next_poll(cls, elapsed(), pace.polls, density, pace.probe)
    while True:
        if timeout is not None and due > timeout:
            due = max(elapsed(), timeout)
        delay = due - elapsed()  # read the clock once: it moves between two reads
        if delay <= 0:
            return hooks.board.take_early(job.key) if hooks is not None else False
        # A safety poll planned from what was learned stays as planned: planned again at every
        # change, its polls would crowd where renders end, before the webhooks.
        listen = not hooked or ctx.planner.safety_guessed(cls)
        with ctx.wakeups.listening(model_of(cls)) as replan:
            if hooks is not None:  # a poke cuts the wait short (any job: an earlier run may have asked for one)
                if await hooks.board.wait(job.key, delay, replan if listen else None):
                    return True
            else:
                with anyio.move_on_after(delay):
                    await replan.wait()
        if not (listen and replan.is_set()):
            return False
        # Planned again by what is known now: a poll from the job's last poll (or its submission);
        # a safety poll planned from a guess no later than the renders surely ended (not earlier:
        # the webhooks of the renders ending now are still on their way).
        if hooked and hooks is not None:
            due = min(due, max(ctx.planner.safety_poll(cls, since, hooks.tally.lost, density),
                               ctx.planner.surely_ended(cls) or due))
        else:
            due = ctx.planner.due(cls, pace.last, pace.polls, density, pace.probe)


async def _refused(ctx: RunContext, job: Job, e: JobForbidden | RejectedError) -> tuple[Followed, Job]:
    if isinstance(e, RejectedError):
        return await _not_found(ctx, job, e)
    # A refusal about this one job ("it belongs to another workspace"), not about the key: the
    # run goes on. It was paid, so it stays submitted (held as unknown, `retry --unknown` would
    # pay again); this run stops following it, the next one asks again.
    message = f"{e}; stays submitted (it was paid) and the next run polls it again"
    job = await ctx.event(job, "poll-forbidden", message, error=str(e))
    ctx.state.note("the API refused the status of some jobs (401/403); they stay submitted and the next run polls "
                   "them again (`batcher status --job KEY` shows why)")
    return Followed.LEFT, job


async def _not_found(ctx: RunContext, job: Job, e: RejectedError) -> tuple[Followed, Job]:
    """A poll refused with a 4xx (404: the API does not know the job). It was paid: it stays
    submitted, and this run stops following it, until such answers span enough runs and time."""
    events = await ctx.writer.patiently(ctx.ledger.events, job.id)
    # Only answers about this submission count (a resubmitted job is another remote job): those
    # since the job last became submitted. Each run writes at most one for a job (it stops
    # following it), so their count is the count of runs that met the refusal.
    since = max((i for i, event in enumerate(events) if event.to_state == S.SUBMITTED.value), default=-1)
    seen = [event.at for event in events[since + 1:] if event.kind == NOT_FOUND] + [ctx.ledger.clock()]
    if len(seen) >= NOT_FOUND_RUNS and seen[-1] - min(seen) >= NOT_FOUND_SECONDS:
        return Followed.HELD, await _lost(ctx, job, e, len(seen), seen[-1] - min(seen))
    message = f"{e}; stays submitted (it was paid) and the next run polls it again"
    job = await ctx.event(job, NOT_FOUND, message, error=str(e))
    ctx.state.note("the API did not find the status of some paid jobs (404 or another 4xx); they stay submitted and "
                   "the next run polls them again (`batcher status --job KEY` shows why)")
    return Followed.LEFT, job


async def _lost(ctx: RunContext, job: Job, e: RejectedError, runs: int, seconds: float) -> Job:
    # The API has not known the job in several runs, minutes apart. We were charged and nothing
    # says we were refunded: hold it like an unknown outcome, never pay for it again unasked.
    charged = f"{job.credit_cost:g} credits" if job.credit_cost is not None else "its cost"
    message = (f"the API no longer knows this paid job {job.remote_job_id} ({e}; in {runs} runs over "
               f"{seconds / 60:.0f} min); {charged} stay counted as spent. `batcher retry --unknown` renders "
               f"it again, paying again")
    job = await ctx.move(job, S.SUBMITTED, S.UNKNOWN, "lost", message, error=message)
    ctx.state.note("some paid jobs are no longer known to the API; they are held as unknown "
                   "(`batcher status --job KEY` shows why)")
    return job


async def _finished(ctx: RunContext, job: Job, status: JobStatus, timing: RenderTiming, midpoint: float
                    ) -> tuple[Followed, Job]:
    """`timing`: what is known of the render's time; the ledger keeps the API's, else `midpoint`
    (the polls' middle, which later runs start polling from)."""
    now = ctx.wall()
    if status.status == "completed":
        if not status.video_url:
            message = status.output_problem or "the API reports the job completed but gave no output URL"
            job = await ctx.move(job, S.SUBMITTED, S.FAILED, "no-output", message, error=message, finished_at=now)
            return Followed.FAILED, job
        if job.error is not None:  # an earlier refusal of its status (poll-forbidden, -not-found) is over
            job = await ctx.event(job, "poll-answered", "the API answers this job's status again", error=None)
        # The downloader records `rendered` before it fetches: the worker is free for the next
        # job at once. A crash in between leaves the job submitted; the next run polls it again.
        job = job.evolve(output_url=status.video_url, output_expires_at=status.expires_at,
                      render_seconds=timing.api if timing.api is not None else midpoint, finished_at=now)
        await ctx.downloads.put(job, timing.detail())
        return Followed.RENDERED, job
    error = status.error or "the API reported the render failed, without a reason"
    await ctx.writer.write(ctx.ledger.refund(job.id))
    if job.credit_cost:
        ctx.budget.refund(job.credit_cost)
        ctx.state.spent -= job.credit_cost
    attempts, most = job.attempts, ctx.options.limits.max_attempts
    if attempts < most and ctx.state.submitting_allowed:
        job = await ctx.move(job, S.SUBMITTED, S.PENDING, "remote-failed",
                             f"{error} (refunded; attempt {attempts} of {most}, retrying)",
                             error=error, finished_at=now)
        return Followed.REQUEUED, job
    job = await ctx.move(job, S.SUBMITTED, S.FAILED, "remote-failed", f"{error} (refunded; {attempts} attempt(s))",
                         error=error, finished_at=now)
    return Followed.FAILED, job
