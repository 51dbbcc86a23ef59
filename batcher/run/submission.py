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
import time
from decimal import Decimal
from typing import Any

import anyio
from sqlalchemy import Connection

from ..client import Submission
from ..errors import (
    AuthError,
    BudgetExceeded,
    CreditsExhausted,
    NotSentError,
    OutcomeUnknown,
    RateLimited,
    ReferenceStoreError,
    RejectedError,
)
from ..ledger import Acceptance, Answer, Arrival, Job
from ..models import ModelSpec
from ..money import ZERO, ChargeVerdict, charge_ceiling, count_charge, credits, show
from ..policy import Reservation
from ..states import JobState as S
from . import records
from .context import RunContext
from .failpoints import failpoint
from .hooks import hook_refused, settle_hook_refusal, with_webhook
from .outcomes import Followed, StopReason, Submitted
from .polling import follow_to_end
from .uploads import with_local_urls

log = logging.getLogger("batcher.run")


def estimate_for(ctx: RunContext, job: Job) -> Decimal:
    """What to reserve for a job: its estimate, or more where the API charged more (`CostMemory.estimate`)."""
    model = ctx.model_of(job)
    return ctx.costs.estimate(model.api_id, model.job_class(job.parameters()), job.estimate)


def most_per_job(model: ModelSpec, params: dict[str, Any]) -> Decimal:
    """The most a job of `model` costs at its listed prices: its dearest rate at its longest
    duration (the job's own, when the model names no longest)."""
    p = model.param(model.seconds_param) if model.seconds_param else None
    rule = (p.rule or {}) if p is not None else {}
    numbers = [v for v in (p.maximum if p else None, rule.get("maximum"), *(rule.get("enum") or []),
                           *((p.choices or ()) if p else ()), params.get(model.seconds_param) if p else 1)
               if isinstance(v, (int, float)) and not isinstance(v, bool)]
    longest = max(numbers, default=1)
    try:
        return credits(max(model.credits_per_second.values(), default=0.0) * longest, up=True)
    except ValueError:  # a live description that names an absurd price or duration: no ceiling from it
        return ZERO


def believed_charge(model: ModelSpec, job: Job, estimate: Decimal, answer: Submission, room: Decimal | None = None
                    ) -> tuple[Decimal, ChargeVerdict, str | None]:
    """What the budget counts for an accepted submission (`money.count_charge`: the charge rounded
    up, else the estimate or the ceiling), the verdict, and why the charge is not believed: negative
    or not a number (the client said so), below half the job's estimate (0 would let a run spend
    without end), or more than any clip of the model could cost (`money.charge_ceiling`: a lie, or
    a price rise the ledger cannot tell from one). `room`: what the budget has left, this
    reservation included (None: no budget)."""
    ceiling = charge_ceiling(most_per_job(model, job.parameters()), estimate)
    counted, verdict = count_charge(answer.credit_cost, estimate, job.estimate, ceiling, room)
    claim = f"the API's creditCost {answer.credit_cost!r:.40}"
    problem = {ChargeVerdict.BELIEVED: None,
               ChargeVerdict.UNBELIEVABLE: answer.cost_problem or f"{claim} is not a believable charge",
               ChargeVerdict.TOO_LOW: f"{claim} is less than half of the job's estimate {show(job.estimate)}",
               ChargeVerdict.OVER_CEILING: f"{claim} is more than any clip of {model.api_id} could cost (at most "
                                           f"{show(ceiling)} believed)"}[verdict]
    return counted, verdict, problem


def _untrusted(verdict: ChargeVerdict, problem: str, counted: Decimal) -> str:
    """The job's `cost-untrusted` event: what the answer claimed and what the budget counts instead."""
    if verdict is ChargeVerdict.OVER_CEILING:
        return (f"{problem}; {show(counted)} credits (the ceiling, or what the budget had left) are counted "
                f"against the budget instead, and this run sends no more jobs")
    return f"{problem}; its estimate {show(counted)} is counted against the budget instead"


def _count_answer(ctx: RunContext, model: ModelSpec, job: Job, reservation: Reservation, answer: Submission
                  ) -> tuple[Decimal, ChargeVerdict, str | None]:
    """`believed_charge`, charged to the job's reservation and learnt from; above the ceiling,
    the run stops sending (before any await: no other submission of this run starts)."""
    estimate = reservation.estimate
    charge, verdict, problem = believed_charge(model, job, estimate, answer, reservation.room)
    if verdict is ChargeVerdict.OVER_CEILING:
        _stop_over_ceiling(ctx, model)
    reservation.charge(charge)
    ctx.state.spent += charge
    ctx.costs.learn(model.api_id, model.job_class(job.parameters()), estimate, charge)
    return charge, verdict, problem


