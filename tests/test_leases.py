"""Leases, fencing tokens and the shared budget: one suite, both backends."""
from __future__ import annotations

import pytest

from batcher.errors import BudgetExceeded, IllegalTransition, LeaseLost
from batcher.ledger import Ledger
from batcher.plan import JobSpec
from batcher.states import JobState as S

from .conftest import sqlite_plans


class Clock:
    def __init__(self):
        self.t = 1_000_000.0

    def __call__(self):
        return self.t


def specs(n: int) -> list[JobSpec]:
    return [JobSpec(key=f"k{i:03d}", batch="b", row=i, take=1, origin=f"m.yaml:{i + 1}", label="r",
                    params={"prompt": f"p{i}"}, estimate=20, estimate_is_guess=False) for i in range(n)]


@pytest.fixture
def two(ledger_url):
    """Two runners' views of one ledger, sharing a clock."""
    clock = Clock()
    a = Ledger(ledger_url, clock=clock)
    b = Ledger(ledger_url, clock=clock)
    a.write(a.add_jobs("b", "happyhorse-1.0-r2v", "m.yaml", specs(10)))
    yield a, b, clock
    a.close()
    b.close()


def test_claims_are_exclusive(two):
    a, b, _clock = two
    ga = a.write(a.claim("b", [S.PENDING], "A", 30, 6))
    gb = b.write(b.claim("b", [S.PENDING], "B", 30, 6))
    assert len(ga) == 6 and len(gb) == 4
    assert not {j.id for j in ga} & {j.id for j in gb}
    assert b.write(b.claim("b", [S.PENDING], "B", 30, 6)) == []
    assert a.held_by_others("b", "A") == 4


def test_expired_lease_is_taken_over_and_the_old_holder_is_fenced(two):
    a, b, clock = two
    [job] = a.write(a.claim("b", [S.PENDING], "A", 30, 1))
    clock.t += 31  # A paused past its lease
    [again] = b.write(b.claim("b", [S.PENDING], "B", 30, 1))
    assert again.id == job.id and again.lease_token == job.lease_token + 1
    with pytest.raises(LeaseLost):
        a.write(a.begin_submission(job.id, S.PENDING, 20, token=job.lease_token))
    b.write(b.begin_submission(again.id, S.PENDING, 20, token=again.lease_token))
    assert b.get(job.id).state == "submitting"


def test_renewal_keeps_a_lease(two):
    a, b, clock = two
    a.write(a.claim("b", [S.PENDING], "A", 30, 10))
    clock.t += 20
    assert a.write(a.renew("b", "A", 30)) == 10
    clock.t += 20
    assert b.write(b.claim("b", [S.PENDING], "B", 30, 10)) == []
    a.write(a.release("b", "A"))
    assert len(b.write(b.claim("b", [S.PENDING], "B", 30, 10))) == 10


def test_expired_lease_in_submitting_becomes_unknown_never_pending(two):
    a, b, clock = two
    [job] = a.write(a.claim("b", [S.PENDING], "A", 30, 1))
    a.write(a.begin_submission(job.id, S.PENDING, 20, token=job.lease_token))
    assert b.write(b.recover_interrupted("b")) == 0  # A's lease is live: its POST may be on the wire
    clock.t += 31
    assert b.write(b.recover_interrupted("b")) == 1
    held = b.get(job.id)
    assert held.state == "unknown" and held.owner is None and held.lease_token == job.lease_token + 1
    assert not [j for j in b.write(b.claim("b", [S.PENDING, S.SUBMITTED], "B", 30, 20)) if j.id == job.id]
    with pytest.raises(IllegalTransition):
        a.write(a.move(job.id, S.SUBMITTING, S.SUBMITTED, "late", token=job.lease_token))


def test_shared_budget_is_enforced_in_the_ledger(two):
    a, b, _clock = two
    ja = a.write(a.claim("b", [S.PENDING], "A", 30, 5))
    jb = b.write(b.claim("b", [S.PENDING], "B", 30, 5))
    granted = 0
    for x, y in zip(ja, jb, strict=True):
        for led, job in ((a, x), (b, y)):
            try:
                led.write(led.begin_submission(job.id, S.PENDING, 20, token=job.lease_token, batch="b", budget=90))
                granted += 1
            except BudgetExceeded as e:
                assert e.committed == 80
    assert granted == 4 and a.committed("b") == 80
    assert a.spend("b").held == 80  # reservations in flight count until answered


