"""Hostile cases for the poll planner's render-time fit (renderfit, policy.PollPlanner): a render
that never ends, a clock that leaps forward, a job polled without end."""
from __future__ import annotations

import heapq
import random

from batcher.policy import InFlight, PollPlanner

CLS = ("m", 5, "720p")


def _run(planner: PollPlanner, jobs: int, stuck: int | None = None) -> float:
    """`jobs` renders of N(8, 1.6) s, 40 at a time, polled as the planner says; render number
    `stuck` never ends. Returns when the last render was seen done."""
    rng = random.Random(3)
    due: list[tuple[float, int, float, float, int, float]] = []
    started = done = 0
    now = 0.0

    def submit(at: float) -> None:
        nonlocal started
        render = float("inf") if started == stuck else max(0.1, rng.gauss(8.0, 1.6))
        started += 1
        heapq.heappush(due, (at + planner.next_poll(CLS, 0.0, 0), started, at, render, 0, 0.0))

    for _ in range(40):
        submit(0.0)
    while due and done < jobs:
        now, n, start, render, polls, lower = heapq.heappop(due)
        elapsed = now - start
        polls += 1
        if elapsed >= render:
            planner.observe(CLS, lower, elapsed)
            done += 1
            submit(now)
            continue
        heapq.heappush(due, (start + planner.next_poll(CLS, elapsed, polls), n, start, render, polls, elapsed))
    return now


def test_a_render_that_never_ends_does_not_drag_the_fit_of_every_other_job():
    planner = PollPlanner()
    _run(planner, 3000, stuck=5)  # polled for the whole run, by then ~100 times its class's mean
    expected = planner.expected(CLS)
    assert expected is not None
    mean, std = expected
    # Counted as a render "at least this long", it made the fit 17.7 +/- 85 s: polls 30 s apart.
    assert abs(mean - 8.0) < 0.5 and std < 2.5


def test_a_job_polled_without_end_adds_no_level_per_poll():
    running = InFlight()
    for polls in range(20_000):  # a render polled a minute apart for two weeks
        running.seen(polls, 60.0 * polls)
    assert len(running.levels) <= 64
    assert running.longer_than(0.0) == [60.0 * 19_999]  # still one claim: the job's latest
