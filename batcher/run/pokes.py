"""Webhook pokes inside a run: the board on which a job's follower waits for its poke or for its
next safety poll, whichever comes first, and the run's webhook state (the batch's secret, the
base of every job's URL, the models whose API refused the field, how webhooks have done).

A poke is never trusted for anything but "ask now": duplicates and late pokes cost one status
request at most, and a poke for a job nobody here follows yet is kept a while (it may come before
the submission's answer is recorded), then forgotten."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from ..safetynet import WebhookTally
from ..webhooks import job_url, key_of

EARLY_KEEP = 10_000  # pokes kept for jobs not (yet) followed here, the oldest dropped first
EARLY_SECONDS = 600.0  # ... and none longer than this


@dataclass
class PokeBoard:
    """Followers wait here; the listener pokes."""

    clock: Callable[[], float] = time.monotonic
    pokes: int = 0  # valid pokes received
    _waiting: dict[str, anyio.Event] = field(default_factory=dict)
    _early: OrderedDict[str, float] = field(default_factory=OrderedDict)

    def poke(self, key: str) -> None:
        self.pokes += 1
        event = self._waiting.get(key)
        if event is not None:
            event.set()
            return
        now = self.clock()
        self._early[key] = now
        self._early.move_to_end(key)
        while len(self._early) > EARLY_KEEP or (self._early and next(iter(self._early.values())) < now - EARLY_SECONDS):
            self._early.popitem(last=False)

    def take_early(self, key: str) -> bool:
        """Whether a poke for `key` came while nobody waited (and forget it)."""
        at = self._early.pop(key, None)
        return at is not None and at >= self.clock() - EARLY_SECONDS

    async def wait(self, key: str, timeout: float) -> bool:
        """Until `key` is poked (True) or `timeout` seconds pass (False)."""
        if self.take_early(key):
            return True
        event = anyio.Event()
        self._waiting[key] = event
        try:
            with anyio.move_on_after(timeout):
                await event.wait()
        finally:
            if self._waiting.get(key) is event:
                del self._waiting[key]
        return event.is_set()


@dataclass
class HookState:
    """The run's webhooks: set up when `--webhook-listen` is given."""

    batch: str
    secret: str = field(repr=False)
    base: str
    board: PokeBoard = field(default_factory=PokeBoard)
    tally: WebhookTally = field(default_factory=WebhookTally)
    refused: dict[str, str] = field(default_factory=dict)  # model -> the API's refusal of the field
    hooked: set[int] = field(default_factory=set)  # jobs this run submitted with a webhook URL (being followed)
    doubted: dict[int, str] = field(default_factory=dict)  # job -> a refusal of a submission that carried one

    def url_for(self, key: str) -> str:
        return job_url(self.base, self.secret, self.batch, key)

    def check(self, path: str) -> str | None:
        """The key a poke's path names, when its token is this batch's."""
        return key_of(path, self.secret, self.batch)
