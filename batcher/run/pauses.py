"""Shared pauses: a 429's Retry-After, or a burst of server errors, holds every request of the run
at once, so a bad minute does not become thousands of failing requests."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..errors import RateLimited
from .pacer import RequestPacer

log = logging.getLogger("batcher.run")


class Pauses:
    """When requests may go again, for the whole run."""

    TROUBLE_BURST = 5  # server errors within 10 s that pause everything

    def __init__(self, base: float, pacer: RequestPacer | None, note: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.base = base  # the retry policy's base delay: the first pause, doubled while trouble lasts
        self.pacer = pacer
        self.note = note
        self.clock = clock
        self.until = 0.0
        self._trouble: list[float] = []
        self._level = 0

    def remaining(self) -> float:
        return self.until - self.clock()

    def pause(self, seconds: float) -> None:
        self.until = max(self.until, self.clock() + seconds)
        if self.pacer is not None:
            self.pacer.hold(seconds)

    def rate_limited(self, e: RateLimited) -> None:
        """A 429: everything waits for its Retry-After, which the client capped at --max-retry-after."""
        if e.asked is not None and e.asked > e.retry_after:
            self.note(f"the API asked to wait {e.asked:,.0f}s before more requests; waiting {e.retry_after:g}s "
                      f"instead (--max-retry-after)")
        self.pause(e.retry_after)

    def server_trouble(self) -> None:
        """One more 5xx or failed connection; a burst of them pauses every request, longer each time."""
        now = self.clock()
        self._trouble = [t for t in self._trouble if t > now - 10.0] + [now]
        if len(self._trouble) >= self.TROUBLE_BURST and now >= self.until:
            self._level = min(self._level + 1, 6)
            pause = self.base * (2 ** self._level)
            self.pause(pause)
            self._trouble = []
            log.warning("many server errors at once: pausing all requests for %.1fs", pause)

    def server_fine(self) -> None:
        self._level = 0
