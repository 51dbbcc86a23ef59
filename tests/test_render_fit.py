"""Render times learned from polls (batcher.renderfit) and the poll planner that uses them on a
batch run with many jobs in flight: renders still going count, so the first renders to end (the
short ones) do not make the planner poll too early."""
from __future__ import annotations

import heapq
import math
import random
import statistics

import pytest

from batcher.policy import MAX_RUNNING, InFlight, PollPlanner, RenderTimes, fit_censored_normal

CLS = ("m", 5, "720p")
ROUND_TRIP = 0.001  # a poll's, in run_batch: the clock moves on while it is answered


def first_wave(n: int, seen_at: float, mean: float, sd: float, seed: int = 2) -> list[tuple[float, float]]:
    """`n` renders started together and polled once, at `seen_at`: the ended ones as (0, seen_at],
    the others as still going."""
    rng = random.Random(seed)
    renders = [rng.gauss(mean, sd) for _ in range(n)]
    return [(0.0, seen_at) if r <= seen_at else (seen_at, math.inf) for r in renders]


def test_renders_still_going_keep_the_fit_from_learning_only_the_short_ones():
    rng = random.Random(4)
    data = []
    for _ in range(200):  # polled at 9, 10, 11: ended in an interval, or still going at 11
        r = rng.gauss(10, 2)
        upper = next((t for t in (9.0, 10.0, 11.0) if r <= t), math.inf)
        data.append((0.0 if upper == 9.0 else upper - 1.0 if upper != math.inf else 11.0, upper))
    mean, std = fit_censored_normal(data, 200)
    assert abs(mean - 10) < 0.4 and abs(std - 2) < 0.4
    ended_only = fit_censored_normal([d for d in data if d[1] != math.inf], 200)
    assert ended_only[0] < mean - 0.4  # what the planner learned before: too short


def test_the_assumed_spread_pins_down_a_fit_the_data_cannot_and_never_moves_the_mean():
    data = first_wave(40, 6.4, 8.0, 1.6)  # one poll each: any spread fits the share ended by then
    mean, std = fit_censored_normal(data, 300, spread=(0.25, 2.0))
    assert 7.0 < mean < 9.5 and 1.0 < std < 3.0
    rng = random.Random(5)
    rich = [(x - 0.5, x + 0.5) for x in (rng.gauss(30, 3) for _ in range(300))]
    free, assumed = fit_censored_normal(rich, 100), fit_censored_normal(rich, 100, spread=(0.5, 2.0))
    assert assumed[0] == pytest.approx(free[0], abs=1e-3)  # the mean is the data's alone
    assert free[1] < assumed[1] < free[1] * 1.2  # the spread barely, with 300 renders


def test_in_flight_claims_move_up_a_level_and_go_when_their_job_ends():
    running = InFlight()
    for _ in range(3):
        running.seen(0, 0.01)  # three jobs submitted
    running.seen(1, 5.0)  # one seen running by its first poll
    running.seen(1, 5.1)
    running.seen(2, 6.0)  # the first of them again
    assert sorted(running.longer_than(0.0)) == [0.01, 5.1, 6.0]
    running.ended(5.09)  # seen running at 5.09 (claimed a moment later), then ended
    assert sorted(running.longer_than(0.0)) == [0.01, 6.0]
    running.ended(60.0)  # nothing claimed near: nothing goes
    assert sorted(running.longer_than(0.0)) == [0.01, 6.0]
    assert running.longer_than(1.0) == [6.0]


def test_in_flight_claims_are_bounded():
    running = InFlight()
    for i in range(MAX_RUNNING + 50):
        running.seen(0, float(i))
    assert len(running.longer_than(-1.0)) == MAX_RUNNING


def test_a_class_fits_once_enough_renders_ended_counting_those_going():
    times = RenderTimes()
    for _ in range(37):
        times.running.seen(0, 0.0)
        times.running.seen(1, 6.4)
    for _ in range(3):
        times.running.seen(0, 0.0)
        times.add(0.0, 6.4, min_samples=3)
    assert times.fit is not None and times.fit[0] > 7.0  # not the 3.2 of (0, 6.4] alone


def run_batch(planner: PollPlanner, jobs: int, concurrency: int, mean: float, sd: float,
              seed: int = 1) -> tuple[float, float, float]:
    """A batch through the planner as a run polls it: `concurrency` jobs in flight, the next
    submitted as one is seen done. (polls per job, mean detection delay, that of the later waves)."""
    rng = random.Random(seed)
    events: list[tuple[float, int]] = []
    start, end, polls, lower, delay = {}, {}, {}, {}, {}

    def submit(at: float, job: int) -> None:
        start[job], end[job], polls[job], lower[job] = at, at + max(0.0, rng.gauss(mean, sd)), 0, 0.0
        heapq.heappush(events, (at + planner.next_poll(CLS, 0.0, 0), job))
    waiting = list(range(jobs))
    for _ in range(concurrency):
        submit(0.0, waiting.pop(0))
    while events:
        t, job = heapq.heappop(events)
        polls[job] += 1
        if t < end[job]:
            lower[job] = t - start[job]
            due = start[job] + planner.next_poll(CLS, t - start[job] + ROUND_TRIP, polls[job])
            heapq.heappush(events, (max(due, t + ROUND_TRIP), job))
            continue
        planner.observe(CLS, lower[job], t - start[job])
        delay[job] = t - end[job]
        if waiting:
            submit(t, waiting.pop(0))
    return (sum(polls.values()) / jobs, statistics.mean(delay.values()),
            statistics.mean(delay[j] for j in range(concurrency, jobs)))


@pytest.mark.parametrize("mean", [1.0, 8.0])
def test_a_concurrent_batch_is_polled_about_twice_per_job(mean):
    per_job = [run_batch(PollPlanner(initial=mean, max_interval=max(1.0, mean)), 240, 40, mean, 0.2 * mean, seed)
               for seed in range(4)]
    polls = statistics.mean(p for p, _, _ in per_job)
    delay = statistics.mean(d for _, _, d in per_job)
    assert polls < 2.45, polls  # learning from the ended renders alone: 2.75 at 8 s
    assert delay < 0.12 * mean, delay


def test_a_job_polled_before_the_fit_moved_its_first_poll_waits_a_step():
    planner = PollPlanner(initial=10)
    for _ in range(20):
        planner.observe(CLS, 9.5, 10.5)
    mean, std = planner.expected(CLS)
    first = mean - planner.lead * std
    assert planner.next_poll(CLS, 0.0, 0) == pytest.approx(first)
    step = max(planner.step_std * std, planner.min_step_fraction * mean)
    # polled once at first - 0.05 under an earlier fit: the next comes a step later, not at `first`
    assert planner.next_poll(CLS, first - 0.05, 1) == pytest.approx(first - 0.05 + step)
    assert planner.next_poll(CLS, first - 5 * step, 1) == pytest.approx(first)
