"""Accepting a submission's answer: the one operation (in time, late, from the journal), both backends."""
from __future__ import annotations

from decimal import Decimal

import pytest

from batcher.errors import LeaseLost
from batcher.ledger import Acceptance, Answer, Arrival, Ledger
from batcher.plan import JobSpec
from batcher.states import JobState as S


class Clock:
    def __init__(self):
        self.t = 1_000_000.0

    def __call__(self):
        return self.t


@pytest.fixture
def led(ledger_url):
    clock = Clock()
    ledger = Ledger(ledger_url, clock=clock)
    ledger.write(ledger.add_jobs("b", "happyhorse-1.0-r2v", "m.yaml", [
        JobSpec(key=f"k{i}", batch="b", row=i, take=1, origin=f"m.yaml:{i + 1}", label="r", params={"prompt": "p"},
                estimate=20, estimate_is_guess=False) for i in range(3)]))
    yield ledger, clock
    ledger.close()


def sent(ledger, index=0):
    """A job claimed and in `submitting`, with its attempt id."""
    job = next(j for j in ledger.write(ledger.claim("b", [S.PENDING], "A", 30, 3)) if j.key == f"k{index}")
    attempt = ledger.write(ledger.begin_submission(job.id, S.PENDING, Decimal(20), token=job.lease_token))
    ledger.write(ledger.release_jobs([j.id for j in ledger.iter_batch("b") if j.id != job.id], "A"))
    return ledger.get(job.id), attempt


def answer(job, attempt, remote="r1", cost=Decimal(18)):
    return Answer(job.id, remote, f"https://x/api/v1/jobs/{remote}", cost, 1.0, "https://x", attempt)


def test_an_answer_in_time_submits_the_job_and_charges_its_cost(led):
    ledger, _ = led
    job, attempt = sent(ledger)
    done = ledger.write(ledger.accept_answer(answer(job, attempt), Arrival.IN_TIME, token=job.lease_token,
                                             cost_note="not believed"))
    assert done.outcome is Acceptance.SUBMITTED and done.holder is None
    now = ledger.get(job.id)
    assert (now.state, now.remote_job_id, now.credit_cost, now.api_base) == ("submitted", "r1", 18, "https://x")
    assert [e.kind for e in ledger.events(job.id)][-2:] == ["accepted", "cost-untrusted"]
    assert ledger.attempts(job.id)[-1].outcome == "accepted" and ledger.committed("b") == 18


def test_a_remote_id_another_job_has_holds_the_job_charged(led):
    ledger, _ = led
    first, attempt = sent(ledger, 0)
    ledger.write(ledger.accept_answer(answer(first, attempt), Arrival.IN_TIME, token=first.lease_token))
    second, attempt = sent(ledger, 1)
    done = ledger.write(ledger.accept_answer(answer(second, attempt), Arrival.IN_TIME, token=second.lease_token,
                                             held_error="held, charged"))
    assert done == (Acceptance.HELD, "k0")
    held = ledger.get(second.id)
    assert (held.state, held.remote_job_id, held.error, held.credit_cost) == ("unknown", None, "held, charged", 18)
    assert ledger.events(second.id)[-1].detail == (
        "the API answered with job id r1, which another job of this ledger already has (k0); held")
    assert ledger.committed("b") == 36


def test_an_answer_after_the_lease_was_lost_resolves_the_held_job(led):
    ledger, clock = led
    job, attempt = sent(ledger)
    clock.t += 31
    assert ledger.write(ledger.recover_interrupted("b")) == 1
    done = ledger.write(ledger.accept_answer(answer(job, attempt), Arrival.IN_TIME, token=job.lease_token))
    assert done.outcome is Acceptance.RESOLVED
    assert ledger.get(job.id).state == "submitted" and ledger.events(job.id)[-1].kind == "late-answer"
    # acted on since (submitted now): a second late answer only goes into its history
    again = ledger.write(ledger.accept_answer(answer(job, None), Arrival.LATE))
    assert again.outcome is Acceptance.UNRESOLVED and ledger.events(job.id)[-1].from_state is None


def second_held(ledger, clock):
    """k0 accepted as r1; k1 sent, then held as unknown when its runner looked dead."""
    first, attempt = sent(ledger, 0)
    ledger.write(ledger.accept_answer(answer(first, attempt), Arrival.IN_TIME, token=first.lease_token))
    second, attempt = sent(ledger, 1)
    clock.t += 31
    assert ledger.write(ledger.recover_interrupted("b")) == 1
    return second, attempt


def test_a_held_answer_in_time_to_a_job_taken_over_raises_lease_lost(led):
    second, attempt = second_held(*led)
    ledger, _ = led
    with pytest.raises(LeaseLost):
        ledger.write(ledger.accept_answer(answer(second, attempt), Arrival.IN_TIME, token=second.lease_token))
    assert ledger.get(second.id).state == "unknown" and ledger.attempts(second.id)[-1].outcome == "unknown"


def test_a_late_answer_with_another_jobs_id_leaves_the_job_held(led):
    second, _ = second_held(*led)
    ledger, _ = led
    assert ledger.write(ledger.resolve_unknown(second.id, "r1", "u", Decimal(18), 1.0, "https://x")) is False
    assert ledger.get(second.id).state == "unknown"
    assert ledger.events(second.id)[-1].detail == "answered late with job id r1, which k0 already has; stays held"


@pytest.mark.parametrize("remote, outcome, state, kind", [
    ("r2", Acceptance.SUBMITTED, "submitted", "journal-accepted"),
    ("r1", Acceptance.HELD, "unknown", "duplicate-job-id"),
])
def test_an_answer_from_the_journal_ends_the_lease_of_its_runner(led, remote, outcome, state, kind):
    ledger, _ = led
    first, attempt = sent(ledger, 0)
    ledger.write(ledger.accept_answer(answer(first, attempt), Arrival.IN_TIME, token=first.lease_token))
    second, attempt = sent(ledger, 1)
    done = ledger.write(ledger.accept_answer(answer(second, attempt, remote), Arrival.JOURNAL))
    assert done.outcome is outcome
    now = ledger.get(second.id)
    assert (now.state, now.owner, now.lease_token) == (state, None, second.lease_token + 1)
    assert ledger.events(second.id)[-1].kind == kind and ledger.events(second.id)[-1].from_state == "submitting"
    assert ledger.attempts(second.id)[-1].outcome == "accepted"
