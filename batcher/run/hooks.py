"""Webhooks in a run: the listener started before anything is sent, the URL each submission
carries, and what a refusal of the field does (the job is sent again without it; once a job of a
model is accepted without it after that, the model is polled from then on, and the run says so once).

Nothing here decides a job's state: a poke only wakes the job's follower (`polling`), which asks
the API. Scheduled safety polls go on, so a lost webhook costs latency, never a job."""

from __future__ import annotations

import re
from typing import Any

import anyio
import anyio.abc

from ..errors import RejectedError
from ..ledger import Job
from ..policy import WebhookTally
from ..states import JobState as S
from .context import RunContext
from .listener import PokeListener
from .outcomes import Submitted
from .pokes import HookState, PokeBoard
from .webhooks import key_of, make_secret, webhook_field


async def listen(ctx: RunContext, scope: anyio.CancelScope, *,
                 task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
    """Listen for pokes until `scope` is cancelled; started (its port known) before any submission."""
    settings = ctx.options.webhooks
    assert settings is not None
    secret = await ctx.threads.run(ctx.ledger.write, ctx.ledger.webhook_secret(ctx.batch, make_secret))
    board, tally = PokeBoard(), WebhookTally()

    def poked(key: str) -> None:
        tally.came(key)  # (a job a poll found done first: its webhook was late, not lost)
        board.poke(key)
    listener = PokeListener(settings.listen_host, settings.listen_port,
                            lambda path: key_of(path, secret, ctx.batch), poked)
    with scope:
        async with anyio.create_task_group() as group:
            port = await group.start(listener.serve)
            ctx.hooks = HookState(ctx.batch, secret, settings.base(port), board, tally)
            task_status.started(port)


def with_webhook(ctx: RunContext, job: Job, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The submission's body with the job's webhook URL, where the model takes one; whether it has one."""
    hooks = ctx.hooks
    if hooks is None:
        return body, False
    model = ctx.model_of(job)
    if model.api_id in hooks.refused:
        return body, False
    return {**body, webhook_field(model): hooks.url_for(job.key)}, True


async def hook_refused(ctx: RunContext, job: Job, e: RejectedError) -> Job:
    """A submission that carried a webhook URL was refused (4xx: nothing charged): the job goes back
    to pending, to be sent at once without the URL. Whether the URL was the reason shows then."""
    assert ctx.hooks is not None
    why = without_token(str(e), ctx.hooks.url_for(job.key))
    ctx.hooks.doubted[job.id] = why
    return await ctx.move(job, S.SUBMITTING, S.PENDING, "webhook-refused",
                          f"refused while asking for a webhook ({why}); sending it again without one")


def without_token(text: str, url: str) -> str:
    """The API's refusal with the job's token cut out: an API may well quote the URL it refused, and
    the reason goes to the ledger, the log and the run's summary, where a token would let anyone
    replay the job's pokes. A token cut short by the API's quoting goes as well."""
    head, _, token = url.rpartition("/")
    key = head.rpartition("/")[2]
    text = text.replace(token, "[token]")
    return re.sub(rf"({re.escape(key)}(?:/|%2[Ff]|\\/))[0-9a-fA-F]+", r"\1[token]", text)


def settle_hook_refusal(ctx: RunContext, job: Job, model: str, outcome: Submitted) -> None:
    """After a job refused with a webhook URL was sent without one: accepted means the API does not
    take the field for this model, so its jobs are polled from now on (said once)."""
    hooks = ctx.hooks
    why = hooks.doubted.pop(job.id, None) if hooks is not None else None
    if hooks is None or why is None or outcome is not Submitted.ACCEPTED or model in hooks.refused:
        return
    hooks.refused[model] = why
    ctx.state.note(f"the API refused a webhook URL on {model} jobs ({why}); they are polled instead")
