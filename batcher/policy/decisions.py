"""Pure decisions a run makes: retry back-off, request deadlines, request pacing, a batch's wall time.

No I/O and no clock of their own: times and random numbers are passed in, so every rule is
tested directly.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

# --- retries -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RetryPolicy:
    """Exponential back-off with full jitter, bounded in attempts and total time."""

    base: float = 1.0
    cap: float = 60.0
    max_attempts: int = 8
    max_total: float = 600.0

    def delay(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `attempt` (1-based); Retry-After wins when longer."""
        ceiling = min(self.cap, self.base * (2 ** (attempt - 1)))
        wait = rng.uniform(0, ceiling)
        if retry_after is not None:
            wait = max(wait, retry_after)
        return wait

    def gives_up(self, attempt: int, elapsed: float) -> bool:
        """True once `attempt` failures (or `elapsed` seconds) have used the allowance."""
        return attempt >= self.max_attempts or elapsed >= self.max_total


DEFAULT_REQUEST_DEADLINE = 90.0  # seconds for a whole API answer (under submission's own 120 s bound)
DEFAULT_MIN_DOWNLOAD_RATE = 50.0  # KB/s: a 20 MB clip may take up to ~7 minutes


@dataclass(frozen=True)
class Deadlines:
    """The most time one request may take from sending to its last byte. httpx's read timeout
    restarts with every byte, so an answer that drips one byte a few seconds would otherwise hold
    its task for ever. An API answer (status, submission, a model's schema) gets `request`
    seconds; a download `request` seconds plus its arrived bytes at `min_download_kbps`."""

    request: float = DEFAULT_REQUEST_DEADLINE
    min_download_kbps: float = DEFAULT_MIN_DOWNLOAD_RATE

    def check(self) -> str | None:
        """What is wrong with these deadlines (None: nothing); NaN and infinity are refused."""
        if not (0 < self.request < math.inf):
            return f"--request-deadline must be a positive number of seconds, got {self.request!r}"
        if not (0 < self.min_download_kbps < math.inf):
            return f"--min-download-rate must be a positive number of KB/s, got {self.min_download_kbps!r}"
        return None

    def download_ends(self, begun: float, arrived: int) -> float:
        """When a download that began at `begun` is too slow, with `arrived` bytes in: past
        `request` seconds, at least the minimum rate over the time since. Only bytes that came
        count: a declared length is the server's word, and a lying one (1 GB, dripped) would buy
        it hours."""
        return begun + self.request + arrived / (self.min_download_kbps * 1024)


# --- request rate --------------------------------------------------------------------------------

@dataclass
class RatePolicy:
    """Spacing of API requests under `rpm`, adapting when the API answers 429 anyway.

    A generic cell-rate algorithm: requests go at most `burst` at once, then one per interval,
    with a safety `margin` below the limit (timers and networks jitter), so no 60-second window
    holds more than `rpm`. A 429 cuts the rate by `backoff` and holds every request until its
    `Retry-After`; every `recover_after` answers without one, the rate climbs back by `growth`.
    """

    rpm: float
    burst: int = 1
    margin: float = 0.97
    backoff: float = 0.7
    growth: float = 1.1
    recover_after: int = 20
    floor: float = 1.0
    _rate: float = 0.0  # requests per minute in force now
    _tat: float = float("-inf")  # theoretical arrival time of the next request
    _calm: int = 0

    def __post_init__(self) -> None:
        self._rate = self.rpm * self.margin

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def interval(self) -> float:
        return 60.0 / self._rate

    def take(self, now: float) -> float:
        """Claim the next slot; returns the time the request may be sent (>= now)."""
        tolerance = (self.burst - 1) * self.interval
        at = max(now, self._tat - tolerance)
        self._tat = max(self._tat, at) + self.interval
        return at

    def on_rate_limited(self, now: float, retry_after: float) -> None:
        self._rate = max(self.floor, self._rate * self.backoff)
        self._calm = 0
        self._tat = max(self._tat, now + retry_after)

    def on_answer(self) -> None:
        self._calm += 1
        if self._calm >= self.recover_after and self._rate < self.rpm * self.margin:
            self._rate = min(self.rpm * self.margin, self._rate * self.growth)
            self._calm = 0


# --- wall time -----------------------------------------------------------------------------------

def estimate_wall_seconds(jobs: int, concurrency: int, render_seconds: float) -> float:
    """How long a batch should take: waves of `concurrency` renders, each of a typical render time
    (polling and downloads add a little; the API's own queue may add more)."""
    if jobs <= 0:
        return 0.0
    return math.ceil(jobs / max(1, concurrency)) * render_seconds