def _stop_over_ceiling(ctx: RunContext, model: ModelSpec) -> None:
    # Said once per model (the same words): each job's history has its own amounts. The whole run
    # stops, not the model alone: a stop is the run's, and a price that rose may rise for all.
    ctx.state.stop(StopReason.BUDGET,
                   f"stopped sending jobs: the API charged more for a job of {model.api_id} than any clip of it could "
                   f"cost at its listed price, so its ceiling is counted against the budget instead (`batcher status "
                   f"--job KEY` shows the answer). The ledger cannot tell a lie from a price change: check the price "
                   f"(`batcher models {model.api_id}`) before running again (each run stops at its first such charge; "
                   f"a rerun with --rate at the real price raises the estimates, and the ceiling, of jobs not yet "
                   f"sent). Jobs "
                   f"already sent are followed to their end")


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
        gate = ctx.costs.gate(model.api_id, cls)
        while ctx.costs.waits(gate) and ctx.state.submitting_allowed:
            await ctx.state.room.wait()
            gate = ctx.costs.gate(model.api_id, cls)
        estimate = estimate_for(ctx, job)
        outcome, hooked = Submitted.BUDGET, False
        with ctx.costs.probe(cls, gate):
            async with ctx.reserve(estimate) as reservation:
                if reservation is not None:
                    await ctx.wait_pause(job)
                    outcome, job, hooked = await submit_once(ctx, job, wire, reservation, with_hook)
        if outcome is Submitted.BUDGET and ctx.budget.reservations:
            await ctx.state.room.wait()
            continue
        if outcome is Submitted.BUDGET:
            if ctx.state.stop_reason is None:
                ctx.state.stop(StopReason.BUDGET, f"budget reached: {show(ctx.budget.committed)} of "
                                                  f"{show(ctx.budget.limit)} credits committed; the next job needs "
                                                  f"{show(estimate)} ({show(ctx.budget.remaining or 0)} left)")
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
        ctx.state.unreachable = 0
        followed, job = await follow_to_end(ctx, job, hooked=hooked)
        if followed is not Followed.REQUEUED:
            return


async def _send_again(ctx: RunContext, job: Job, outcome: Submitted, tries: int, first_try: float) -> bool:
    """After a submission that never reached the API: wait and send again, unless the API looks
    unreachable (then the run stops quickly) or this job has tried long enough."""
    run = ctx.state
    run.unreachable = run.unreachable + 1 if outcome is Submitted.NOT_SENT else 0
    if run.unreachable >= max(8, 2 * ctx.options.limits.concurrency) and run.stop_reason is None:
        run.stop(StopReason.UNREACHABLE, f"cannot reach the API at {ctx.client.base_url}: {run.unreachable} "
                                         f"submissions in a row never left this machine; nothing was charged "
                                         f"for them. Check the network or --api-base, then run again")
        return False
    policy = ctx.options.polling.submit_retry
    if policy.gives_up(tries, time.monotonic() - first_try):
        await ctx.event(job, "submit-given-up", f"not sent after {tries} tries; stays pending")
        ctx.state.note("some submissions could not reach the API; rerun to try them again")
        return False
    delay = policy.delay(tries, ctx.rng)
    await ctx.event(job, "submit-retry", f"waiting {delay:.1f}s before sending again")
    await anyio.sleep(delay)
    return True




async def submit_once(ctx: RunContext, job: Job, wire: dict[str, Any], reservation: Reservation,
                      with_hook: bool = True) -> tuple[Submitted, Job, bool]:
    """One attempt under its reservation: the request's URLs for local images (made now), intent,
    POST, answer; and whether an accepted submission carried a webhook URL (its end should then be
    announced). The answer ends the reservation (charged, held, or released as soon as nothing
    can have been charged); any other exit leaves it to the reservation's block, which releases it."""
    estimate = reservation.estimate
    try:
        body = await with_local_urls(ctx, ctx.options.reference_store, wire)
        body, hooked = with_webhook(ctx, job, body) if with_hook else (body, False)
    except ReferenceStoreError as e:
        reservation.release()
        await ctx.event(job, "not-sent", str(e))
        ctx.state.note(str(e))
        return Submitted.STOPPED, job, False
    with anyio.CancelScope(shield=True):
        try:
            attempt_id = await ctx.writer.write(ctx.ledger.begin_submission(
                job.id, S(job.state), estimate, token=job.lease_token, batch=ctx.batch,
                budget=ctx.options.limits.budget))
        except BudgetExceeded as e:
            # Other runners share the budget: the database has the last word.
            reservation.release(ledger_committed=e.committed)
            return Submitted.BUDGET, job, False
        # Any other error writes no intent (another runner took the job over, the ledger failed):
        # the reservation's block releases it, so no submission waiting for room waits forever.
        job = job.evolve(state=S.SUBMITTING.value, attempts=job.attempts + 1)  # as the ledger counted it
        failpoint("after-intent")
        known = ("submitting", estimate, ctx.batch)
        try:
            # No timer here: the client bounds the request itself (--request-deadline, from when it is
            # sent); one around this call would also count the wait for --rpm's pacing, and hold as
            # unknown a submission that was never sent.
            answer = await ctx.client.submit(ctx.model_of(job).api_id, body)
        except OutcomeUnknown as e:
            ctx.pauses.server_trouble()
            return Submitted.HELD, await _held(ctx, job, attempt_id, reservation, str(e)), False
        except (NotSentError, RateLimited, CreditsExhausted, AuthError) as e:
            reservation.release()
            await ctx.writer.write(ctx.ledger.end_attempt(attempt_id, "not_sent", known=known))
            job = await ctx.move(job, S.SUBMITTING, S.PENDING, "not-sent", str(e))
            return _not_sent(ctx, e), job, False
        except RejectedError as e:
            reservation.release()
            await ctx.writer.write(ctx.ledger.end_attempt(attempt_id, "rejected", known=known))
            if hooked:
                return Submitted.HOOK_REFUSED, await hook_refused(ctx, job, e), False
            failed = await ctx.move(job, S.SUBMITTING, S.FAILED, "rejected", str(e), error=str(e))
            return Submitted.FAILED, failed, False
        failpoint("after-post")
        outcome, job = await _accepted(ctx, job, attempt_id, reservation, answer)
        return outcome, job, hooked and outcome is Submitted.ACCEPTED
    # Not reached: a scope could swallow only its own cancellation, and nothing cancels this one.
    raise AssertionError("submit_once: the shielded scope ended without an answer")