def test_running_total_follows_every_outcome(two):
    a, _, _ = two
    jobs = a.write(a.claim("b", [S.PENDING], "A", 30, 4))
    ids = [a.write(a.begin_submission(j.id, S.PENDING, 20, token=j.lease_token, batch="b")) for j in jobs]
    a.write(a.end_attempt(ids[0], "accepted", remote_job_id="r0", credit_cost=18))
    a.write(a.end_attempt(ids[1], "not_sent"))
    a.write(a.end_attempt(ids[2], "rejected"))
    a.write(a.end_attempt(ids[3], "unknown"))
    assert a.committed("b") == 18 + 20
    a.write(a.move(jobs[0].id, S.SUBMITTING, S.SUBMITTED, "ok", token=jobs[0].lease_token, remote_job_id="r0"))
    a.write(a.refund(jobs[0].id))
    a.write(a.refund(jobs[0].id))  # twice: counted once
    assert a.committed("b") == 20
    spend = a.spend("b")
    assert spend.committed == a.committed("b")


def test_a_late_answer_resolves_a_held_job(two):
    a, b, clock = two
    [job] = a.write(a.claim("b", [S.PENDING], "A", 30, 1))
    a.write(a.begin_submission(job.id, S.PENDING, 20, token=job.lease_token))
    clock.t += 31
    assert b.write(b.recover_interrupted("b")) == 1  # A looks dead: held as unknown
    # A wakes up with the API's answer: it cannot move the job as its owner any more...
    with pytest.raises(LeaseLost):
        a.write(a.move(job.id, S.SUBMITTING, S.SUBMITTED, "accepted", token=job.lease_token))
    # ...but the answer resolves the held job, which is then polled, not resubmitted
    assert a.write(a.resolve_unknown(job.id, "r1", "https://x/api/v1/jobs/r1", 20, clock.t)) is True
    resolved = b.get(job.id)
    assert resolved.state == "submitted" and resolved.remote_job_id == "r1"
    assert [j.id for j in b.write(b.claim("b", [S.SUBMITTED], "B", 30, 5))] == [job.id]
    # once someone acted on a held job, a late answer only goes into its history
    assert a.write(a.resolve_unknown(job.id, "r1", "u", 20, clock.t)) is False
    assert [e.kind for e in a.events(job.id)][-1] == "late-answer"


def test_plan_reads_either_ledger_without_writing(ledger_url, tmp_path):
    import json

    from click.testing import CliRunner

    from batcher.cli import cli
    from batcher.manifest import load_manifest
    from batcher.plan import expand

    from .conftest import MANIFESTS
    m = load_manifest(MANIFESTS / "demo.yaml")
    with Ledger(ledger_url) as led:
        led.write(led.add_jobs(m.batch, m.model.api_id, "demo.yaml", expand(m)[:5]))
    out = CliRunner().invoke(cli, ["plan", str(MANIFESTS / "demo.yaml"), "--json", "--ledger", ledger_url])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["ledger"]["in_ledger"] == 5
    assert ":batcher@" not in out.output  # a database password never shows


def test_dead_runners_on_this_host_are_reaped_at_once_recorded_or_not(two):
    a, b, clock = two
    dead, alive_pid = 999_999, 1234
    a.write(a.register("here:1234:aaaa", "b", "here", alive_pid))
    a.write(a.claim("b", [S.PENDING], "here:1234:aaaa", 60, 2))  # a live runner, recorded
    a.write(a.register(f"here:{dead}:bbbb", "b", "here", dead))
    a.write(a.claim("b", [S.PENDING], f"here:{dead}:bbbb", 60, 2))  # a dead runner, recorded
    a.write(a.claim("b", [S.PENDING], f"here:{dead}:cccc", 60, 2))  # a dead runner of a version without runner rows
    a.write(a.claim("b", [S.PENDING], f"elsewhere:{dead}:dddd", 60, 2))  # another host: only its leases tell
    assert b.write(b.reap_dead_runners("b", "here", lambda pid: pid == alive_pid, me="me")) == 2
    taken = b.write(b.claim("b", [S.PENDING], "me", 60, 10))
    assert len(taken) == 2 + 2 + 2  # the dead ones' jobs, and the 2 never claimed; not the live or remote ones
    clock.t += 2 * 86_400  # a recorded runner silent for days is forgotten
    b.write(b.reap_dead_runners("b", "here", lambda pid: True, me="me"))
    with b.engine.connect() as conn:
        from sqlalchemy import text
        assert conn.execute(text("SELECT COUNT(*) FROM runner")).scalar_one() == 0


