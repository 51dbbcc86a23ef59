"""Pure decisions a run makes: retry back-off, poll timing, request pacing.

No I/O and no clock of their own: times and random numbers are passed in, so every rule is
tested directly.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .renderfit import GUESS_SPREAD, RenderTimes, fit_censored_normal
from .safetynet import next_safety_poll

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


# --- polling -------------------------------------------------------------------------------------

# --- render times remembered from earlier batches ----------------------------------------------

# A class's key in the ledger (model, duration, resolution) -> (completed renders, the most recent
# ones as (render_seconds, seconds from submission until the poll that saw it done)).
History = Mapping[tuple[Any, Any, Any], tuple[int, list[tuple[float, float | None]]]]


@dataclass(frozen=True)
class RenderSeed:
    """What earlier batches measured of one job class: the fitted mean and spread of its render
    seconds, from `count` renders."""

    mean: float
    std: float
    count: int


def remembered_intervals(rows: Iterable[tuple[float, float | None]]) -> list[tuple[float, float]]:
    """Each remembered render as the interval it is known to have ended in. The ledger keeps a
    render's midpoint (between the last poll that saw it running, or its submission, and the first
    that saw it done) and, through its timestamps, the upper end: the lower end is 2*mid - upper
    (clamped at 0). Without an upper end (or with clocks that disagree) the midpoint stands alone."""
    out = []
    for mid, upper in rows:
        if mid is None or not math.isfinite(mid) or mid < 0:
            continue
        if upper is None or not math.isfinite(upper) or upper < mid:
            out.append((mid, mid))
        else:
            out.append((max(0.0, 2 * mid - upper), upper))
    return out


def seed_from(count: int, rows: Iterable[tuple[float, float | None]], min_samples: int = 3) -> RenderSeed | None:
    """A class's seed: the same censored fit a run makes, over its remembered renders; None with
    fewer than `min_samples` of them (a run would not trust fewer either)."""
    intervals = remembered_intervals(rows)
    if len(intervals) < min_samples:
        return None
    mean, std = fit_censored_normal(intervals)
    return RenderSeed(mean, std, max(count, len(intervals)))


def pooled(seeds: Iterable[RenderSeed]) -> RenderSeed | None:
    """One figure for several classes of a model: the mean and spread of their mixture, each class
    weighted by its count."""
    group = list(seeds)
    total = sum(s.count for s in group)
    if total <= 0:
        return None
    mean = sum(s.count * s.mean for s in group) / total
    second = sum(s.count * (s.std ** 2 + s.mean ** 2) for s in group) / total
    return RenderSeed(mean, math.sqrt(max(second - mean * mean, 0.0)), total)


def class_seeds(history: History, classify: Callable[[tuple[Any, Any, Any]], tuple[Any, ...] | None],
                min_samples: int = 3) -> dict[tuple[Any, ...], RenderSeed]:
    """Seeds per job class of this run from the ledger's history. `classify` names the run's class
    of a ledger key (None: a model this run does not render); keys of one class (a duration left
    to its default and the same written out) are fitted together."""
    merged: dict[tuple[Any, ...], tuple[int, list[tuple[float, float | None]]]] = {}
    for key, (count, rows) in history.items():
        cls = classify(key)
        if cls is None:
            continue
        n, kept = merged.get(cls, (0, []))
        merged[cls] = (n + count, kept + list(rows))
    seeds = {cls: seed_from(count, rows, min_samples) for cls, (count, rows) in merged.items()}
    return {cls: seed for cls, seed in seeds.items() if seed is not None}


@dataclass
class PollPlanner:
    """When to poll a job, learned from the render times this run has observed.

    A render's true length lies between the last poll that saw it running (or its submission)
    and the first that saw it done; a normal is fitted to these intervals per job class
    (model, duration, resolution: a class's first item names its model), together with the
    renders still going, known only to be longer than their last poll (renderfit: without them
    the renders that end first, the short ones, teach it to poll too early). With enough data the
    first poll comes a little before the expected end (mean - lead*std) and later polls follow
    every `step_std * std`, so most jobs are seen once or twice after they finish. Past the
    expected spread, or with no data yet, polls back off geometrically. `seed` starts classes
    from what earlier batches measured.
    """

    initial: float = 5.0  # expected render seconds before anything has been observed
    factor: float = 1.5  # back-off between polls when nothing better is known
    max_interval: float = 60.0
    min_interval: float = 0.005
    lead: float = 0.2  # first poll at mean - lead * std (known renders: 2.15 polls per job, 0.49 std late)
    step_std: float = 0.6  # then every step_std * std ...
    min_step_fraction: float = 0.04  # ... but never more often than this fraction of the mean
    min_samples: int = 3
    _classes: dict[tuple[Any, ...], RenderTimes] = field(default_factory=dict)
    _models: dict[Any, RenderTimes] = field(default_factory=dict)  # every class of a model together
    # A model's own first guess, where it has one (its typical render time): before anything of
    # it is learned it starts from this, not from `initial`.
    guesses: dict[Any, float] = field(default_factory=dict)

    def seed(self, seeds: Mapping[tuple[Any, ...], RenderSeed]) -> None:
        """Start from what earlier batches measured: a seeded class answers with its seed, and a
        class of a seeded model with the model's pooled seed, until this run has observed
        `min_samples` renders of it (of the model); from then on the run's own fit, as before."""
        by_model: dict[Any, list[RenderSeed]] = {}
        for job_class, seed in seeds.items():
            self._times(job_class).prime(seed.mean, seed.std, self.min_samples)
            by_model.setdefault(_model_of(job_class), []).append(seed)
        for model, group in by_model.items():
            pool = pooled(group)
            if pool is not None:
                self._model_times(model).prime(pool.mean, pool.std, self.min_samples)

    def observe(self, job_class: tuple[Any, ...], lower: float, upper: float) -> None:
        """A render of `job_class` finished between `lower` and `upper` seconds after submission."""
        lower, upper = max(0.0, lower), max(0.0, upper)
        self._times(job_class).add(lower, upper, self.min_samples)
        self._model_times(_model_of(job_class)).add(lower, upper, self.min_samples)

    def _times(self, job_class: tuple[Any, ...]) -> RenderTimes:
        return self._classes.setdefault(job_class, RenderTimes())

    def _model_times(self, model: Any) -> RenderTimes:
        return self._models.setdefault(model, RenderTimes())

    def expected(self, job_class: tuple[Any, ...]) -> tuple[float, float] | None:
        """(mean, std) of render seconds for a class, falling back to the other classes of its
        model (never another model's); None without data."""
        observed = self._classes.get(job_class)
        fit = observed.fit if observed is not None else None
        if fit is None:
            pool = self._models.get(_model_of(job_class))
            fit = pool.fit if pool is not None else None
        if fit is None:
            return None
        mean, std = fit
        return mean, max(std, 0.02 * mean)

    def guess(self, job_class: tuple[Any, ...]) -> float:
        """The render seconds assumed for a class before any is learned (its model's own guess)."""
        return self.guesses.get(_model_of(job_class), self.initial)

    def next_poll(self, job_class: tuple[Any, ...], elapsed: float, polls: int, density: float = 1.0) -> float:
        """Seconds after submission at which to poll next, given `polls` so far at `elapsed`.

        Each call also tells the planner that a job of the class is running at `elapsed`, as
        `polls` polls have seen it (0: just submitted): the fit counts it as a render at least that
        long until it is observed. `density` > 1 polls more often (the request rate has room to
        spare: spend it on a shorter detection delay); < 1 less often (the rate is the bottleneck)."""
        self._times(job_class).running.seen(polls, elapsed)
        self._model_times(_model_of(job_class)).running.seen(polls, elapsed)
        expected = self.expected(job_class)
        if expected is None:
            # Nothing learned yet: a first poll a little before the expected render time, then
            # steps of a quarter of it, growing by `factor`.
            initial = self.guess(job_class)
            if polls == 0:
                return max(self.min_interval, 0.8 * initial)
            step = 0.25 * initial * (self.factor ** (polls - 1))
            return elapsed + min(self.max_interval, max(self.min_interval, step))
        mean, std = expected
        first = max(self.min_interval, mean - self.lead * density * std)
        step = self.step(mean, std, density)
        if elapsed < first:
            # A job already polled before the fit moved its first poll later waits a step at
            # least: not a second poll a moment after the first.
            return first if polls == 0 else max(first, elapsed + step)
        late = mean + 3 * std
        if elapsed < late:
            return elapsed + step
        # Slower than anything seen: back off, but keep within max_interval.
        over = elapsed - late
        return elapsed + min(self.max_interval, max(step, over * (self.factor - 1)))


    def step(self, mean: float, std: float, density: float = 1.0) -> float:
        """Seconds between two polls of a job of a class fitted as (mean, std)."""
        return max(self.step_std * std / density, self.min_step_fraction * mean / density, self.min_interval)

    def safety_poll(self, job_class: tuple[Any, ...], elapsed: float, lost: float, density: float = 1.0) -> float:
        """Seconds after submission of the next safety poll of a job a webhook should announce
        (`safetynet`), `lost` the share of webhooks that do not come: from the class's fit, or with
        nothing learned yet from its model's guessed render time; never denser than polling."""
        expected = self.expected(job_class)
        guess = self.guess(job_class)
        mean, std = expected if expected is not None else (guess, GUESS_SPREAD * guess)
        return next_safety_poll(elapsed, mean, std, lost, self.step(mean, std, density), factor=self.factor,
                                max_interval=self.max_interval, guessed=expected is None)


def _model_of(job_class: tuple[Any, ...]) -> Any:
    return job_class[0] if job_class else None


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
