"""Pure decisions the pool makes: retry back-off, poll timing, budget accounting.

No I/O and no clock of their own: times and random numbers are passed in, so every rule is
tested directly.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field


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


# --- polling -------------------------------------------------------------------------------------

@dataclass
class _Stats:
    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        d = x - self.mean
        self.mean += d / self.n
        self.m2 += d * (x - self.mean)

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else 0.0


@dataclass
class PollPlanner:
    """When to poll a job, learned from the render times this run has observed.

    A render's true length lies between the last poll that saw it running and the first that
    saw it done; the midpoint feeds running statistics per job class (duration, resolution).
    With enough data, the first poll comes a little before the expected end (mean - lead*std)
    and later polls follow every `step_std * std`, so most jobs are seen about once or twice
    after they finish. Past the expected spread, or with no data yet, polls back off
    geometrically from a start value.
    """

    initial: float = 5.0  # first poll when nothing has been observed yet
    factor: float = 1.5  # back-off between polls when nothing better is known
    max_interval: float = 60.0
    min_interval: float = 0.02
    lead: float = 0.6  # first poll at mean - lead * std
    step_std: float = 0.5  # then every step_std * std ...
    min_step_fraction: float = 0.04  # ... but never more often than this fraction of the mean
    min_samples: int = 3
    _classes: dict[tuple, _Stats] = field(default_factory=dict)
    _all: _Stats = field(default_factory=_Stats)

    def observe(self, job_class: tuple, lower: float, upper: float) -> None:
        """A render of `job_class` finished between `lower` and `upper` seconds after submission."""
        estimate = max(0.0, (lower + upper) / 2)
        self._classes.setdefault(job_class, _Stats()).add(estimate)
        self._all.add(estimate)

    def expected(self, job_class: tuple) -> tuple[float, float] | None:
        """(mean, std) of render seconds for a class, falling back to all classes; None without data."""
        stats = self._classes.get(job_class)
        if stats is None or stats.n < self.min_samples:
            stats = self._all
        if stats.n < self.min_samples:
            return None
        return stats.mean, max(stats.std, 0.02 * stats.mean)

    def next_poll(self, job_class: tuple, elapsed: float, polls: int) -> float:
        """Seconds after submission at which to poll next, given `polls` so far at `elapsed`."""
        expected = self.expected(job_class)
        if expected is None:
            # Nothing learned yet: initial, then intervals growing by `factor`.
            interval = min(self.max_interval, max(self.min_interval, self.initial * (self.factor ** polls)))
            return elapsed + interval if polls else interval
        mean, std = expected
        first = max(self.min_interval, mean - self.lead * std)
        if elapsed < first:
            return first
        step = max(self.step_std * std, self.min_step_fraction * mean, self.min_interval)
        late = mean + 3 * std
        if elapsed < late:
            return elapsed + step
        # Slower than anything seen: back off, but keep within max_interval.
        over = elapsed - late
        return elapsed + min(self.max_interval, max(step, over * (self.factor - 1)))


# --- budget --------------------------------------------------------------------------------------

@dataclass
class Budget:
    """Credits a batch may still commit. `committed` is what earlier runs and answered submissions
    cost (charged and not refunded, plus held unknowns); `reserved` is estimates of submissions
    whose answer has not come yet."""

    limit: float | None
    committed: float = 0.0
    reserved: float = 0.0
    reservations: int = 0

    def fits(self, estimate: float) -> bool:
        return self.limit is None or self.committed + self.reserved + estimate <= self.limit + 1e-9

    def reserve(self, estimate: float) -> bool:
        if not self.fits(estimate):
            return False
        self.reserved += estimate
        self.reservations += 1
        return True

    def settle(self, estimate: float, cost: float | None) -> None:
        """A reservation is answered: `cost` charged (None: nothing was charged)."""
        self.reserved = max(0.0, self.reserved - estimate)
        self.reservations = max(0, self.reservations - 1)
        if cost:
            self.committed += cost

    def refund(self, cost: float) -> None:
        self.committed = max(0.0, self.committed - cost)

    @property
    def remaining(self) -> float | None:
        return None if self.limit is None else max(0.0, self.limit - self.committed - self.reserved)
