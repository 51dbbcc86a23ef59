"""Render times remembered across batches: the ledger's history per (model, duration, resolution),
on SQLite and PostgreSQL, and a run whose first polls come from an earlier batch's measurement."""
from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from sqlalchemy import text

from batcher import api
from batcher.ledger import Ledger
from batcher.models import HAPPYHORSE_11_R2V, HAPPYHORSE_R2V
from batcher.plan import JobSpec
from batcher.policy import RetryPolicy
from batcher.run import RunOptions
from batcher.run.runner import Runner
from batcher.simulator import SimConfig, Simulator

X, Y = HAPPYHORSE_R2V.api_id, HAPPYHORSE_11_R2V.api_id


def spec(batch: str, i: int, model: str, duration: int | None, resolution: str) -> JobSpec:
    params = {"prompt": f"shot {i}", "resolution": resolution}
    if duration is not None:
        params["duration"] = duration
    return JobSpec(f"{batch}-{i:05d}", batch, i, 0, "r", "l", params, 1.0, False, model)


def finish(led: Ledger, batch: str, state: str, first: int, count: int, mid: float, upper: float) -> None:
    """Mark jobs `first`.. of a batch as ended in `state`, rendered in (2*mid - upper, upper]."""
    with led.engine.begin() as conn:
        conn.execute(text(
            "UPDATE job SET state = :st, render_seconds = :m, submitted_at = 1000 + seq, "
            "finished_at = 1000 + seq + :u WHERE batch = :b AND seq >= :f AND seq < :l"),
            {"st": state, "m": mid, "u": upper, "b": batch, "f": first, "l": first + count})


def test_history_groups_rendered_jobs_of_every_batch_per_model_duration_and_resolution(ledger_url):
    with Ledger(ledger_url) as led:
        led.write(led.add_jobs("a", X, "a.yaml", [spec("a", i, X, 5, "720p") for i in range(10)]
                               + [spec("a", 10 + i, Y, 5, "720p") for i in range(4)]))
        led.write(led.add_jobs("b", X, "b.yaml", [spec("b", i, X, 8, "1080p") for i in range(3)]
                               + [spec("b", 3 + i, X, None, "720p") for i in range(2)]))
        led.write(led.add_jobs("sim", X, "s.yaml", [spec("sim", i, X, 5, "720p") for i in range(5)], simulated=True))
        finish(led, "a", "completed", 0, 6, 50.0, 60.0)
        finish(led, "a", "rendered", 6, 2, 55.0, 60.0)   # rendered, not yet downloaded: measured all the same
        finish(led, "a", "failed", 8, 2, 9.0, 10.0)      # no render to learn from (its time is not a render's)
        finish(led, "a", "completed", 10, 4, 30.0, 31.0)
        finish(led, "b", "completed", 0, 3, 90.0, 95.0)
        finish(led, "b", "completed", 3, 2, 40.0, 41.0)
        finish(led, "sim", "completed", 0, 5, 0.5, 0.75)

        history = led.render_history(False)
        assert {k: v[0] for k, v in history.items()} == {
            (X, 5, "720p"): 8, (Y, 5, "720p"): 4, (X, 8, "1080p"): 3, (X, None, "720p"): 2}
        assert sorted(history[(X, 5, "720p")][1]) == [(50.0, 60.0)] * 6 + [(55.0, 60.0)] * 2
        assert history[(X, 8, "1080p")][1] == [(90.0, 95.0)] * 3
        assert led.render_history(True) == {(X, 5, "720p"): (5, [(0.5, 0.75)] * 5)}  # simulated ones apart

        # Bounded: at most `per_class` rows per class, the most recently finished first; and only the
        # `horizon` newest rendered jobs are read at all.
        recent = led.render_history(False, per_class=3)
        assert recent[(X, 5, "720p")][0] == 8 and len(recent[(X, 5, "720p")][1]) == 3
        assert recent[(X, 5, "720p")][1] == [(55.0, 60.0), (55.0, 60.0), (50.0, 60.0)]
        newest = led.render_history(False, horizon=5)
        assert {k: v[0] for k, v in newest.items()} == {(X, 8, "1080p"): 3, (X, None, "720p"): 2}


def test_history_of_an_empty_ledger_is_empty(ledger_url):
    with Ledger(ledger_url) as led:
        assert led.render_history(False) == {} and led.render_history(True) == {}


# --- end to end: batch B polls from what batch A measured ------------------------------------------

def manifest(tmp_path: Path, batch: str, models: list[str]) -> Path:
    """One 5 s / 720p job per entry of `models`, rendered with that model."""
    rows = "".join(f"  - prompt: '{batch} shot {i}'\n    references: [https://example.com/hero.png]\n"
                   f"    model: {model}\n" for i, model in enumerate(models))
    path = tmp_path / f"{batch}.yaml"
    path.write_text(f"version: 1\nbatch: {batch}\nmodel: {models[0]}\ndefaults:\n  duration: 5\n"
                    f"  resolution: 720p\nrows:\n{rows}")
    return path


