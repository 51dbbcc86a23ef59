"""`batcher bench priors` and the targets of the whole-process sections: the met / not met
judgement, the lines printed from given figures, the runs the sections share, and one tiny
whole-process run of the section. Figures are printed by the bench, never asserted: nothing here
depends on speed."""
from __future__ import annotations

import json

import pytest

from batcher.bench import whole
from batcher.bench.hooks import TARGET, describe_webhooks, never_slower
from batcher.bench.priors import HIGH, LOW, NONE, RIGHT, WRONG_TARGET, bench_priors, case_line, describe_priors, judge
from batcher.bench.whole import Batch, Runs, Target, outcome, ratio, verdict
from batcher.models import HAPPYHORSE_R2V
from batcher.money import json_safe

BATCH = Batch(800, 40, 1.0, 0.2)


def run(wall, efficiency, polls=2.0, jobs=800, completed=800):
    """A finished run's figures, as `whole_batcher` or `whole_oracle` give them (the fields the lines read)."""
    return {"jobs": jobs, "wall": wall, "efficiency": efficiency, "polls_per_job": polls, "finished": True,
            "completed": completed, "exit_code": 0, "messages": [], "webhooks": None,
            "mean_poll_lateness": 0.0008, "mean_poll_round_trip": 0.004}


def killed(timeout, below, jobs=800, seen=300, polls=1.0):
    """A run killed at its timeout, as `whole_batcher` gives it."""
    return {"jobs": jobs, "wall": timeout + 0.1, "efficiency": None, "efficiency_below": below, "timeout": timeout,
            "polls_per_job": polls, "finished": False, "completed": seen, "exit_code": None, "messages": [],
            "webhooks": None}


# --- the judgement (pure) -----------------------------------------------------------------------


@pytest.mark.parametrize("r, polls, met", [(0.97, 2.5, True), (0.99, 1.0, True), (0.969, 2.0, False),
                                           (0.98, 2.51, False), (None, 2.0, False), (0.98, None, False)])
def test_a_target_with_a_polls_limit_needs_both(r, polls, met):
    assert Target(0.97, 2.5).met(r, polls) is met


def test_a_target_without_a_polls_limit_takes_any_number_of_polls():
    assert Target(0.9).met(0.9, 40.0) and Target(0.9).met(0.95, None)
    assert not Target(0.9).met(0.89, 1.0) and not Target(0.9).met(None, 1.0)


def test_targets_say_what_they_ask():
    assert str(Target(0.97, 2.5)) == ">= 0.97 x oracle at <= 2.5 polls/job"
    assert str(WRONG_TARGET) == ">= 0.9 x oracle"
    assert str(TARGET) == ">= 1.05 x oracle at <= 1.2 status requests/job"
    assert (verdict(True), verdict(False)) == ("met", "not met")


def test_the_ratio_to_the_oracle_is_none_for_a_run_that_did_not_finish():
    assert ratio(run(24.0, 0.8), run(23.0, 0.85)) == pytest.approx(0.8 / 0.85)
    assert ratio(killed(72.0, 0.28), run(23.0, 0.85)) is None


def test_webhooks_are_never_slower_only_with_every_job_done_in_no_more_wall_time():
    assert never_slower(run(30.0, 0.7), run(30.0, 0.7))
    assert not never_slower(run(30.1, 0.7), run(30.0, 0.7))
    assert not never_slower(run(20.0, 0.9, completed=799), run(30.0, 0.7))
    assert never_slower(run(60.0, 0.3), killed(72.0, 0.28))  # polling was stopped before webhooks' end
    assert not never_slower(killed(72.0, 0.28), run(80.0, 0.2))
    assert not never_slower(killed(72.0, 0.28), killed(72.0, 0.28))  # both stopped: not shown


def test_the_guesses_are_multiples_of_the_true_mean_or_none():
    eight = Batch(240, 40, 8.0, 0.2)
    assert (RIGHT.expected(eight), HIGH.expected(eight), NONE.expected(eight)) == (8.0, 40.0, None)
    assert LOW.expected(eight) == pytest.approx(8 / 3)
    assert HIGH.describe(BATCH) == "5x too high (5s)"
    assert NONE.describe(BATCH) == f"none (the model's {HAPPYHORSE_R2V.expected_render_seconds:g}s)"


