"""Pure policies: retry back-off, poll planning, budget, request rate (injected clocks, no I/O)."""
from __future__ import annotations

import itertools
import math
import random

import anyio
import pytest

from batcher.policy import (
    Budget,
    PollPlanner,
    RatePolicy,
    RenderSeed,
    RetryPolicy,
    class_seeds,
    fit_censored_normal,
    pooled,
    remembered_intervals,
    seed_from,
)
from batcher.run import RequestPacer


def test_full_jitter_backoff_is_bounded_and_honours_retry_after():
    policy = RetryPolicy(base=1, cap=8, max_attempts=5, max_total=100)
    rng = random.Random(0)
    for attempt in range(1, 10):
        d = policy.delay(attempt, rng)
        assert 0 <= d <= min(8, 2 ** (attempt - 1))
    assert policy.delay(1, rng, retry_after=30) == 30
    assert not policy.gives_up(4, 10) and policy.gives_up(5, 10) and policy.gives_up(1, 100)


def test_censored_fit_recovers_the_render_distribution():
    rng = random.Random(3)
    intervals = []
    for _ in range(400):
        r = rng.gauss(10, 2)
        if r <= 9.6:
            intervals.append((0.0, 9.6))
        else:
            k = math.ceil((r - 9.6) / 1.2)
            intervals.append((9.6 + (k - 1) * 1.2, 9.6 + k * 1.2))
    mean, std = fit_censored_normal(intervals)
    assert abs(mean - 10) < 0.4 and abs(std - 2) < 0.4
    # the naive midpoint mean is far off: why the fit exists
    naive = sum((a + b) / 2 for a, b in intervals) / len(intervals)
    assert abs(naive - 10) > abs(mean - 10)


def simulate_polls(planner: PollPlanner, renders: list[float]) -> tuple[float, float]:
    polls = delay = 0.0
    for r in renders:
        t, n, lower = 0.0, 0, 0.0
        while True:
            t = planner.next_poll(("5", "720p"), t, n)
            n += 1
            if t >= r:
                planner.observe(("5", "720p"), lower, t)
                break
            lower = t
        polls += n
        delay += t - r
    return polls / len(renders), delay / len(renders)


def test_planner_learns_to_poll_about_twice_per_job():
    rng = random.Random(1)
    renders = [max(0.1, rng.gauss(60, 12)) for _ in range(600)]
    planner = PollPlanner(initial=60)
    simulate_polls(planner, renders[:100])  # learning
    polls, delay = simulate_polls(planner, renders[100:])
    assert polls <= 2.5 and delay / 60 < 0.12, (polls, delay)
    mean, std = planner.expected(("5", "720p"))
    assert abs(mean - 60) < 4 and abs(std - 12) < 4


def test_planner_backs_off_without_data_and_past_the_spread():
    planner = PollPlanner(initial=10, factor=2, max_interval=30)
    times = [0.0]
    for n in range(6):
        times.append(planner.next_poll(("x",), times[-1], n))
    gaps = [b - a for a, b in itertools.pairwise(times[1:])]
    assert times[1] == 10 and gaps == sorted(gaps) and max(gaps) <= 30
    for _ in range(20):
        planner.observe(("x",), 9, 11)
    late = planner.next_poll(("x",), 500, 3)
    assert 500 < late <= 530


def test_budget_reserve_settle_refund():
    b = Budget(limit=100, committed=30)
    assert b.reserve(50) and not b.reserve(30) and b.reservations == 1
    b.settle(50, 45)
    assert b.committed == 75 and b.reserved == 0 and b.remaining == 25
    b.refund(45)
    assert b.committed == 30 and b.fits(70) and not b.fits(71)
    assert Budget(limit=None).reserve(10 ** 9)  # amounts are exact: Decimal or int, never a float


def test_rate_policy_spaces_requests_under_the_limit():
    policy = RatePolicy(rpm=60, margin=1.0)
    sends = [policy.take(0.0) for _ in range(5)]
    assert sends == [0.0, 1.0, 2.0, 3.0, 4.0]
    # any 60-second window holds at most rpm requests
    policy = RatePolicy(rpm=120)
    times = [policy.take(t * 0.01) for t in range(500)]
    assert all(sum(1 for x in times if w <= x < w + 60) <= 120 for w in times)


def test_rate_policy_slows_on_429_and_recovers():
    policy = RatePolicy(rpm=100, margin=1.0, backoff=0.5, growth=2.0, recover_after=3)
    policy.on_rate_limited(now=10.0, retry_after=5.0)
    assert policy.rate == 50 and policy.take(10.0) == 15.0
    for _ in range(3):
        policy.on_answer()
    assert policy.rate == 100


def test_pacer_serves_polls_before_submissions():
    order = []

    async def main():
        pacer = RequestPacer(RatePolicy(rpm=600, margin=1.0))  # one request every 0.1 s
        async with anyio.create_task_group() as tg:
            tg.start_soon(pacer.run)

            async def req(kind, i):
                await pacer.before(kind)
                order.append((kind, i))
            for i in range(3):
                tg.start_soon(req, "submit", i)
            await anyio.sleep(0.01)
            for i in range(3):
                tg.start_soon(req, "poll", i)
            await anyio.sleep(0.75)
            tg.cancel_scope.cancel()
    anyio.run(main)
    assert [k for k, _ in order[:4]] == ["submit", "poll", "poll", "poll"]


