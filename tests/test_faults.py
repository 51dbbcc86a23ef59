"""One test per fault the simulator injects: job outcomes checked against the server's record."""
from __future__ import annotations

import json
import logging
from collections import Counter

import pytest

from batcher.ledger import Ledger
from batcher.policy import RetryPolicy
from batcher.simulator import SimConfig

from .conftest import small_manifest


def server_jobs_by_body(sim) -> Counter:
    return Counter(json.dumps(j["body"], sort_keys=True) for j in sim.record()["jobs"])


def ledger_view(path):
    with Ledger(path) as led:
        jobs = list(led.iter_batch("small"))
        attempts = {j.id: led.attempts(j.id) for j in jobs}
        spend = led.spend("small")
    return jobs, attempts, spend


def assert_consistent(sim, ledger_path, *, consented: bool = False):
    """Every charge belongs to a ledger job; nothing charged twice without consent; spend matches."""
    record = sim.record()
    jobs, attempts, spend = ledger_view(ledger_path)
    remote_ids = {a.remote_job_id for atts in attempts.values() for a in atts if a.remote_job_id}
    lost = [j for j in record["jobs"] if j["job_id"] not in remote_ids]
    # a charge we never heard about can only come from an attempt held as unknown
    unknown_attempts = sum(1 for atts in attempts.values() for a in atts if a.outcome == "unknown")
    assert len(lost) <= unknown_attempts
    if not consented:
        net = Counter(json.dumps(j["body"], sort_keys=True) for j in record["jobs"] if not j["refunded"])
        assert all(n == 1 for n in net.values()), net
    # what the ledger says was spent equals what the server charged and kept, for answered jobs
    answered = sum(j["cost"] for j in record["jobs"] if j["job_id"] in remote_ids and not j["refunded"])
    assert float(spend.spent) == pytest.approx(answered)
    return jobs, record


# Tests of recovery from random faults allow more retries than any streak of them uses up (at a
# quarter of requests failing, six in a row come about once in 4,000 streaks, often enough for a
# slow machine's timing to meet one); giving up has its own test below.
PATIENT = RetryPolicy(base=0.01, cap=0.05, max_attempts=40)


def test_refused_connections_are_retried_and_each_job_paid_once(simrun, write):
    report, sim, ledger = simrun(write("m.yaml", small_manifest(8)), config=SimConfig(
        render_seconds=0.02, refuse_rate=0.3, seed=2), retry=PATIENT, submit_retry=PATIENT)
    _jobs, record = assert_consistent(sim, ledger)
    assert record["faults"]["refuse"] > 0
    assert report.counts["completed"] == 8 and len(record["jobs"]) == 8


@pytest.mark.parametrize("fault", ["error_rate", "drop_rate", "malformed_rate"])
def test_ambiguous_submit_failures_are_held_not_resent(simrun, write, fault):
    report, sim, ledger = simrun(write("m.yaml", small_manifest(10)), config=SimConfig(
        render_seconds=0.02, seed=5, **{fault: 0.25}), retry=PATIENT, submit_retry=PATIENT)
    jobs, record = assert_consistent(sim, ledger)
    assert sum(record["faults"].values()) > 0
    states = Counter(j.state for j in jobs)
    assert set(states) <= {"completed", "unknown"}
    assert states["completed"] == len(record["jobs"])  # polls and downloads recovered from the same faults
    for job in jobs:
        if job.state == "unknown":
            assert job.error and "may have been charged" in job.error
    if states["unknown"]:
        assert report.exit_code == 1 and report.held_jobs == states["unknown"]


