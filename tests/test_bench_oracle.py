"""The bench's yardstick: the best fixed poll schedule (pure), the oracle poller end to end, and the
whole-process `batcher bench efficiency` section. Figures are printed by the bench, never asserted:
nothing here depends on speed."""
from __future__ import annotations

import asyncio
import json
import math
import random
import threading

import pytest
from click.testing import CliRunner

from batcher.bench import DEFAULT_SECTIONS, SECTIONS, bench_body, best_schedule, expected, manifest_text, run_oracle
from batcher.cli import cli
from batcher.manifest import load_manifest
from batcher.models import HAPPYHORSE_R2V
from batcher.plan import expand
from batcher.simulator import SimConfig, Simulator, make_server

# --- the schedule (pure) ------------------------------------------------------------------------


def test_the_best_schedule_for_one_second_renders_is_near_the_known_optimum():
    s = best_schedule(1.0, 0.2, 2.5)
    assert s.t0 == pytest.approx(0.92, abs=0.015)
    assert s.d == pytest.approx(0.11, abs=0.01)
    assert s.polls_per_job <= 2.5
    assert s.efficiency == pytest.approx(0.923, abs=0.003)  # about 7.7% lost to detection delay alone


@pytest.mark.parametrize("max_polls, efficiency", [(1.5, 0.86), (2, 0.90), (2.5, 0.92), (3, 0.93), (4, 0.95),
                                                   (6, 0.96), (10, 0.98)])
def test_the_polls_budget_is_kept_and_the_field_notes_figures_come_out(max_polls, efficiency):
    s = best_schedule(1.0, 0.2, max_polls)
    assert s.polls_per_job <= max_polls + 1e-9
    assert s.efficiency == pytest.approx(efficiency, abs=0.006)
    assert expected(s.t0, s.d, 1.0, 0.2) == pytest.approx((s.efficiency, s.polls_per_job))


def test_a_larger_polls_budget_never_does_worse():
    figures = [best_schedule(1.0, 0.2, p).efficiency for p in (1, 1.25, 1.5, 2, 3, 5, 8)]
    assert figures == sorted(figures)


def test_no_nearby_schedule_within_the_budget_does_better():
    s = best_schedule(1.0, 0.2, 2.5)
    for dt0 in (-0.03, -0.01, 0.0, 0.01, 0.03):
        for scale in (0.8, 0.95, 1.0, 1.05, 1.25):
            eff, polls = expected(s.t0 + dt0, s.d * scale, 1.0, 0.2)
            if polls <= 2.5:
                assert eff <= s.efficiency + 1e-4, (dt0, scale)


def test_the_expected_figures_match_a_simulation_of_the_schedule():
    """An independent check of the closed form: draw renders, count polls and detection times."""
    s = best_schedule(1.0, 0.2, 2.5)
    rng = random.Random(7)
    polls = detect = renders = 0.0
    for _ in range(40_000):
        t = rng.gauss(1.0, 0.2)
        k = max(0, math.ceil((t - s.t0) / s.d))
        polls += k + 1
        detect += s.t0 + k * s.d
        renders += t
    assert polls / 40_000 == pytest.approx(s.polls_per_job, abs=0.02)
    assert renders / detect == pytest.approx(s.efficiency, abs=0.005)


def test_the_schedule_scales_with_the_render_time():
    one, eight = best_schedule(1.0, 0.2), best_schedule(8.0, 1.6)
    assert eight.t0 == pytest.approx(8 * one.t0)
    assert eight.d == pytest.approx(8 * one.d)
    assert eight.efficiency == pytest.approx(one.efficiency)