def test_a_case_is_judged_against_its_oracle():
    oracle = run(23.4, 0.855, polls=2.36)
    right = judge(RIGHT, BATCH, run(24.0, 0.834, polls=2.13), oracle, Target(0.97, 2.5))
    assert right["ratio"] == pytest.approx(0.834 / 0.855) and right["met"] is True
    high = judge(HIGH, BATCH, run(111.0, 0.18, polls=1.02), oracle, WRONG_TARGET)
    assert (high["expected_render"], high["met"], high["target"]) == (5.0, False, ">= 0.9 x oracle")
    stopped = judge(NONE, BATCH, killed(70.2, 0.285), oracle, WRONG_TARGET)
    assert (stopped["ratio"], stopped["met"], stopped["finished"]) == (None, False, False)


# --- the lines printed from given figures (pure) ------------------------------------------------


def test_a_case_line_gives_the_figures_the_ratio_and_the_verdict():
    oracle = run(23.4, 0.855)
    line = case_line(judge(LOW, BATCH, run(24.5, 0.8171, polls=3.1), oracle, WRONG_TARGET))
    assert line.startswith("    3x too low (0.333s)")
    assert "efficiency 0.817, 3.10 polls/job, wall 24.50s: 0.956 x oracle; target >= 0.9 x oracle: met" in line
    stopped = case_line(judge(NONE, BATCH, killed(70.2, 0.285, seen=312), oracle, WRONG_TARGET))
    assert "did not finish in 70s (efficiency below 0.285; 312 of 800 seen done): no ratio" in stopped
    assert stopped.endswith("target >= 0.9 x oracle: not met")


def test_the_section_prints_each_batch_with_its_oracle_then_its_cases():
    oracle = run(23.4, 0.855, polls=2.36)
    cases = [judge(RIGHT, BATCH, run(24.0, 0.834), oracle, Target(0.97, 2.5)),
             judge(HIGH, BATCH, run(30.0, 0.667), oracle, WRONG_TARGET)]
    r = {"timeout_factor": 3.0, "sizes": [{"jobs": 800, "concurrency": 40, "render": 1.0, "jitter": 0.2,
                                           "oracle": oracle, "cases": cases}]}
    lines = describe_priors(r)
    assert lines[0].startswith("priors ") and "killed after 3 x the oracle's wall" in lines[0]
    assert lines[1] == ("  800 jobs, concurrency 40, renders 1s +/- 20%: oracle efficiency 0.855, 2.36 polls/job, "
                        "wall 23.40s (its polls sent 0.8 ms late, answered in 4.0 ms: more is a busy machine)")
    assert lines[2].endswith("0.975 x oracle; target >= 0.97 x oracle at <= 2.5 polls/job: met")
    assert lines[3].endswith("0.780 x oracle; target >= 0.9 x oracle: not met") and len(lines) == 4


def test_the_webhooks_lines_say_each_target_met_or_not_and_both_walls_under_a_wrong_guess():
    targets = {"webhooks_vs_oracle": {"target": str(TARGET), "met": False},
               "lossy_vs_polling": {"target": "", "met": True},
               "lossy_vs_polling_wrong_prior": {"target": "", "met": True}}
    r = {"jobs": 800, "concurrency": 40, "render": 1.0, "jitter": 0.2, "loss": 0.3, "delay": 0.02,
         "wrong_prior": 5.0, "timeout": 70.2, "oracle": run(23.4, 0.855), "polling": run(24.0, 0.834),
         "webhooks": run(22.4, 0.895, polls=1.09), "webhooks_lossy": run(23.0, 0.87),
         "polling_wrong_prior": killed(70.2, 0.285), "webhooks_lossy_wrong_prior": run(50.0, 0.4),
         "ratio_to_oracle": 0.895 / 0.855, "targets": targets}
    lines = describe_webhooks(r)
    assert "webhooks 30% lost, told 5s" in lines[6] and "wall 50.00s" in lines[6]
    assert "did not finish in 70s" in lines[5]
    assert lines[7].endswith("1.047 at 1.09 status requests/job; target >= 1.05 x oracle at <= 1.2 status "
                             "requests/job: not met")
    assert lines[8].endswith("told the true mean, webhooks 23.00s against polling 24.00s: met; told 5s, "
                             "webhooks 50.00s against polling over 70s: met")


def test_outcome_of_a_finished_run_and_of_a_stopped_one():
    assert outcome(run(24.0, 0.834, polls=2.13)) == "efficiency 0.834, 2.13 polls/job, wall 24.00s"
    assert outcome(killed(72.0, 0.278, seen=5), "status requests/job").startswith("did not finish in 72s")


# --- the runs the sections share ----------------------------------------------------------------


