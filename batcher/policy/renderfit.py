"""Render times learned from polls: a normal fitted to the renders seen to end (each known only
to lie between two polls) and to the renders still going (known only to be longer so far).

Pure: no clock and no I/O; the poll planner (policy.PollPlanner) feeds it and asks it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

_SQRT2 = math.sqrt(2.0)
_SQRT2PI = math.sqrt(2.0 * math.pi)
SPREAD_WEIGHT = 2.0  # the spread assumed before it is learned counts as this many renders
GUESS_SPREAD = 0.25  # that spread, as a fraction of the mean (an earlier batch's, when there is one)
CLAIM_REACH = 4.0  # renders going longer than the fit's mean + this many std do not count
MAX_LEVELS = 64  # levels of polls kept apart (a job polled more often shares the top one)
MAX_RUNNING = 2000  # renders in flight remembered per class (beyond: the stale ones of jobs left behind)


def _start(intervals: list[tuple[float, float]]) -> tuple[float, float]:
    mids = [(a + b) / 2 if math.isfinite(b) else a for a, b in intervals]
    mu = sum(mids) / len(mids)
    var = sum((m - mu) ** 2 for m in mids) / max(1, len(mids) - 1)
    return mu, max(math.sqrt(var), 1e-3 * max(mu, 1e-3))


def _moments(intervals: list[tuple[float, float]], mu: float, sigma: float) -> tuple[float, float]:
    """Sums over the samples of E[T] and E[T^2] given each one's interval (the E step): the
    normal's density and distribution at both ends, written out (it runs for every sample at
    every refit); a lower end of 0 is minus infinity, an upper end of infinity a render going."""
    s1 = s2 = 0.0
    exp, erf = math.exp, math.erf
    for a, b in intervals:
        if a > 0:
            alpha = (a - mu) / sigma
            p_a, c_a = exp(-0.5 * alpha * alpha) / _SQRT2PI, 0.5 * (1.0 + erf(alpha / _SQRT2))
            a_term = alpha * p_a
        else:
            p_a = c_a = a_term = 0.0
        if b != math.inf:
            beta = (b - mu) / sigma
            p_b, c_b = exp(-0.5 * beta * beta) / _SQRT2PI, 0.5 * (1.0 + erf(beta / _SQRT2))
            b_term = beta * p_b
        else:
            p_b, c_b, b_term = 0.0, 1.0, 0.0
        mass = c_b - c_a
        if mass < 1e-9:
            x = (a + b) / 2 if b != math.inf else a
            s1 += x
            s2 += x * x
            continue
        ez = (p_a - p_b) / mass
        ez2 = 1.0 + (a_term - b_term) / mass
        s1 += mu + sigma * ez
        s2 += mu * mu + 2 * mu * sigma * ez + sigma * sigma * ez2
    return s1, s2


def fit_censored_normal(intervals: list[tuple[float, float]], iterations: int = 4,
                        start: tuple[float, float] | None = None,
                        spread: tuple[float, float] | None = None) -> tuple[float, float]:
    """Mean and standard deviation of a normal from interval-censored samples (EM).

    Each render is only known to have ended between two polls (or before the first): the
    midpoint of (0, first poll] is badly biased, so the moments are fitted properly. An upper end
    of infinity is a render still going at its lower end (right-censored). With few renders
    ended and many going the data do not pin the spread down (a first wave polled once: the share
    ended by then fits any spread): `spread` (a fraction of the mean, a weight) adds that many
    renders' worth of that spread around the fitted mean, never moving the mean itself. At most
    `iterations` steps, fewer once the fit stops moving.
    """
    mu, sigma = start if start is not None else _start(intervals)
    cv, w = spread if spread is not None else (0.0, 0.0)
    n = len(intervals)
    for _ in range(iterations):
        s1, s2 = _moments(intervals, mu, sigma)
        new_mu = s1 / n
        var = (max(s2 - n * new_mu * new_mu, 0.0) + w * (cv * new_mu) ** 2) / (n + w)
        new_sigma = max(math.sqrt(var), 1e-3 * max(new_mu, 1e-3))
        moved = max(abs(new_mu - mu), abs(new_sigma - sigma))
        mu, sigma = new_mu, new_sigma
        if moved < 1e-4 * sigma:
            break
    return mu, sigma


@dataclass
class InFlight:
    """Renders still going, each as the elapsed time its job was last seen running, by the number
    of polls that had seen it running (0: submitted, not yet polled).

    Jobs are not named here (the planner is asked by class, not by job), but jobs seen running by
    as many polls were polled at about the same time after their submission: moving the oldest of
    a level up one level is close enough. A job that ends removes the claim nearest to the time
    it was last seen running."""

    levels: list[deque[float]] = field(default_factory=list)

    def seen(self, polls: int, elapsed: float) -> None:
        # Past the top level a job moves within it: a render polled for days adds no level a poll.
        level = min(polls, MAX_LEVELS - 1)
        while len(self.levels) <= level:
            self.levels.append(deque())
        if polls > 0 and self.levels[min(polls - 1, level)]:
            self.levels[min(polls - 1, level)].popleft()
        self.levels[level].append(elapsed)
        if sum(map(len, self.levels)) > MAX_RUNNING:
            next(level for level in self.levels if level).popleft()

    def ended(self, lower: float) -> None:
        """A job last seen running at `lower` ended (its claim was made a moment later, once that
        poll was answered): the nearest claim goes, if one is that near."""
        best: tuple[float, deque[float], int] | None = None
        for level in self.levels:
            for i, e in enumerate(level):
                if best is None or abs(e - lower) < best[0]:
                    best = (abs(e - lower), level, i)
        if best is not None and best[0] <= 0.5 + 0.05 * lower:
            del best[1][best[2]]

    def longer_than(self, floor: float, ceiling: float = math.inf) -> list[float]:
        """The claims above `floor` (those below tell a fit nothing) and not above `ceiling`."""
        return [e for level in self.levels for e in level if floor < e <= ceiling]


@dataclass
class RenderTimes:
    """What a run knows of one class's render times: the renders seen to end (the most recent
    400), those still going, and the fit of both, refitted often while learning, then every 50
    renders (warm-started: cheap at any rate). `spread`: the spread assumed, as a fraction of the
    mean, worth SPREAD_WEIGHT renders. The first render seen to end makes the fit (a guess is no
    measurement: one wrong by five times must not outweigh it); a class `primed` from earlier
    batches keeps that measurement until `min_samples` renders of its own."""

    spread: float = GUESS_SPREAD
    primed: bool = False
    intervals: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=400))
    running: InFlight = field(default_factory=InFlight)
    fit: tuple[float, float] | None = None
    since_fit: int = 0
    ended: int = 0  # renders seen to end in all (the intervals keep the most recent)

    def add(self, lower: float, upper: float, min_samples: int) -> None:
        """A render ended between `lower` and `upper` seconds after submission."""
        self.running.ended(lower)
        self.intervals.append((lower, upper))
        self.ended += 1
        self.since_fit += 1
        n = len(self.intervals)
        if n >= (min_samples if self.primed else 1) and (self.fit is None or n < 50 or self.since_fit >= 50):
            self.refit()

    def refit(self) -> None:
        floor = self.fit[0] - 4 * self.fit[1] if self.fit else 0.0
        # A render going far past the fit is an outlier (one that never ends, a job left behind
        # by --job-timeout): counted, one such claim alone would drag the fit of every job of
        # the class as far as it has gone, and make polls sparse for all. Those within reach
        # still correct a fit learned from the short renders that ended first.
        ceiling = self.fit[0] + CLAIM_REACH * self.fit[1] if self.fit else math.inf
        data = list(self.intervals) + [(e, math.inf) for e in self.running.longer_than(floor, ceiling)]
        # EM crawls while few renders have ended and many are going: more steps while learning
        # (few samples, cheap); later a warm start moves little between refits.
        steps = 3 if len(self.intervals) >= 50 else 10 if self.fit else 30
        self.fit = fit_censored_normal(data, steps, self.fit, (self.spread, SPREAD_WEIGHT))
        self.since_fit = 0

    def prime(self, mean: float, std: float, min_samples: int) -> None:
        """Answer with (mean, std) until this run has observed `min_samples` renders (then its own
        fit, assuming their spread until it learns its own)."""
        if mean > 0 and math.isfinite(std / mean):
            self.spread = min(1.0, max(0.01, std / mean))
        if len(self.intervals) < min_samples:
            self.fit = (mean, std)
            self.primed = True
