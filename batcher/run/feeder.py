"""The feeder and the leases: claim jobs a few at a time (paid work first: rendered, then
submitted, then pending) so several runners share a batch; keep the leases alive; reap the
leases of runners that died, and hold as `unknown` what they left mid-submission."""

from __future__ import annotations

import os
import socket

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from ..files import process_alive
from ..ledger import Job
from ..states import JobState as S
from .context import RunContext


async def reap(ctx: RunContext) -> None:
    """Runners of this batch that died on this host lose their leases at once (others' run out);
    jobs they left in `submitting` may have been charged: held as unknown."""
    await ctx.threads.run(ctx.ledger.reap_dead_runners, ctx.batch, socket.gethostname(), process_alive, ctx.owner)
    recovered = await ctx.threads.run(ctx.ledger.recover_interrupted, ctx.batch)
    if recovered:
        ctx.note(f"{recovered} job(s) were mid-submission when their runner stopped; they are held as "
                 f"'unknown' (they may have been charged)")


async def register(ctx: RunContext) -> None:
    await ctx.threads.run(ctx.ledger.register, ctx.owner, ctx.batch, socket.gethostname(), os.getpid())


async def heartbeat(ctx: RunContext) -> None:
    """Renew our leases well before they run out, so nobody takes over live work."""
    while True:
        await anyio.sleep(ctx.options.limits.lease_seconds / 3)
        await ctx.threads.run(ctx.ledger.renew, ctx.batch, ctx.owner, ctx.options.limits.lease_seconds)


async def feed(ctx: RunContext, send: MemoryObjectSendStream[Job]) -> None:
    """Claim work until nothing is left that anyone could claim; rendered jobs go straight to the
    download queue, the rest to the workers."""
    claim_size = max(1, ctx.options.limits.concurrency)
    async with send:
        while True:
            states = [S.RENDERED, S.SUBMITTED] + ([S.PENDING] if ctx.submitting_allowed else [])
            lease = ctx.options.limits.lease_seconds
            jobs = await ctx.threads.run(ctx.ledger.claim, ctx.batch, states, ctx.owner, lease,
                                         claim_size, ctx.generation)
            if jobs:
                skipped = []
                for job in jobs:
                    if job.state == S.RENDERED.value:
                        await ctx.downloads.put(job)
                    elif job.state == S.PENDING.value and not ctx.submitting_allowed:
                        skipped.append(job.id)
                    else:
                        await send.send(job)
                # Pending jobs we may no longer submit go back at once, for runners that still can.
                await ctx.threads.run(ctx.ledger.release_jobs, skipped, ctx.owner)
                continue
            # Nothing claimable. Other runners may still hand work back (a lease that runs out, a
            # job whose submission dies with its runner): wait for them, reaping as we go.
            if not await ctx.threads.run(ctx.ledger.held_by_others, ctx.batch, ctx.owner, ctx.submitting_allowed):
                return
            await anyio.sleep(min(2.0, ctx.options.limits.lease_seconds / 4))
            await reap(ctx)