def test_density_trades_polls_for_detection_delay():
    rng = random.Random(5)
    renders = [max(0.1, rng.gauss(60, 12)) for _ in range(400)]

    def run(density):
        planner = PollPlanner(initial=60)
        simulate_polls(planner, renders[:100])
        polls = delay = 0.0
        for r in renders[100:]:
            t, n = 0.0, 0
            while t < r:
                t = planner.next_poll(("5", "720p"), t, n, density)
                n += 1
            polls += n
            delay += t - r
        return polls / 300, delay / 300
    sparse, normal, dense = run(0.7), run(1.0), run(2.0)
    assert sparse[0] < normal[0] < dense[0]
    assert sparse[1] > normal[1] > dense[1]


def test_pacer_density_follows_use_of_the_rate():
    pacer = RequestPacer(RatePolicy(rpm=600))
    assert pacer.density() == 2.0  # idle: spend the spare rate on polls
    pacer._granted.extend([0.0] * 95)  # ~570/min of a 582/min rate in the last 10 s
    assert pacer.density() == 1.0


# --- render times remembered from earlier batches (the seeding rule) ------------------------------

def polled_history(renders: list[float], first: float, step: float) -> list[tuple[float, float]]:
    """What the ledger keeps of renders polled at `first`, then every `step`: (midpoint, upper)."""
    rows = []
    for r in renders:
        lower, t = 0.0, first
        while t < r:
            lower, t = t, t + step
        rows.append(((lower + t) / 2, t + 0.01))  # finished_at is stamped a little after the poll
    return rows


def test_remembered_renders_become_the_intervals_they_were_seen_in():
    assert remembered_intervals([(5.0, 10.0), (9.0, 10.0), (3.0, None), (4.0, 3.0)]) == [
        (0.0, 10.0), (8.0, 10.0), (3.0, 3.0), (4.0, 4.0)]
    assert remembered_intervals([(-1.0, 2.0), (float("nan"), 2.0)]) == []


def test_a_seed_is_the_censored_fit_of_remembered_renders_not_their_average():
    rng = random.Random(7)
    renders = [max(0.1, rng.gauss(60, 6)) for _ in range(200)]
    rows = polled_history(renders, first=58.8, step=3.6)  # as a planner that knew 60 +- 6 polls
    seed = seed_from(1234, rows)
    assert seed is not None and seed.count == 1234
    assert abs(seed.mean - 60) < 2 and abs(seed.std - 6) < 2
    # the midpoints the ledger keeps (what a batch's average render time averages) are far lower
    assert sum(m for m, _ in rows) / len(rows) < 52
    assert seed_from(2, rows[:2]) is None  # fewer renders than a run would trust


def test_pooled_seed_is_the_count_weighted_mixture():
    pool = pooled([RenderSeed(10, 1, 3), RenderSeed(20, 1, 1)])
    assert pool is not None and pool.count == 4
    assert math.isclose(pool.mean, 12.5) and math.isclose(pool.std, math.sqrt(1 + 18.75))
    assert pooled([]) is None


def test_class_seeds_merge_ledger_keys_of_one_class_and_skip_unknown_models():
    rows = [(10.0, 10.5)] * 2
    history = {("m", 5, "720p"): (2, rows), ("m", None, "720p"): (2, rows), ("m", 8, "720p"): (2, rows),
               ("gone", 5, "720p"): (9, rows * 5)}
    classify = {("m", 5, "720p"): ("m", 5, "720p"), ("m", None, "720p"): ("m", 5, "720p"),
                ("m", 8, "720p"): ("m", 8, "720p")}.get
    seeds = class_seeds(history, classify, min_samples=3)
    assert set(seeds) == {("m", 5, "720p")}  # 2 + 2 renders of one class; 8 s has only 2; "gone" skipped
    assert seeds[("m", 5, "720p")].count == 4


def test_a_seeded_planner_polls_from_the_seed_until_the_run_has_its_own_fit():
    planner = PollPlanner(initial=600)  # a wrong guess
    x5, x8, y5 = ("x", 5, "720p"), ("x", 8, "720p"), ("y", 5, "720p")
    planner.seed({x5: RenderSeed(60, 6, 100)})
    assert planner.expected(x5) == (60, 6)
    assert 58 < planner.next_poll(x5, 0, 0) < 60  # mean - 0.2 sd, not 0.8 * 600
    assert planner.expected(x8) == (60, 6)  # another class of the model: the model's pooled seed
    assert planner.expected(y5) is None and planner.next_poll(y5, 0, 0) == 600  # never another model's
    planner.observe(x5, 99, 101)
    planner.observe(x5, 99, 101)
    assert planner.expected(x5) == (60, 6)  # two renders of its own: not yet trusted
    planner.observe(x5, 99, 101)
    mean, _ = planner.expected(x5)
    assert abs(mean - 100) < 1  # the run's own renders take over, as without a seed


def test_in_run_renders_of_one_model_do_not_answer_for_another():
    planner = PollPlanner(initial=10)
    for _ in range(5):
        planner.observe(("x", 5, "720p"), 29, 31)
    assert abs(planner.expected(("x", 8, "1080p"))[0] - 30) < 1  # same model, other class: pooled
    assert planner.expected(("y", 5, "720p")) is None
    assert planner.next_poll(("y", 5, "720p"), 0, 0) == 10


def test_a_model_never_measured_starts_from_its_own_guess_not_the_runs():
    planner = PollPlanner(initial=60.0, guesses={"fast-model": 10.0})
    assert planner.next_poll(("fast-model", 5, "720p"), 0.0, 0) == pytest.approx(10.0)
    assert planner.next_poll(("other-model", 5, "720p"), 0.0, 0) == pytest.approx(60.0)
    assert planner.next_poll(("fast-model", 5, "720p"), 10.0, 1) == pytest.approx(20.0)  # then waits that double