def test_a_run_asked_for_twice_is_made_once(monkeypatch):
    made = []

    def fake(batch, work, *, expected, run_args=(), sim_args=(), timeout=None):
        made.append((batch, expected, tuple(run_args), timeout))
        return {"n": len(made)}

    monkeypatch.setattr(whole, "whole_batcher", fake)
    runs = Runs()
    first = runs.batcher(BATCH, 5.0, timeout=70.0)
    assert runs.batcher(BATCH, 5.0, timeout=70.0) is first
    runs.batcher(BATCH, 5.0, ["--webhook-listen", "127.0.0.1:0"], timeout=70.0)
    runs.batcher(BATCH, None)
    runs.batcher(Batch(240, 40, 8.0, 0.2), 5.0, timeout=70.0)
    assert [m[1] for m in made] == [5.0, 5.0, None, 5.0] and len(made) == 4


# --- the section's runs, and one run stopped at its timeout (whole process, tiny) ---------------


class FakeRuns:
    """Hands out made-up figures and notes what was asked for: a wrong guess is stopped at its timeout."""

    def __init__(self):
        self.asked = []

    def oracle(self, batch, max_polls):
        self.asked.append(("oracle", batch.render))
        return run(10.0 * batch.render, 0.85)

    def batcher(self, batch, expected, run_args=(), sim_args=(), timeout=None):
        self.asked.append((batch.render, expected, timeout))
        return run(10.5 * batch.render, 0.84) if expected == batch.render else killed(timeout, 0.2)


def test_the_section_runs_every_guess_beside_one_oracle_per_batch():
    runs = FakeRuns()
    r = bench_priors([BATCH, Batch(240, 40, 8.0, 0.2)], timeout_factor=3.0, runs=runs)
    one, eight = r["sizes"]
    assert [c["prior"] for c in one["cases"]] == ["right", "5x too high", "3x too low", "none"]
    assert [c["prior"] for c in eight["cases"]] == ["right", "5x too high", "3x too low"]
    assert [a for a in runs.asked if a[0] == "oracle"] == [("oracle", 1.0), ("oracle", 8.0)]
    assert (one["timeout"], eight["timeout"]) == (30.0, 240.0)
    assert (8.0, 40.0, 240.0) in runs.asked and (1.0, 1.0, None) in runs.asked  # only wrong guesses are stopped
    assert [c["met"] for c in eight["cases"]] == [True, False, False] and r["met"] is False
    json.dumps(json_safe(r), allow_nan=False)
    assert len(describe_priors(r)) == 1 + 5 + 4


def test_a_run_stopped_at_its_timeout_says_it_did_not_finish(tmp_path):
    tiny = Batch(4, 2, 20.0, 0.2)  # renders far longer than the timeout, whatever the guess
    f = whole.whole_batcher(tiny, tmp_path, expected=None, timeout=1.5)
    assert (f["finished"], f["efficiency"], f["timeout"], f["exit_code"]) == (False, None, 1.5, None)
    assert f["wall"] >= 1.5 and f["efficiency_below"] == pytest.approx(tiny.ideal / f["wall"])
    assert f["expected_render"] is None and f["completed"] < 4


def test_the_default_bench_runs_the_priors_and_the_lossy_runs_lose_the_issues_share():
    from click.testing import CliRunner

    from batcher.bench import DEFAULT_SECTIONS, SECTIONS, BenchSettings
    from batcher.cli import cli
    assert "priors" in SECTIONS and "priors" in DEFAULT_SECTIONS
    assert SECTIONS.index("priors") < SECTIONS.index("webhooks")  # webhooks reuses its run told 5x the mean
    assert (BenchSettings().webhook_loss, BenchSettings().prior_timeout) == (0.3, 2.0)
    shown = CliRunner().invoke(cli, ["bench", "--help"]).output
    assert "priors" in shown and "--prior-timeout" in shown


def test_every_section_of_one_bench_shares_its_runs_and_its_time_is_given(monkeypatch):
    from batcher.bench import suite
    seen = []

    def section(name):
        def run_section(settings, runs):
            seen.append(runs)
            return {"met": True}, [f"{name} line"]
        return run_section

    monkeypatch.setattr(suite, "RUNS", {name: section(name) for name in suite.SECTIONS})
    echoed = []
    results = suite.run_all(["webhooks", "priors"], echo=echoed.append)
    assert echoed[1:3] == ["priors line", "webhooks line"]  # in SECTIONS' order
    assert len(seen) == 2 and seen[0] is seen[1] and isinstance(seen[0], Runs)
    assert set(results["seconds"]) == {"priors", "webhooks"} and echoed[-1].startswith("seconds: priors 0, webhooks 0")
