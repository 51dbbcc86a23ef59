"""The operator's word, obeyed: `batcher pause / resume / cancel` set the batch's control word in
the ledger, and every runner of the batch reads it twice a second (the control watcher task; one
indexed read of the batch row) and obeys.

- paused: nothing new is sent (a submission waits before it reserves its credits, in
  `RunContext.reserve`; the feeder claims only paid work, and waits instead of ending while
  pending jobs remain); jobs in flight are still polled and downloaded; a submission already
  past its intent is answered and recorded.
- running again: submissions go on.
- cancelled: the run stops submitting (StopReason.CANCELLED, exit 4), finishes the paid work it
  holds or finds, cancels any job that became pending meanwhile, and ends. A runner that saw the
  cancel stays cancelled: after `batcher resume`, `batcher run` starts again.

The ledger has the last word either way: an intent for a batch that is not running is refused in
its own transaction (`LedgerTransitions.begin_submission`), so no POST follows a pause or cancel
committed before its intent, whatever this watcher has read yet; the worker gives that job back
(pending) and reads the word at once."""

from __future__ import annotations

import logging
import time

import anyio

from ..errors import ExitCode, LedgerError
from ..states import Control
from .context import RunContext
from .outcomes import StopReason

log = logging.getLogger("batcher.run")
CONTROL_INTERVAL = 0.5  # seconds between two reads of the control word: obeyed within ~0.5 s


def _tell(ctx: RunContext, line: str) -> None:
    """Say it now (stderr for the CLI, else the log); it is among the report's messages either way,
    and the end summary does not say again what was said as it happened."""
    if ctx.options.on_warning is not None:
        ctx.options.on_warning(line)
        ctx.state.told.add(line)
        if line not in ctx.state.messages:
            ctx.state.messages.append(line)
    else:
        ctx.state.note(line)


def _say(ctx: RunContext, line: str) -> None:
    """Say now what the run's messages already hold."""
    if ctx.options.on_warning is not None:
        ctx.options.on_warning(line)
        ctx.state.told.add(line)


def _when(at: float | None) -> str:
    return f" at {time.strftime('%H:%M:%S', time.localtime(at))}" if at else ""


def obey(ctx: RunContext, word: Control, at: float | None) -> None:
    """The batch's control word changed to `word`: act on it and say so, once."""
    if ctx.state.obey(word) is word:
        return
    name = f"batch {ctx.batch!r}"
    if word is Control.CANCELLED:
        line = (f"{name} cancelled (`batcher cancel`{_when(at)}): nothing more is submitted; jobs already paid for "
                f"are polled and downloaded, then this runner exits {int(ExitCode.CANCELLED)}")
        ctx.state.stop(StopReason.CANCELLED, line)
        _say(ctx, line)
    elif word is Control.PAUSED:
        _tell(ctx, f"{name} paused (`batcher pause`{_when(at)}): no new submissions until `batcher resume`; "
                   f"jobs in flight are still polled and downloaded")
    else:
        _tell(ctx, f"{name} resumed (`batcher resume`{_when(at)}): submitting again")


async def read_control(ctx: RunContext) -> None:
    """Read the batch's control word once, and obey it."""
    found = await ctx.threads.run(ctx.ledger.control_word, ctx.batch)
    if found is not None:
        obey(ctx, *found)


async def watch_control(ctx: RunContext, interval: float = CONTROL_INTERVAL) -> None:
    """The control watcher: the control word read every `interval` seconds until the run is
    cancelled (then its work is done). A failed read keeps the last word and is tried again."""
    failing = False
    while ctx.state.control is not Control.CANCELLED:
        await anyio.sleep(interval)
        try:
            await read_control(ctx)
            failing = False
        except LedgerError as e:
            if not failing:
                log.warning("%s; trying again", e)
            failing = True


async def control_at_start(ctx: RunContext) -> None:
    """Before the run works: a paused batch is waited for (said once), a cancelled one gets
    nothing submitted (said once) and its pending jobs are cancelled."""
    found = await ctx.threads.run(ctx.ledger.control_word, ctx.batch)
    word, at = found if found is not None else (Control.RUNNING, None)
    ctx.state.control = word
    name = f"batch {ctx.batch!r}"
    if word is Control.PAUSED:
        _tell(ctx, f"{name} is paused (`batcher pause`{_when(at)}): this runner polls and downloads jobs in "
                   f"flight and waits to submit until `batcher resume`")
    elif word is Control.CANCELLED:
        line = (f"{name} is cancelled (`batcher cancel`{_when(at)}): this run submits nothing (`batcher resume` "
                f"puts its cancelled jobs back to pending); paid jobs left by other runners, if any, are still "
                f"polled and downloaded")
        ctx.state.stop(StopReason.CANCELLED, line)
        _say(ctx, line)
        await cancel_leftovers(ctx)


async def cancel_leftovers(ctx: RunContext) -> int:
    """In a cancelled batch, jobs that are pending (again) are cancelled: a refunded failure, a
    submission that never left, `batcher retry`, new rows of the manifest. Nothing if the batch
    was resumed meanwhile (the ledger checks, in the same transaction)."""
    if ctx.state.control is not Control.CANCELLED:
        return 0
    op = ctx.ledger.cancelling(ctx.batch, "pending while its batch is cancelled (`batcher cancel`): not sent; "
                                          "`batcher resume` puts it back")
    n: int = await ctx.threads.run(ctx.ledger.write, op)
    if n:
        log.info("%d pending job(s) of the cancelled batch cancelled", n)
    return n