def _set_states(ledger: Ledger, states: dict[str, str]) -> None:
    """Put jobs (by key) in states directly: the claim reads states, however they were reached."""
    from sqlalchemy import text
    with ledger.engine.begin() as conn:
        for key, state in states.items():
            conn.execute(text("UPDATE job SET state = :s WHERE batch = 'b' AND key = :k"), {"s": state, "k": key})


def test_a_claim_takes_rendered_then_submitted_then_pending_each_in_manifest_order(two):
    a, b, clock = two
    _set_states(a, {"k007": "rendered", "k002": "rendered", "k008": "submitted", "k001": "submitted",
                    "k009": "failed"})
    # B holds one rendered and one pending job; its lease keeps them from A until it runs out
    held = b.write(b.claim("b", [S.RENDERED], "B", 30, 1)) + b.write(b.claim("b", [S.PENDING], "B", 30, 1))
    assert [(j.key, j.state) for j in held] == [("k002", "rendered"), ("k000", "pending")]
    got = a.write(a.claim("b", [S.PENDING, S.SUBMITTED, S.RENDERED], "A", 30, 5))
    assert [j.key for j in got] == ["k007", "k001", "k008", "k003", "k004"]
    assert all(j.owner == "A" for j in got)
    clock.t += 31  # B's leases ran out (A renewed its own): B's jobs are anyone's, paid work first
    a.write(a.renew("b", "A", 30))
    assert [j.key for j in a.write(a.claim("b", [S.PENDING, S.RENDERED], "A", 30, 2))] == ["k002", "k000"]
    # a limit met by the paid states leaves pending jobs alone
    a.write(a.release("b", "A"))
    assert [j.key for j in a.write(a.claim("b", [S.RENDERED, S.SUBMITTED, S.PENDING], "A", 30, 3))] == [
        "k002", "k007", "k001"]


def test_a_claim_of_pending_jobs_keeps_to_the_generation_but_not_for_paid_work(ledger_url):
    led = Ledger(ledger_url, clock=Clock())
    led.write(led.add_jobs("b", "happyhorse-1.0-r2v", "m.yaml", specs(4)))
    _set_states(led, {"k003": "submitted"})
    led.write(led.add_jobs("b", "happyhorse-1.0-r2v", "m.yaml", specs(4)[2:]))  # generation 2: k002, k003 only
    gen = led.batch("b").generation
    got = led.write(led.claim("b", [S.PENDING, S.SUBMITTED], "A", 30, 10, gen))
    assert [j.key for j in got] == ["k003", "k002"]
    led.close()


def test_a_claim_reads_the_state_index_in_order_without_sorting_the_batch(tmp_path):
    """What keeps a claim's cost to the jobs it takes on a 100,000-job batch: no statement of it
    sorts the batch's jobs (SQLite's query plan says 'USE TEMP B-TREE FOR ORDER BY' when one would)."""
    led = Ledger(tmp_path / "l.db", clock=Clock())
    led.write(led.add_jobs("b", "happyhorse-1.0-r2v", "m.yaml", specs(50)))
    plans = sqlite_plans(led, lambda: led.write(led.claim("b", [S.RENDERED, S.SUBMITTED, S.PENDING], "A", 30, 5, 1)),
                         "UPDATE job")
    assert len(plans) == 3
    for plan in plans:
        assert "job_batch_state_seq" in plan and "TEMP B-TREE" not in plan, plan
    led.close()


@pytest.mark.parametrize("remaining, covered", [(0, 0), (9.99, 0), (10, 1), (39.5, 2), (40, 3), (69, 3), (70, 4),
                                                (1e9, 4)])
def test_the_budget_outlook_counts_the_pending_jobs_credits_cover_in_submission_order(ledger_url, remaining, covered):
    led = Ledger(ledger_url, clock=Clock())
    jobs = [JobSpec(key=f"k{i}", batch="b", row=i, take=1, origin=f"m.yaml:{i + 1}", label="r",
                    params={"prompt": f"p{i}"}, estimate=e, estimate_is_guess=False)
            for i, e in enumerate([10, 20.5, 9.5, 30, 5])]
    led.write(led.add_jobs("b", "happyhorse-1.0-r2v", "m.yaml", jobs))
    _set_states(led, {"k4": "submitted"})  # not pending: neither counted nor covered
    gen = led.batch("b").generation
    assert led.budget_outlook("b", gen, remaining) == (4, covered, 70.0)
    assert led.budget_outlook("b", gen + 1, remaining) == (0, 0, 0.0)  # another generation's jobs
    led.close()
