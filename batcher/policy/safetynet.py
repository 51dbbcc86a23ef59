"""When to poll a job whose end a webhook should announce: the safety net under webhooks.

A webhook saves the polls, but it can be lost or late, so the run still polls, sparsely. Given
the render times learned so far (a normal with `mean` and `std`) and the share of jobs whose
webhook did not come (`lost`), the chance that a job not yet announced at `t` seconds is done and
silent is q(t) = lost F(t) / (1 - (1 - lost) F(t)), F the render times' distribution. Polls follow
an intensity sqrt(q(t)) / step: `step` is the polling mode's own interval, reached only when an
unannounced job is surely done (q = 1, e.g. every webhook lost), and far sparser while webhooks
arrive (the square root is the classic balance of detection delay against requests). Past every
render seen (mean + 3 std) the polls back off as in polling mode. (With nothing learned yet, the
poll planner polls at the guess, then doubles its waits: a job still running there says the guess
was short, not that its webhook was lost.) Pure functions."""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

TAIL_STDS = 3.0  # past mean + 3 std no render was expected: back off
MIN_STD_FRACTION = 0.05  # a fit narrower than this (of the mean) is widened: renders are never exact
FOUND_KEPT = 10_000  # jobs a poll found done first, kept to tell a late webhook from a lost one


@dataclass
class WebhookTally:
    """How webhooks have done in this run: jobs a poke announced, jobs a scheduled poll found
    done first (their webhook lost or late), and of those, the ones whose webhook came after all
    (late, not lost: a busy API, or a poll a moment after the render's end). Starts from a prior
    of one lost in twenty, worth ten jobs: doubtful enough to find a dead webhook path soon, light
    enough to be outweighed by the first wave's pokes."""

    announced: int = 0
    missed: int = 0
    late: int = 0
    prior_missed: float = 0.5
    prior_jobs: float = 10.0
    _found: OrderedDict[str, None] = field(default_factory=OrderedDict)  # jobs polls found first, newest last

    def record(self, announced: bool, key: str | None = None) -> None:
        """A job ended: announced by its poke, or found by a poll first (`key`: its job, whose
        webhook may still come)."""
        if announced:
            self.announced += 1
            return
        self.missed += 1
        if key is not None:
            self._found[key] = None
            if len(self._found) > FOUND_KEPT:
                self._found.popitem(last=False)

    def came(self, key: str) -> bool:
        """A webhook came for `key`: True if a poll had found its job done first (late, not lost)."""
        if key not in self._found:
            return False
        del self._found[key]
        self.late += 1
        return True

    @property
    def silent(self) -> bool:
        """No webhook has come yet, and a poll found a job done first: the webhook path may be
        dead (a listener the API cannot reach); until one comes, jobs are polled, not waited on."""
        return self.announced == 0 and self.late == 0 and self.missed > 0

    @property
    def lost(self) -> float:
        """The share of webhooks that do not arrive, smoothed by the prior (a late one came)."""
        return (self.missed - self.late + self.prior_missed) / (self.announced + self.missed + self.prior_jobs)


def silent_done(t: float, mean: float, std: float, lost: float) -> float:
    """q(t): the chance that a job not announced `t` seconds after submission is done."""
    f = 0.5 * (1.0 + math.erf((t - mean) / (std * math.sqrt(2.0))))
    denominator = 1.0 - (1.0 - lost) * f
    if denominator <= 1e-12:
        return 1.0
    return min(1.0, max(0.0, lost * f / denominator))


def next_safety_poll(elapsed: float, mean: float, std: float, lost: float, step: float, *,
                     factor: float = 1.5, max_interval: float = 60.0) -> float:
    """Seconds after submission of the next safety poll of a job not yet announced, `elapsed`
    seconds after its submission. `step` is the polling mode's interval for this job's class."""
    std = max(std, MIN_STD_FRACTION * mean, 1e-6)
    step = max(step, 1e-6)
    lost = min(1.0, max(lost, 1e-6))
    late = mean + TAIL_STDS * std
    if elapsed >= late:
        return elapsed + min(max_interval, max(step, (elapsed - late) * (factor - 1.0)))
    # Integrate the intensity forward until it adds up to one poll (midpoint rule, steps of a
    # fraction of the polling interval: a few hundred at most).
    dt = min(step, std) / 8.0
    t, total = elapsed, 0.0
    while t < late:
        rate = math.sqrt(silent_done(t + dt / 2.0, mean, std, lost)) / step
        if total + rate * dt >= 1.0:
            return t + (1.0 - total) / rate if rate > 0 else t + dt
        total += rate * dt
        t += dt
    return late