def _not_sent(ctx: RunContext, e: Exception) -> Submitted:
    if isinstance(e, RateLimited):
        ctx.pauses.rate_limited(e)
        return Submitted.RATE_LIMITED
    if isinstance(e, CreditsExhausted):
        ctx.state.stop(StopReason.CREDITS, f"the account is out of credits: {e}")
        return Submitted.STOPPED
    if isinstance(e, AuthError):
        ctx.state.stop(StopReason.AUTH, str(e))
        return Submitted.STOPPED
    return Submitted.NOT_SENT


async def _accepted(ctx: RunContext, job: Job, attempt_id: int, reservation: Reservation, answer: Submission
                    ) -> tuple[Submitted, Job]:
    model, estimate = ctx.model_of(job), reservation.estimate
    charge, verdict, cost_problem = _count_answer(ctx, model, job, reservation, answer)
    submitted_at = ctx.wall()
    ledger, base = ctx.ledger, ctx.client.base_url
    shared = f"the API answered with job id {answer.job_id}, which another job of this ledger already has"

    def accept(conn: Connection) -> Submitted:
        accepted = ledger.accept_answer(
            Answer(job.id, answer.job_id, answer.status_url, charge, submitted_at, base, attempt_id), Arrival.IN_TIME,
            token=job.lease_token, known=("submitting", estimate, ctx.batch), held_error=_held_shared(shared, charge),
            cost_note=_untrusted(verdict, cost_problem, charge) if cost_problem else None)(conn)
        return {Acceptance.SUBMITTED: Submitted.ACCEPTED, Acceptance.HELD: Submitted.HELD}.get(accepted.outcome,
                                                                                              Submitted.STOPPED)
    # If the ledger cannot record this answer, the journal keeps it: the job is polled, never paid again.
    record = records.accepted(ctx, job, attempt_id, answer.job_id, answer.status_url, charge, submitted_at)
    written = await ctx.writer.write(accept, record)
    if written is Submitted.STOPPED:
        return Submitted.STOPPED, job
    if written is Submitted.HELD:
        ctx.state.note("the API answered some submissions with a job id another job already has: they are held as "
                       "unknown (charged; never given another job's clip). `batcher status` counts them")
        return Submitted.HELD, job.evolve(state=S.UNKNOWN.value, credit_cost=charge, submitted_at=submitted_at,
                                          error=_held_shared(shared, charge))
    failpoint("after-accept")
    job = job.evolve(state=S.SUBMITTED.value, remote_job_id=answer.job_id, status_url=answer.status_url,
                     credit_cost=charge, submitted_at=submitted_at, error=None, api_base=base)
    if verdict in (ChargeVerdict.UNBELIEVABLE, ChargeVerdict.TOO_LOW):
        ctx.state.note("the API answered some submissions with a creditCost that cannot be believed (negative, "
                       "not a number, or below half the job's estimate); their estimates are counted instead "
                       "(`batcher status` counts them)")
    ctx.state.submitted += 1
    log.info("job %s: submitted as %s", job.key, answer.job_id)
    return Submitted.ACCEPTED, job


def _held_shared(shared: str, charge: Decimal) -> str:
    return (f"{shared}: held, not polled (it would be given the other job's clip); it was charged "
            f"({show(charge)} credits, counted as spent). `batcher retry --unknown` renders it again, paying again")


async def _held(ctx: RunContext, job: Job, attempt_id: int, reservation: Reservation, why: str) -> Job:
    # The API may have charged us: the reservation stays committed, the job waits for the user.
    reservation.hold()
    known = ("submitting", reservation.estimate, ctx.batch)
    await ctx.writer.write(ctx.ledger.end_attempt(attempt_id, "unknown", known=known))
    message = f"submission outcome unknown ({why}); held: it may have been charged"
    return await ctx.move(job, S.SUBMITTING, S.UNKNOWN, "unknown", message, error=message)
