"""Where a bench run's slot-seconds go: the breakdown over a hand-made simulator record, and the
simulator's record of when a status answer first said a job ended."""
from __future__ import annotations

import json

import pytest

from batcher.bench.breakdown import PARTS, Breakdown, breakdown, clock_offset, describe_side_by_side, idle_slot_seconds
from batcher.simulator import SimConfig, Simulator

# Two slots, five jobs: (submitted, render seconds, first answer saying it ended), process from 0 to 20.
#   A and B are the first wave; C, D and E each follow an end seen 0.5 s before.
JOBS = [(1.0, 3.0, 4.5), (1.5, 4.0, 6.0), (5.0, 5.0, 11.0), (6.5, 2.0, 9.0), (9.5, 8.0, 18.0)]


def record(jobs=JOBS, shift=0.0):
    return {"clock": 30.0 + shift, "jobs": [{"submitted": s + shift, "render_seconds": r,
                                             "seen_done": None if seen is None else seen + shift}
                                            for s, r, seen in jobs]}


def test_every_slot_second_is_placed():
    b = breakdown(record(), concurrency=2, started=0.0, exited=20.0)
    assert (b.jobs, b.first_wave, b.unseen, b.wall, b.slot_seconds) == (5, 2, 0, 20.0, 40.0)
    assert b.rendering == pytest.approx(22.0)
    assert b.detection_first_wave == pytest.approx(1.0)  # A 0.5, B 0.5
    assert b.detection_rest == pytest.approx(2.0)  # C 1.0, D 0.5, E 0.5
    assert b.startup == pytest.approx(2.0)  # both slots idle for the first second
    assert b.ramp == pytest.approx(0.5)  # one slot idle while B is not yet submitted
    assert b.turnaround == pytest.approx(1.5)  # three ends seen, each 0.5 s before the next submission
    assert b.last_wave == pytest.approx(7.0)  # from E's submission one slot idle while C, then E finish
    assert b.shutdown == pytest.approx(4.0)  # both slots idle from E's end seen to exit
    assert b.left_over == pytest.approx(0.0)
    assert sum(b.share(p) for p in PARTS) == pytest.approx(1.0)
    assert b.per_job() == pytest.approx({"detection_first_wave": 0.5, "detection_rest": 2.0 / 3,
                                         "turnaround": 0.5})


def test_a_simulator_clock_apart_from_the_bench_is_shifted_back():
    same = breakdown(record(), 2, 0.0, 20.0)
    shifted = breakdown(record(shift=500.0), 2, 0.0, 20.0, offset=500.0)
    assert shifted == same
    unshifted = breakdown(record(shift=500.0), 2, 0.0, 20.0)
    assert unshifted.startup == pytest.approx(2 * 501.0) and unshifted.left_over < -900  # visibly wrong


def test_clock_offset():
    assert clock_offset(10.5, asked=10.0, answered=11.0) == 0.0  # read within the request: one clock
    assert clock_offset(110.5, asked=10.0, answered=11.0) == pytest.approx(100.0)
    assert clock_offset(5.5, asked=10.0, answered=11.0) == pytest.approx(-5.0)


def test_a_job_never_seen_ended_counts_its_render_and_is_reported():
    jobs = [*JOBS[:4], (9.5, 8.0, None)]  # E's end never seen: busy only while it rendered
    b = breakdown(record(jobs), 2, 0.0, 20.0)
    assert b.unseen == 1 and b.detection_rest == pytest.approx(1.5)
    assert b.last_wave == pytest.approx(6.5)  # one idle slot from 11 (C seen ended) to 17.5 (E's end)
    assert b.shutdown == pytest.approx(2 * 2.5)
    assert sum(getattr(b, p) for p in PARTS) == pytest.approx(b.slot_seconds)


def test_no_jobs_is_all_left_over():
    b = breakdown({"clock": 0.0, "jobs": []}, 4, 0.0, 3.0)
    assert b.left_over == pytest.approx(12.0) and b.rendering == 0.0


@pytest.mark.parametrize("busy, start, end, idle", [
    ([], 0.0, 2.0, 6.0),  # three slots, none busy
    ([(0.0, 1.0)], 0.0, 2.0, 2 * 1 + 3 * 1),
    ([(-5.0, 5.0), (1.0, 3.0)], 0.0, 4.0, 2 * 1 + 1 * 2 + 2 * 1),  # a job from before the window counts
    ([(0.0, 1.0)] * 4, 0.0, 2.0, 0 + 3 * 1),  # over-full is never below zero
    ([(0.0, 1.0)], 2.0, 1.0, 0.0),
])
def test_idle_slot_seconds(busy, start, end, idle):
    assert idle_slot_seconds(busy, 3, start, end) == pytest.approx(idle)


def test_the_json_round_trip_and_the_printed_table():
    b = breakdown(record(), 2, 0.0, 20.0)
    d = json.loads(json.dumps(b.as_dict()))
    assert Breakdown.of(d) == b and d["slot_seconds"] == 40.0
    lines = describe_side_by_side(b, breakdown(record(), 2, 0.0, 40.0))
    assert "batcher" in lines[0] and "oracle" in lines[0]
    turnaround = next(line for line in lines if "turnaround" in line)
    assert "1.5s   3.8%" in turnaround and "1.5s   1.9%" in turnaround
    assert lines[-1].rstrip().endswith("500/667/500 ms")


def test_the_simulator_records_the_first_answer_that_said_a_job_ended():
    now = [1000.0]
    sim = Simulator(SimConfig(render_seconds=2.0, render_jitter=0.0), clock=lambda: now[0])
    body = {"prompt": "a", "reference_urls": ["https://example.com/a.png"], "duration": 5, "resolution": "720p"}
    base = "https://pixeldojo.ai"
    answer = sim.handle("POST", f"{base}/api/v1/models/happyhorse-1.0-r2v/run", {"authorization": "Bearer sim-key"},
                        json.dumps(body).encode())
    url = json.loads(answer.body)["statusUrl"]

    def poll(at):
        now[0] = at
        return json.loads(sim.handle("GET", url, {"authorization": "Bearer sim-key"}, b"").body)["status"]
    assert poll(1001.0) == "processing" and sim.record()["jobs"][0]["seen_done"] is None
    assert poll(1002.5) == "completed" and poll(1004.0) == "completed"
    rec = sim.record()
    assert rec["jobs"][0]["submitted"] == 1000.0 and rec["jobs"][0]["seen_done"] == 1002.5  # the first, kept
    assert rec["clock"] == 1004.0