def test_degenerate_inputs():
    exact = best_schedule(2.0, 0.0, 2.5)  # no spread: one poll at the end of every render
    assert (exact.t0, exact.efficiency, exact.polls_per_job) == (2.0, 1.0, 1.0)
    assert expected(2.0, 0.5, 2.0, 0.0) == (1.0, 1.0)
    assert expected(1.0, 0.5, 2.0, 0.0) == (1.0, 3.0)
    one = best_schedule(1.0, 0.2, 1.0)  # a single poll per job: wait until nearly every render is done
    assert one.polls_per_job <= 1.0 + 1e-6
    assert one.t0 >= 1.0 + 4 * 0.2
    wide = best_schedule(1.0, 2.0, 2.5)  # a spread larger than the mean: never poll before submitting
    assert wide.t0 >= 0 and wide.d > 0 and wide.polls_per_job <= 2.5
    assert best_schedule(1.0, 0.2, 1000).t0 >= 0
    for bad in ((0.0, 0.2, 2.5), (-1.0, 0.2, 2.5), (1.0, -0.1, 2.5), (1.0, 0.2, 0.99), (math.nan, 0.2, 2.5),
                (1.0, math.inf, 2.5)):
        with pytest.raises(ValueError):
            best_schedule(*bad)
    with pytest.raises(ValueError):
        expected(1.0, 0.0, 1.0, 0.2)


# --- the oracle poller --------------------------------------------------------------------------


def test_the_oracle_sends_what_batcher_sends_for_the_bench_manifest(tmp_path):
    for jobs in (7, 1500):
        path = tmp_path / f"bench-{jobs}.yaml"
        path.write_text(manifest_text(jobs))
        wires = [j.wire(HAPPYHORSE_R2V) for j in expand(load_manifest(path))]
        assert wires == [bench_body(i, jobs) for i in range(jobs)]


@pytest.fixture
def served():
    sim = Simulator(SimConfig(render_seconds=0.05, render_jitter=0.2, seed=3))
    server = make_server(sim)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield sim, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_oracle_completes_every_job_and_downloads_every_video(served, tmp_path):
    sim, base = served
    schedule = best_schedule(0.05, 0.01, 2.5)
    result = asyncio.run(run_oracle(base, "sim-key", 20, 5, schedule, tmp_path / "out"))
    assert (result.completed, result.failed, result.downloaded) == (20, 0, 20)
    videos = sorted((tmp_path / "out").iterdir())
    assert len(videos) == 20
    assert all(v.read_bytes()[4:8] == b"ftyp" for v in videos)
    assert result.bytes == sum(v.stat().st_size for v in videos)
    record = sim.record()
    assert record["requests"]["run"] == 20 and record["requests"]["file"] == 20
    assert record["requests"]["job"] == result.polls >= 20
    assert sorted(j["body"]["prompt"] for j in record["jobs"]) == sorted(bench_body(i, 20)["prompt"]
                                                                        for i in range(20))
    assert record["peak_in_flight"] <= 5


# --- the bench section --------------------------------------------------------------------------


def test_the_default_bench_leaves_out_the_long_run_and_the_diagnostic():
    assert "efficiency" in DEFAULT_SECTIONS
    assert "efficiency-long" in SECTIONS and "efficiency-long" not in DEFAULT_SECTIONS
    assert "inprocess" in SECTIONS and "inprocess" not in DEFAULT_SECTIONS


def test_the_efficiency_section_prints_batcher_beside_the_oracle():
    result = CliRunner().invoke(cli, ["bench", "efficiency", "--jobs", "20", "--render", "0.05",
                                      "--concurrency", "5", "--json"])
    assert result.exit_code == 0, result.output
    text, _, data = result.output.partition("\n{")
    for word in ("whole process", "batcher ", "oracle ", "ratio", "polls/job", "sum of simulated render seconds"):
        assert word in text
    figures = json.loads("{" + data)["efficiency"]
    assert figures["definition"].startswith("efficiency = sum of simulated render seconds")
    assert figures["ratio"] == pytest.approx(figures["batcher"]["efficiency"] / figures["oracle"]["efficiency"])
    for side in ("batcher", "oracle"):
        f = figures[side]
        assert {"efficiency", "polls_per_job", "wall", "ideal", "completed", "downloads"} <= set(f)
        assert (f["jobs"], f["concurrency"], f["completed"], f["downloads"], f["submitted"]) == (20, 5, 20, 20, 20)
        assert f["efficiency"] == pytest.approx(f["ideal"] / f["wall"])
    assert figures["oracle"]["schedule"]["t0"] == pytest.approx(best_schedule(0.05, 0.01).t0)
