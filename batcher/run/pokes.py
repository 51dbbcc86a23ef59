"""Webhook pokes inside a run: the board on which a job's follower waits for its poke or for its
next safety poll, whichever comes first, and the run's webhook state (the batch's secret, the
base of every job's URL, the models whose API refused the field, how webhooks have done).

A poke is never trusted for anything but "ask now": duplicates and late pokes cost one status
request at most, and a poke for a job nobody here follows yet is kept a while (it may come before
the submission's answer is recorded), then forgotten. A job's URL may be seen by others (a reverse
proxy's access log) and replayed at will, and an API may poke at every step of a render: so after a
poke has woken a job's follower, the next one waits a gap that doubles each time (half a second
first, ten at most): a flood of pokes costs a few status requests a job, not one each."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import anyio

from ..policy import WebhookTally
from .webhooks import job_url

T = TypeVar("T")

EARLY_KEEP = 10_000  # pokes kept for jobs not (yet) followed here, the oldest dropped first
EARLY_SECONDS = 600.0  # ... and none longer than this
FIRST_GAP, MOST_GAP = 0.5, 10.0  # seconds between two wakes of one job's follower by pokes: doubling, capped


@dataclass
class PokeBoard:
    """Followers wait here; the listener pokes."""

    clock: Callable[[], float] = time.monotonic
    pokes: int = 0  # valid pokes received
    _waiting: dict[str, anyio.Event] = field(default_factory=dict)
    _rung: set[anyio.Event] = field(default_factory=set)  # waiting events a poke has set (others may set them too)
    _early: OrderedDict[str, float] = field(default_factory=OrderedDict)
    _woken: OrderedDict[str, tuple[float, int]] = field(default_factory=OrderedDict)  # key -> (last wake, wakes)

    def poke(self, key: str) -> None:
        self.pokes += 1
        event = self._waiting.get(key)
        if event is not None:
            self._rung.add(event)
            event.set()
            return
        now = self.clock()
        self._early[key] = now
        self._early.move_to_end(key)
        _forget_old(self._early, now, lambda at: at)

    def take_early(self, key: str) -> bool:
        """Whether a poke for `key` came while nobody waited (and forget it)."""
        at = self._early.pop(key, None)
        return at is not None and at >= self.clock() - EARLY_SECONDS

    async def wait(self, key: str, timeout: float, event: anyio.Event | None = None) -> bool:
        """Until `key` is poked (True) or `timeout` seconds pass (False). A poke that comes within
        the gap after the last one that woke this key is held to the gap's end (or the timeout).
        `event`: the one to wait on, which another may set too (`Wakeups`): then False at once."""
        started = anyio.current_time()
        if not self.take_early(key):
            event = event or anyio.Event()
            self._waiting[key] = event
            try:
                with anyio.move_on_after(timeout):
                    await event.wait()
            finally:
                if self._waiting.get(key) is event:
                    del self._waiting[key]
                poked = event in self._rung
                self._rung.discard(event)
            if not poked:
                return False
        hold = self._hold(key)
        if hold > 0:
            await anyio.sleep(min(hold, max(0.0, timeout - (anyio.current_time() - started))))
            self._early.pop(key, None)  # pokes that came meanwhile: the poll now answers them too
        self._woke(key)
        return True

    def _hold(self, key: str) -> float:
        """Seconds until a poke may wake `key`'s follower again."""
        last = self._woken.get(key)
        if last is None:
            return 0.0
        at, wakes = last
        return at + min(MOST_GAP, FIRST_GAP * 2.0 ** (wakes - 1)) - self.clock()

    def _woke(self, key: str) -> None:
        now = self.clock()
        _, wakes = self._woken.pop(key, (now, 0))
        self._woken[key] = (now, wakes + 1)
        _forget_old(self._woken, now, lambda woken: woken[0])


def _forget_old(entries: OrderedDict[str, T], now: float, at: Callable[[T], float]) -> None:
    """Keep what is remembered per key bounded: the oldest first past EARLY_KEEP, and nothing
    older than EARLY_SECONDS (`at`: when an entry was made; entries are in that order)."""
    while entries and (len(entries) > EARLY_KEEP or at(next(iter(entries.values()))) < now - EARLY_SECONDS):
        entries.popitem(last=False)


@dataclass
class HookState:
    """The run's webhooks: set up when `--webhook-listen` is given."""

    batch: str
    secret: str = field(repr=False)
    base: str
    board: PokeBoard = field(default_factory=PokeBoard)
    tally: WebhookTally = field(default_factory=WebhookTally)
    refused: dict[str, str] = field(default_factory=dict)  # model -> the API's refusal of the field
    doubted: dict[int, str] = field(default_factory=dict)  # job -> a refusal of a submission that carried one

    def url_for(self, key: str) -> str:
        return job_url(self.base, self.secret, self.batch, key)