def run_batch(tmp_path: Path, ledger: str, batch: str, models: list[str], expected_render: float) -> Simulator:
    """Run a batch in one wave on a simulator whose renders take 0.3 s (+- 10%)."""
    sim = Simulator(SimConfig(render_seconds=0.3, render_jitter=0.1, seed=3))
    fast = RetryPolicy(base=0.01, cap=0.05, max_attempts=6)
    opts = RunOptions.of(expected_render=expected_render, concurrency=len(models), seed=1, retry=fast,
                         submit_retry=fast, out_dir=tmp_path / "out" / batch)
    report = anyio.run(lambda: api.run_async(manifest(tmp_path, batch, models), ledger=ledger, options=opts,
                                             to=api.target(simulate=sim)))
    assert report.counts["completed"] == len(models)
    return sim


def seen_done_after(ledger: str, batch: str, model: str) -> list[float]:
    """Seconds from each of a model's jobs' submission until the poll that saw it done."""
    with Ledger(ledger) as led, led.engine.connect() as conn:
        return [float(s) for (s,) in conn.execute(text(
            "SELECT finished_at - submitted_at FROM job WHERE batch = :b AND model = :m"), {"b": batch, "m": model})]


@pytest.fixture
def measured(tmp_path: Path, ledger_url: str) -> str:
    """A ledger where batch A rendered six 5 s / 720p clips of X, each taking about 0.3 s."""
    run_batch(tmp_path, ledger_url, "a", [X] * 6, expected_render=0.3)
    return ledger_url


def test_a_new_batch_polls_from_an_earlier_batchs_measurement(tmp_path, measured):
    # B's guess says 3 s: without A's measurement its one wave is first polled at 0.8 * 3 = 2.4 s.
    sim = run_batch(tmp_path, measured, "b", [X] * 6, expected_render=3.0)
    seen = seen_done_after(measured, "b", X)
    assert max(seen) < 1.2, seen
    assert sim.record()["requests"]["job"] <= 6 * 3  # about two polls per job, from the first wave on

    # The opposite mistake: a guess of 0.01 s would poll every job a dozen times before 0.3 s.
    sim = run_batch(tmp_path, measured, "b2", [X] * 6, expected_render=0.01)
    assert sim.record()["requests"]["job"] <= 6 * 3


def test_a_model_never_measured_learns_its_own_times_not_another_models(tmp_path, measured):
    # A batch of X and Y, both rendering in about 0.3 s, guessing 1 s. X's jobs are polled from A's
    # measurement, about once or twice each; nothing of Y was ever measured, so its jobs probe (a ladder
    # of polls from 1/64 of the guess) until one is seen done. Had Y taken X's measurement, its
    # jobs would be polled as few times as X's.
    sim = run_batch(tmp_path, measured, "c", [X, Y] * 3, expected_render=1.0)
    polls = {m: [j["polls"] for j in sim.record()["jobs"] if j["model"] == m] for m in (X, Y)}
    assert sum(polls[X]) / len(polls[X]) <= 2, polls
    assert sum(polls[Y]) >= sum(polls[X]) + 3, polls
    x_seen, y_seen = seen_done_after(measured, "c", X), seen_done_after(measured, "c", Y)
    assert max(x_seen) < 0.7 and max(y_seen) < 0.7, (x_seen, y_seen)  # neither waits for 0.8 x the guess


def test_the_planner_answers_for_measured_classes_before_observing_anything(tmp_path, measured):
    sim = Simulator(SimConfig(render_seconds=0.3))
    to = api.target(simulate=sim)

    async def planner_after_start():
        with Ledger(measured) as led:
            led.write(led.add_jobs("d", X, "d.yaml", [spec("d", 0, X, 5, "720p")], simulated=True))
            from batcher.client import PixelDojoClient
            async with PixelDojoClient(to.api_key, to.base_url, transport=to.transport) as client:
                runner = Runner(led, client, HAPPYHORSE_R2V, "d", RunOptions.of(expected_render=60.0),
                                models={Y: HAPPYHORSE_11_R2V})
                await runner._seed_planner()
                return runner.ctx.planner
    planner = anyio.run(planner_after_start)
    mean, std = planner.expected((X, 5, "720p"))
    assert 0.25 < mean < 0.4 and std < 0.15
    assert planner.expected((X, 8, "1080p")) is not None  # X's other classes: X's pooled figure
    assert planner.expected((Y, 5, "720p")) is None  # Y: the run's guess (60 s), not X's times
    # Render times of simulated batches never seed a real batch.
    with Ledger(measured) as led:
        assert led.render_history(False) == {}
