"""Submission, the paid step (never pay twice):
1. write the intent (job -> submitting, an attempt row, the estimate reserved against the budget
   shared by every runner) and commit;
2. POST, shielded from cancellation;
3. record the answer: accepted (job id, status URL, cost) in one transaction; provably not sent
   (back to pending, sent again later); refused (failed); anything else -> `unknown`, held for
   the user.
Then the job is followed to the end of its render (`polling`), and submitted again while its
refunded remote failures leave attempts."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import anyio
from sqlalchemy import Connection

from ..answers import Submission
from ..errors import (
    AuthError,
    BudgetExceeded,
    CreditsExhausted,
    LeaseLost,
    NotSentError,
    OutcomeUnknown,
    RateLimited,
    ReferenceStoreError,
    RejectedError,
)
from ..ledger import Job
from ..states import JobState as S
from . import records
from .context import RunContext
from .failpoints import failpoint
from .hooks import hook_refused, settle_hook_refusal, with_webhook
from .outcomes import Followed, StopReason, Submitted
from .polling import follow_to_end
from .uploads import with_local_urls

log = logging.getLogger("batcher.run")


def _ratio_key(model: str) -> tuple[str, str]:
    """Where `cost_seen` keeps the most a model was charged over its estimate (beside its classes)."""
    return ("charged-over-estimate", model)


def estimate_for(ctx: RunContext, job: Job) -> float:
    # If the API charged more than our estimate for this kind of job, reserve that instead; and
    # for the model's other kinds, their estimate scaled as this one was found to be low.
    model = ctx.model_of(job)
    scaled = job.estimate * ctx.cost_seen.get(_ratio_key(model.api_id), 1.0)
    return max(job.estimate, scaled, ctx.cost_seen.get(model.job_class(job.parameters()), 0.0))


async def submit_and_follow(ctx: RunContext, job: Job) -> None:
    """Submit a pending job (again, while refunded failures leave attempts) and follow it."""
    model = ctx.model_of(job)
    wire = model.to_wire(job.parameters())
    cls = model.job_class(job.parameters())
    not_sent = 0
    first_try = time.monotonic()
    with_hook = True  # ask for a webhook (when the run listens) until the API refuses one for this job
    while True:
        # Until the API has charged one job of a kind, only one of that kind is in flight, and
        # until it has charged one of a model, one of that model: an estimate that is too low (a
        # --rate or a listed price below the real one) costs one job, not a wave per kind.
        gate = cls if _ratio_key(model.api_id) in ctx.cost_seen else (model.api_id,)
        while gate not in ctx.cost_seen and gate in ctx.probing and ctx.submitting_allowed:
            await ctx.budget_changed()
            gate = cls if _ratio_key(model.api_id) in ctx.cost_seen else (model.api_id,)
        estimate = estimate_for(ctx, job)
        outcome, hooked = Submitted.BUDGET, False
        probe = cls not in ctx.cost_seen
        if probe:
            ctx.probing.add(gate)
        try:
            if await ctx.reserve(estimate):
                await ctx.wait_pause(job)
                outcome, job, hooked = await submit_once(ctx, job, wire, estimate, with_hook)
        finally:
            if probe:
                ctx.probing.discard(gate)
                ctx.budget_signal()
        if outcome is Submitted.BUDGET and ctx.budget.reservations:
            await ctx.budget_changed()
            continue
        if outcome is Submitted.BUDGET:
            if ctx.stop_reason is None:
                ctx.stop(StopReason.BUDGET, f"budget reached: {ctx.budget.committed:g} of {ctx.budget.limit:g} "
                                            f"credits committed; the next job needs {estimate:g} "
                                            f"({ctx.budget.remaining or 0:g} left)")
            return
        if outcome in (Submitted.NOT_SENT, Submitted.RATE_LIMITED):
            not_sent += 1
            if not await _send_again(ctx, job, outcome, not_sent, first_try):
                return
            continue
        if outcome is Submitted.HOOK_REFUSED:
            with_hook = False
            continue
        settle_hook_refusal(ctx, job, model.api_id, outcome)
        if outcome is not Submitted.ACCEPTED:
            return
        ctx.unreachable = 0
        followed, job = await follow_to_end(ctx, job, hooked=hooked)
        if followed is not Followed.REQUEUED:
            return


async def _send_again(ctx: RunContext, job: Job, outcome: Submitted, tries: int, first_try: float) -> bool:
    """After a submission that never reached the API: wait and send again, unless the API looks
    unreachable (then the run stops quickly) or this job has tried long enough."""
    ctx.unreachable = ctx.unreachable + 1 if outcome is Submitted.NOT_SENT else 0
    if ctx.unreachable >= max(8, 2 * ctx.options.limits.concurrency) and ctx.stop_reason is None:
        ctx.stop(StopReason.UNREACHABLE, f"cannot reach the API at {ctx.client.base_url}: {ctx.unreachable} "
                                         f"submissions in a row never left this machine; nothing was charged for "
                                         f"them. Check the network or --api-base, then run again")
        return False
    policy = ctx.options.polling.submit_retry
    if policy.gives_up(tries, time.monotonic() - first_try):
        await ctx.event(job, "submit-given-up", f"not sent after {tries} tries; stays pending")
        ctx.note("some submissions could not reach the API; rerun to try them again")
        return False
    delay = policy.delay(tries, ctx.rng)
    await ctx.event(job, "submit-retry", f"waiting {delay:.1f}s before sending again")
    await anyio.sleep(delay)
    return True


_NO_ANSWER = "no answer to the submission in time"


async def submit_once(ctx: RunContext, job: Job, wire: dict[str, Any], estimate: float, with_hook: bool = True
                      ) -> tuple[Submitted, Job, bool]:
    """One attempt: the request's URLs for local images (made now), intent, POST, answer; and
    whether an accepted submission carried a webhook URL (its end should then be announced)."""
    try:
        body = await with_local_urls(ctx, ctx.options.reference_store, wire)
        body, hooked = with_webhook(ctx, job, body) if with_hook else (body, False)
    except ReferenceStoreError as e:
        ctx.budget.settle(estimate, None)
        ctx.budget_signal()
        await ctx.event(job, "not-sent", str(e))
        ctx.note(str(e))
        return Submitted.STOPPED, job, False
    with anyio.CancelScope(shield=True):
        try:
            attempt_id = await ctx.writer.write(ctx.ledger.begin_submission(
                job.id, S(job.state), estimate, token=job.lease_token, batch=ctx.batch,
                budget=ctx.options.limits.budget))
        except BudgetExceeded as e:
            # Other runners share the budget: the database has the last word.
            ctx.budget.settle(estimate, None)
            ctx.budget.committed = max(ctx.budget.committed, e.committed - ctx.budget.reserved)
            ctx.budget_signal()
            return Submitted.BUDGET, job, False
        except BaseException:
            # No intent was written (another runner took the job over, the ledger failed): the
            # reservation must go, or every submission waiting for room in the budget waits forever.
            ctx.budget.settle(estimate, None)
            ctx.budget_signal()
            raise
        job = job.evolve(state=S.SUBMITTING.value, attempts=job.attempts + 1)  # as the ledger counted it
        failpoint("after-intent")
        known = ("submitting", estimate, ctx.batch)
        try:
            with anyio.fail_after(ctx.options.polling.retry.cap + 60):
                answer = await ctx.client.submit(ctx.model_of(job).api_id, body)
        except TimeoutError:
            return Submitted.HELD, await _held(ctx, job, attempt_id, estimate, _NO_ANSWER), False
        except OutcomeUnknown as e:
            ctx.pauses.server_trouble()
            return Submitted.HELD, await _held(ctx, job, attempt_id, estimate, str(e)), False
        except (NotSentError, RateLimited, CreditsExhausted, AuthError) as e:
            ctx.budget.settle(estimate, None)
            ctx.budget_signal()
            await ctx.writer.write(ctx.ledger.end_attempt(attempt_id, "not_sent", known=known))
            job = await ctx.move(job, S.SUBMITTING, S.PENDING, "not-sent", str(e))
            return _not_sent(ctx, e), job, False
        except RejectedError as e:
            ctx.budget.settle(estimate, None)
            ctx.budget_signal()
            await ctx.writer.write(ctx.ledger.end_attempt(attempt_id, "rejected", known=known))
            if hooked:
                return Submitted.HOOK_REFUSED, await hook_refused(ctx, job, e), False
            failed = await ctx.move(job, S.SUBMITTING, S.FAILED, "rejected", str(e), error=str(e))
            return Submitted.FAILED, failed, False
        failpoint("after-post")
        outcome, job = await _accepted(ctx, job, attempt_id, estimate, answer)
        return outcome, job, hooked and outcome is Submitted.ACCEPTED
    # Not reached: a scope could swallow only its own cancellation, and nothing cancels this one.
    raise AssertionError("submit_once: the shielded scope ended without an answer")


def _not_sent(ctx: RunContext, e: Exception) -> Submitted:
    if isinstance(e, RateLimited):
        ctx.pauses.rate_limited(e)
        return Submitted.RATE_LIMITED
    if isinstance(e, CreditsExhausted):
        ctx.stop(StopReason.CREDITS, f"the account is out of credits: {e}")
        return Submitted.STOPPED
    if isinstance(e, AuthError):
        ctx.stop(StopReason.AUTH, str(e))
        return Submitted.STOPPED
    return Submitted.NOT_SENT


async def _accepted(ctx: RunContext, job: Job, attempt_id: int, estimate: float, answer: Submission
                    ) -> tuple[Submitted, Job]:
    # A charge we cannot believe (negative, not a number) is replaced by the estimate.
    charge = answer.credit_cost if answer.credit_cost is not None else estimate
    ctx.budget.settle(estimate, charge)
    ctx.budget_signal()
    model = ctx.model_of(job)
    cls = model.job_class(job.parameters())
    ctx.cost_seen[cls] = max(ctx.cost_seen.get(cls, 0.0), charge)
    over = charge / estimate if estimate > 0 else (math.inf if charge > 0 else 1.0)
    ratio = _ratio_key(model.api_id)
    ctx.cost_seen[ratio] = max(ctx.cost_seen.get(ratio, 1.0), min(over, 1e6))
    submitted_at = ctx.wall()
    ledger = ctx.ledger

    def accept(conn: Connection) -> bool:
        # (a reaper may have moved the attempt to unknown meanwhile: the total moves the same way)
        ledger.end_attempt(attempt_id, "accepted", remote_job_id=answer.job_id, credit_cost=charge,
                           known=("submitting", estimate, ctx.batch))(conn)
        try:
            # A refused move writes nothing, so no savepoint is needed around it.
            ledger.move(job.id, S.SUBMITTING, S.SUBMITTED, "accepted", f"job {answer.job_id}, {charge:g} credits",
                        token=job.lease_token, remote_job_id=answer.job_id, status_url=answer.status_url,
                        credit_cost=charge, submitted_at=submitted_at, error=None)(conn)
            if answer.cost_problem:
                ledger.note(job.id, "cost-untrusted", f"{answer.cost_problem}; its estimate {estimate:g} is "
                                                      f"counted against the budget instead")(conn)
            return True
        except LeaseLost:
            # We were paused past our lease and the job was held as unknown meanwhile: what the API
            # told us resolves it (it is submitted, and whoever claims it polls it), unless someone
            # has acted on it since; either way its history says so.
            ledger.resolve_unknown(job.id, answer.job_id, answer.status_url, charge, submitted_at)(conn)
            return False
    # If the ledger cannot record this answer, the journal keeps it: the job is polled, never paid again.
    record = records.accepted(ctx, job, attempt_id, answer.job_id, answer.status_url, charge, submitted_at)
    if not await ctx.writer.write(accept, record):
        return Submitted.STOPPED, job
    failpoint("after-accept")
    job = job.evolve(state=S.SUBMITTED.value, remote_job_id=answer.job_id, status_url=answer.status_url,
                  credit_cost=charge, submitted_at=submitted_at, error=None)
    if answer.cost_problem:
        ctx.note("the API answered some submissions with a creditCost that cannot be believed (negative "
                 "or not a number); their estimates are counted instead (`batcher status` counts them)")
    ctx.submitted += 1
    log.info("job %s: submitted as %s", job.key, answer.job_id)
    return Submitted.ACCEPTED, job


async def _held(ctx: RunContext, job: Job, attempt_id: int, estimate: float, why: str) -> Job:
    # The API may have charged us: the reservation stays committed, the job waits for the user.
    ctx.budget.settle(estimate, estimate)
    ctx.budget_signal()
    await ctx.writer.write(ctx.ledger.end_attempt(attempt_id, "unknown", known=("submitting", estimate, ctx.batch)))
    message = f"submission outcome unknown ({why}); held: it may have been charged"
    return await ctx.move(job, S.SUBMITTING, S.UNKNOWN, "unknown", message, error=message)
