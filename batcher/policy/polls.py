"""When to poll a job: the poll planner, which learns each job class's render times from the polls
of this run (seeded from earlier batches), and how a class with nothing learned yet learns fast.

A guess of the render time (the model's typical one, --expected-render) is often wrong, in either
direction. Two things keep a wrong guess from costing minutes. While a class has nothing learned,
its first PROBES jobs poll on a ladder (`rung_after`): from a small share of the guess, doubling,
the probes a quarter of a doubling apart, so the class is polled at times never more than 19%
apart, wherever its renders end; its other jobs poll from the guess, doubling the wait. The run's
own fit is trusted from its first render seen to end (a seed from earlier batches, from its
third): the first wave's other jobs are told to plan their polls again as soon as that comes
(`observe` says so), so they need not sit out a guess five times too long. A job found done at
its first poll only says "done within [0, t]": the censored fit of such renders halves the first
poll, again and again, until polls find jobs running.

Pure: no clock and no I/O; times are seconds after a job's submission.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .memory import RenderSeed, pooled
from .renderfit import RenderTimes
from .safetynet import next_safety_poll

PROBES = 4  # jobs of a class with nothing learned that poll on the ladder
LADDER_START = 1 / 32  # the ladder's first rung, as a share of the guess: a guess 30 x too long still finds the end
SAFETY_PAST_GUESS = 1.5  # a safety poll planned from a guess comes this many guesses after the submission
LADDER_STEP = math.pow(2.0, 1.0 / PROBES)  # the probes' rungs together: a quarter doubling apart
REPLAN_SHARE = 0.25  # followers are woken when a class's first poll moves earlier by a quarter step or more


def rung_after(guess: float, probe: int, last: float, min_interval: float = 0.005) -> float:
    """The ladder's next rung for probe number `probe` after `last`: guess x LADDER_START x
    2^(k + probe / PROBES) for the least k that comes after `last` (by `min_interval` at least).
    A probe polls once a doubling (a few times before the guess, when the guess is right)."""
    base = max(guess * LADDER_START, 1e-6) * math.pow(2.0, (probe % PROBES) / PROBES)
    if last < base:
        return max(base, last + min_interval)
    k = math.floor(math.log2(last / base)) + 1
    rung = base * math.pow(2.0, k)
    while rung < last + min_interval:
        rung *= 2.0
    return rung


@dataclass(frozen=True)
class Learned:
    """What a run learned of one job class's render times: the fitted mean and spread, from
    `renders` renders seen to end; the guess it started from, and whether earlier batches'
    measurement (a seed) stood in for the guess."""

    job_class: tuple[Any, ...]
    mean: float
    std: float
    renders: int
    guess: float
    seeded: bool

    @property
    def named(self) -> tuple[Any, Any, Any]:
        """(model, duration, resolution), as models name a class (None where it names none)."""
        model, duration, resolution = (*self.job_class, None, None, None)[:3]
        return model, duration, resolution

    def as_dict(self) -> dict[str, Any]:
        model, duration, resolution = self.named
        return {"model": model, "duration": duration, "resolution": resolution, "mean_seconds": round(self.mean, 3),
                "std_seconds": round(self.std, 3), "renders": self.renders, "guessed_seconds": round(self.guess, 3),
                "seeded_from_earlier_batches": self.seeded}


@dataclass
class PollPlanner:
    """When to poll a job, learned from the render times this run has observed.

    A render's true length lies between the last poll that saw it running (or its submission)
    and the first that saw it done; a normal is fitted to these intervals per job class
    (model, duration, resolution: a class's first item names its model), together with the
    renders still going, known only to be longer than their last poll (renderfit: without them
    the renders that end first, the short ones, teach it to poll too early). With a fit the first
    poll comes a little before the expected end (mean - lead*std) and later polls follow every
    `step_std * std`, so most jobs are seen once or twice after they finish. Past the expected
    spread polls back off geometrically; with nothing learned, a probe climbs its ladder and
    other jobs poll from the guess, backing off. `seed` starts classes from what earlier batches
    measured.
    """

    initial: float = 5.0  # expected render seconds before anything has been observed
    factor: float = 1.5  # back-off between polls when nothing better is known
    max_interval: float = 60.0
    min_interval: float = 0.005
    lead: float = 0.2  # first poll at mean - lead * std (known renders: 2.15 polls per job, 0.49 std late)
    step_std: float = 0.6  # then every step_std * std ...
    min_step_fraction: float = 0.04  # ... but never more often than this fraction of the mean
    min_samples: int = 3  # renders of its own a run needs before its fit replaces a seed
    _classes: dict[tuple[Any, ...], RenderTimes] = field(default_factory=dict)
    _models: dict[Any, RenderTimes] = field(default_factory=dict)  # every class of a model together
    _probes: dict[tuple[Any, ...], int] = field(default_factory=dict)  # probes enlisted per class
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
            by_model.setdefault(model_of(job_class), []).append(seed)
        for model, group in by_model.items():
            pool = pooled(group)
            if pool is not None:
                self._model_times(model).prime(pool.mean, pool.std, self.min_samples)

    def enlist(self, job_class: tuple[Any, ...], most: int = PROBES) -> int | None:
        """The role of a job about to be followed: a probe's number while its class has nothing
        learned and fewer than `most` probes have been enlisted; None: an ordinary job."""
        if self.expected(job_class) is not None:
            return None
        count = self._probes.get(job_class, 0)
        if count >= min(most, PROBES):
            return None
        self._probes[job_class] = count + 1
        return count

    def observe(self, job_class: tuple[Any, ...], lower: float, upper: float) -> bool:
        """A render of `job_class` finished between `lower` and `upper` seconds after submission.
        True when this is the class's first fit, or its first poll moved earlier by a quarter step
        or more: the jobs of its model waiting for a poll should plan it again."""
        lower, upper = max(0.0, lower), max(0.0, upper)
        if not (math.isfinite(lower) and math.isfinite(upper)) or upper < self.min_interval:
            return False  # no render's time (a clock stepped back, a hostile answer): nothing learned
        learning, guessing = self.expected(job_class) is None, self.safety_guessed(job_class)
        before = self.due(job_class, 0.0, 0)
        self._times(job_class).add(lower, upper, self.min_samples)
        self._model_times(model_of(job_class)).add(lower, upper, self.min_samples)
        expected = self.expected(job_class)
        if expected is None:
            return False
        # The first fit, and the first a safety net trusts: every waiting job's poll, planned
        # from the guess, is worth planning again (once each: not at every render after).
        return learning or (guessing and not self.safety_guessed(job_class)) or self.due(job_class, 0.0, 0) < (
            before - max(self.min_interval, REPLAN_SHARE * self.step(*expected)))

    def _answering(self, job_class: tuple[Any, ...]) -> RenderTimes | None:
        """The times that answer for a class: its own once fitted, else its model's pooled."""
        for times in (self._classes.get(job_class), self._models.get(model_of(job_class))):
            if times is not None and times.fit is not None:
                return times
        return None

    def _seen(self, job_class: tuple[Any, ...]) -> int:
        """Renders seen to end behind the class's fit, a seed counting as `min_samples`."""
        times = self._answering(job_class)
        if times is None:
            return 0
        return max(times.ended, self.min_samples if times.primed else 0)

    def _times(self, job_class: tuple[Any, ...]) -> RenderTimes:
        return self._classes.setdefault(job_class, RenderTimes())

    def _model_times(self, model: Any) -> RenderTimes:
        return self._models.setdefault(model, RenderTimes())

    def expected(self, job_class: tuple[Any, ...]) -> tuple[float, float] | None:
        """(mean, std) of render seconds for a class, falling back to the other classes of its
        model (never another model's); None without data."""
        times = self._answering(job_class)
        if times is None or times.fit is None:
            return None
        mean, std = times.fit
        return mean, max(std, 0.02 * mean)

    def learned(self) -> list[Learned]:
        """The render times this run learned, per class with renders of its own seen to end."""
        # (a seed still standing in for a class's own fit is no learning of this run's)
        return [Learned(cls, times.fit[0], times.fit[1], times.ended, self.guess(cls), times.primed)
                for cls, times in self._classes.items()
                if times.fit is not None and times.ended and not (times.primed and times.ended < self.min_samples)]

    def guess(self, job_class: tuple[Any, ...]) -> float:
        """The render seconds assumed for a class before any is learned (its model's own guess)."""
        return self.guesses.get(model_of(job_class), self.initial)

    def next_poll(self, job_class: tuple[Any, ...], elapsed: float, polls: int, density: float = 1.0,
                  probe: int | None = None) -> float:
        """Seconds after submission at which to poll next, given `polls` so far at `elapsed`.

        Each call also tells the planner that a job of the class is running at `elapsed`, as
        `polls` polls have seen it (0: just submitted): the fit counts it as a render at least that
        long until it is observed. `density` > 1 polls more often (the request rate has room to
        spare: spend it on a shorter detection delay); < 1 less often (the rate is the bottleneck).
        `probe`: the job's number on the ladder (`enlist`)."""
        self._times(job_class).running.seen(polls, elapsed)
        self._model_times(model_of(job_class)).running.seen(polls, elapsed)
        return self.due(job_class, elapsed, polls, density, probe)

    def due(self, job_class: tuple[Any, ...], last: float, polls: int, density: float = 1.0,
            probe: int | None = None) -> float:
        """Seconds after submission of the next poll of a job `polls` polls have seen running, the
        last at `last` (0: none yet), by what is known now. Asking again after `observe` said the
        plan moved gives a waiting job its new time (it may have passed: poll at once)."""
        expected = self.expected(job_class)
        if expected is None:
            guess = self.guess(job_class)
            if probe is not None:
                return min(rung_after(guess, probe, last, self.min_interval), last + self.max_interval)
            # Nothing learned yet: a first poll at the guessed render time (the probes come
            # earlier), then waits that double (the probes find the end; its first fit wakes this job).
            if polls == 0:
                return max(self.min_interval, guess)
            step = max(0.25 * guess * (self.factor ** (polls - 1)), last)
            return last + min(self.max_interval, max(self.min_interval, step))
        mean, std = expected
        if self._seen(job_class) < self.min_samples:
            # A fit of one or two renders may be one hostile answer's: polls no denser than the
            # ladder's until it has more (a first poll from its first rung, then 19% apart).
            floor = max(LADDER_START * self.guess(job_class), last * LADDER_STEP)
            return max(self._due_fitted(mean, std, last, polls, density), floor, last + self.min_interval)
        return self._due_fitted(mean, std, last, polls, density)

    def _due_fitted(self, mean: float, std: float, last: float, polls: int, density: float) -> float:
        """`due` for a class fitted as (mean, std)."""
        first = max(self.min_interval, mean - self.lead * density * std)
        step = self.step(mean, std, density)
        if last < first:
            # A job already polled before the fit moved its first poll later waits a step at
            # least: not a second poll a moment after the first.
            return first if polls == 0 else max(first, last + step)
        late = mean + 3 * std
        if last < late:
            return last + step
        # Slower than anything seen: back off, but keep within max_interval.
        over = last - late
        return last + min(self.max_interval, max(step, over * (self.factor - 1)))

    def step(self, mean: float, std: float, density: float = 1.0) -> float:
        """Seconds between two polls of a job of a class fitted as (mean, std)."""
        return max(self.step_std * std / density, self.min_step_fraction * mean / density, self.min_interval)

    def surely_ended(self, job_class: tuple[Any, ...]) -> float | None:
        """Seconds after submission by which a render of the class has ended, by what is known
        (mean + 3 std; None: nothing is)."""
        expected = self.expected(job_class)
        return None if expected is None else expected[0] + 3 * expected[1]

    def safety_guessed(self, job_class: tuple[Any, ...]) -> bool:
        """Whether a safety poll of the class is planned from the guess (nothing trusted yet)."""
        return self._seen(job_class) < self.min_samples

    def safety_poll(self, job_class: tuple[Any, ...], elapsed: float, lost: float, density: float = 1.0) -> float:
        """Seconds after submission of the next safety poll of a job a webhook should announce
        (`safetynet`), `lost` the share of webhooks that do not come, from the class's fit; with
        nothing trusted yet, at 1.5 x the guessed render time (past most renders, were it right,
        and their webhooks), then waits that double from the submission on: never denser than
        polling mode's schedule from the guess."""
        if self.safety_guessed(job_class):
            first = SAFETY_PAST_GUESS * self.guess(job_class)
            return first if elapsed < first else elapsed + min(self.max_interval, max(self.min_interval, elapsed))
        expected = self.expected(job_class)
        assert expected is not None  # (trusted: a fit of its own or its model's)
        mean, std = expected
        return next_safety_poll(elapsed, mean, std, lost, self.step(mean, std, density), factor=self.factor,
                                max_interval=self.max_interval)


def model_of(job_class: tuple[Any, ...]) -> Any:
    """The model a job class names (its first item)."""
    return job_class[0] if job_class else None