def test_polls_that_keep_failing_leave_the_job_to_the_next_run_which_pays_nothing_more(simrun, write, caplog,
                                                                                       monkeypatch):
    monkeypatch.setattr(logging.getLogger("batcher"), "propagate", True)
    caplog.set_level(logging.WARNING)
    manifest = write("m.yaml", small_manifest(3))
    from batcher.simulator import Simulator
    sim = Simulator(SimConfig(render_seconds=0.02, error_rate=1.0, fault_routes=("job",), seed=1))
    report, _, ledger = simrun(manifest, simulator=sim)
    jobs, _, _ = ledger_view(ledger)
    assert {j.state for j in jobs} == {"submitted"} and len(sim.record()["jobs"]) == 3
    assert any("polls of some jobs kept failing" in m for m in report.messages)
    # once, not once a job (a record counted once even where the suite's handlers see it twice)
    assert len({id(r) for r in caplog.records if "polls of some jobs kept failing" in r.getMessage()}) == 1
    with Ledger(ledger) as led:
        given_up = [e for j in jobs for e in led.events(j.id) if e.kind == "poll-given-up"]
    assert len(given_up) == 3 and all((e.detail or "").startswith("6 polls failed") for e in given_up)
    assert sim.requests["run"] == 3  # only polls met the faults
    sim.config.error_rate = 0.0
    report, _, _ = simrun(manifest, simulator=sim, ledger=ledger)
    assert report.counts["completed"] == 3 and len(sim.record()["jobs"]) == 3
    assert_consistent(sim, ledger)


def test_lost_answers_are_charged_held_then_resubmitted_by_consent(simrun, write):
    manifest = write("m.yaml", small_manifest(6))
    from batcher.simulator import Simulator
    sim = Simulator(SimConfig(render_seconds=0.02, lost_answer_rate=0.5, seed=4))
    report, _, ledger = simrun(manifest, simulator=sim)
    jobs, record = assert_consistent(sim, ledger)
    held = [j for j in jobs if j.state == "unknown"]
    lost = sum(1 for j in record["jobs"] if j["answer_lost"])
    assert held and len(held) == lost
    assert report.held_jobs == len(held) and report.held_cost == 20 * len(held)
    # the held reservations count against the budget: they were charged
    _, _, spend = ledger_view(ledger)
    assert spend.held == 20 * len(held)
    # a plain rerun does not resubmit them
    simrun(manifest, simulator=sim, ledger=ledger)
    assert len(sim.record()["jobs"]) == len(record["jobs"])
    # consent: resubmit; those jobs are charged a second time, the others never
    sim.config.lost_answer_rate = 0.0
    report3, _, _ = simrun(manifest, simulator=sim, ledger=ledger, resubmit_unknown=True)
    assert report3.exit_code == 0
    counts = server_jobs_by_body(sim)
    assert sorted(counts.values()) == [1] * (6 - len(held)) + [2] * len(held)


def test_rate_limit_is_waited_out(simrun, write):
    # 4 requests a second; 3 jobs need at least 10 (schema, submits, polls, downloads).
    report, sim, ledger = simrun(write("m.yaml", small_manifest(3)), config=SimConfig(
        render_seconds=0.01, rpm=4, rate_window=1.0, seed=1))
    record = sim.record()
    assert record["rate_limited"] >= 1
    assert report.counts["completed"] == 3 and len(record["jobs"]) == 3
    assert_consistent(sim, ledger)
    with Ledger(ledger) as led:
        kinds = {e.kind for j in led.iter_batch("small") for e in led.events(j.id)}
    assert kinds & {"paused", "poll-paused", "submit-retry"}  # the waits are in the jobs' histories


def test_remote_failure_then_success_keeps_one_net_charge(simrun, write):
    _report, sim, ledger = simrun(write("m.yaml", small_manifest(10)), config=SimConfig(
        render_seconds=0.02, fail_rate=0.3, seed=9), max_attempts=3)
    jobs, record = assert_consistent(sim, ledger)
    assert any(j["refunded"] for j in record["jobs"])
    for job in jobs:
        assert job.state in ("completed", "failed")


def test_an_unreachable_api_stops_the_run_quickly(simrun, write):
    report, sim, ledger = simrun(write("m.yaml", small_manifest(12)), config=SimConfig(refuse_rate=1.0),
                                 check_schema=False, concurrency=4)
    assert report.stop_reason == "unreachable" and report.exit_code == 1
    assert any("cannot reach the API" in m for m in report.messages)
    assert sim.record()["charged"] == 0
    jobs, _, spend = ledger_view(ledger)
    assert {j.state for j in jobs} == {"pending"} and spend.committed == 0
