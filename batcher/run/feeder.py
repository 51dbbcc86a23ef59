"""The feeder and the leases: claim jobs a few at a time (paid work first: rendered, then
submitted, then pending) so several runners share a batch; keep the leases alive; reap the
leases of runners that died, and hold as `unknown` what they left mid-submission. While the batch
is paused the feeder claims paid work only, and waits for `resume` instead of ending while
pending jobs remain."""

from __future__ import annotations

import os
import socket

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from ..ledger import Job
from ..outputs import process_alive
from ..states import JobState as S
from .context import RunContext


async def reap(ctx: RunContext) -> None:
    """Runners of this batch that died on this host lose their leases at once (others' run out);
    jobs they left in `submitting` may have been charged: held as unknown."""
    await ctx.threads.run(ctx.ledger.write, ctx.ledger.reap_dead_runners(ctx.batch, socket.gethostname(),
                                                                         process_alive, ctx.owner))
    recovered = await ctx.threads.run(ctx.ledger.write, ctx.ledger.recover_interrupted(ctx.batch))
    if recovered:
        ctx.state.note(f"{recovered} job(s) were mid-submission when their runner stopped; they are held as "
                       f"'unknown' (they may have been charged)")


async def register(ctx: RunContext) -> None:
    await ctx.threads.run(ctx.ledger.write, ctx.ledger.register(ctx.owner, ctx.batch, socket.gethostname(),
                                                                os.getpid()))


async def heartbeat(ctx: RunContext) -> None:
    """Renew our leases well before they run out, so nobody takes over live work."""
    while True:
        await anyio.sleep(ctx.options.limits.lease_seconds / 3)
        await ctx.writer.patiently(ctx.ledger.write, ctx.ledger.renew(ctx.batch, ctx.owner,
                                                                       ctx.options.limits.lease_seconds))


async def feed(ctx: RunContext, send: MemoryObjectSendStream[Job]) -> None:
    """Claim work until nothing is left that anyone could claim; rendered jobs go straight to the
    download queue, the rest to the workers."""
    claim_size = max(1, ctx.options.limits.concurrency)
    locked_since: list[float] = []  # when the claims first found pending jobs they could not take
    async with send:
        while True:
            states = [S.RENDERED, S.SUBMITTED] + ([S.PENDING] if ctx.state.may_claim_pending else [])
            lease = ctx.options.limits.lease_seconds
            jobs = await ctx.writer.patiently(ctx.ledger.write, ctx.ledger.claim(ctx.batch, states, ctx.owner, lease,
                                                                                 claim_size, ctx.state.generation))
            if jobs:
                locked_since.clear()
                skipped = []
                for job in jobs:
                    if job.state == S.RENDERED.value:
                        await ctx.downloads.put(job)
                    elif job.state == S.PENDING.value and not ctx.state.may_claim_pending:
                        skipped.append(job.id)
                    else:
                        await send.send(job)
                # Pending jobs we may no longer submit go back at once, for runners that still can.
                await ctx.writer.patiently(ctx.ledger.write, ctx.ledger.release_jobs(skipped, ctx.owner))
                continue
            # Another runner may have staged the manifest again since we started (the same command on
            # another host): its pending jobs carry a newer generation. Take it up, when every model
            # of the batch is one this run can send.
            if await _newer_generation(ctx):
                continue
            if await _locked_pending(ctx, locked_since):
                continue
            # Nothing claimable. Other runners may still hand work back (a lease that runs out, a
            # job whose submission dies with its runner): wait for them, reaping as we go.
            wanted = ctx.state.submitting_allowed
            if not await ctx.threads.run(ctx.ledger.held_by_others, ctx.batch, ctx.owner, wanted) \
                    and not await _paused_with_work(ctx):
                return
            # (a change of the control word wakes it: resumed, pending jobs are claimed at once)
            await ctx.state.control_changed.wait(min(2.0, ctx.options.limits.lease_seconds / 4))
            await reap(ctx)


async def _newer_generation(ctx: RunContext) -> bool:
    """Whether the batch was staged again since this run started, with models it knows: then its
    generation is taken up (pending jobs of the newer staging become claimable)."""
    def newer() -> int | None:
        latest = ctx.ledger.generation(ctx.batch)
        if latest == ctx.state.generation or not set(ctx.ledger.models_of(ctx.batch)) <= set(ctx.models):
            return None
        return latest
    latest = await ctx.threads.run(newer)
    if latest is None:
        return False
    ctx.state.generation = latest
    return True


async def _locked_pending(ctx: RunContext, since: list[float]) -> bool:
    """Pending jobs of our staging that the claim skipped: on PostgreSQL a claim skips rows another
    transaction holds, and another runner staging the manifest again holds them all until it
    commits (then they carry its newer generation, which the next round takes up). Wait a moment
    rather than end with work left, for one lease's time at most (a bound, should anything else
    hold them)."""
    if not ctx.state.may_claim_pending:
        return False
    if not await ctx.threads.run(ctx.ledger.claimable_pending, ctx.batch, ctx.state.generation):
        since.clear()
        return False
    now = anyio.current_time()
    if not since:
        since.append(now)
    if now - since[0] > ctx.options.limits.lease_seconds:
        return False
    await anyio.sleep(0.1)
    return True


async def _paused_with_work(ctx: RunContext) -> bool:
    """The batch is paused and still has jobs to send: wait for `resume` rather than end. (Jobs of
    the batch's latest manifest: another runner may have staged it since this one started.)"""
    if not ctx.state.paused:
        return False

    def pending() -> bool:
        latest = ctx.ledger.generation(ctx.batch)
        return bool(ctx.ledger.jobs_in(ctx.batch, [S.PENDING], limit=1, generation=latest))
    return await ctx.threads.run(pending)
