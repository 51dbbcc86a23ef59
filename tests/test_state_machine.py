"""Hypothesis stateful test: the ledger's transitions against a model of the state machine."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from batcher.errors import IllegalTransition
from batcher.ledger import Ledger
from batcher.plan import JobSpec
from batcher.states import TRANSITIONS, JobState

from .conftest import PG_URL, pg_schema_url

STATES = list(JobState)
N_JOBS = 4


class LedgerMachine(RuleBasedStateMachine):
    backend = "sqlite"

    def __init__(self):
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        if self.backend == "postgres":
            LedgerMachine.runs += 1
            url = pg_schema_url(f"t_state_machine_{os.getpid()}_{LedgerMachine.runs}")
        else:
            url = str(Path(self.dir.name) / "l.db")
        self.ledger = Ledger(url, durable=False)
        specs = [JobSpec(key=f"k{i}", batch="b", row=i, take=1, origin=f"m.yaml:{i}", label="r", params={"prompt": "p"},
                         estimate=20, estimate_is_guess=False) for i in range(N_JOBS)]
        self.ledger.write(self.ledger.add_jobs("b", "happyhorse-1.0-r2v", "m.yaml", specs))
        self.ids = [j.id for j in self.ledger.iter_batch("b")]
        self.model = {i: JobState.PENDING for i in self.ids}
        self.held = 0.0

    def teardown(self):
        self.ledger.close()
        self.dir.cleanup()

    @rule(i=st.integers(0, N_JOBS - 1), dest=st.sampled_from(STATES), claimed=st.sampled_from(STATES))
    def move(self, i, dest, claimed):
        job_id = self.ids[i]
        actual = self.model[job_id]
        allowed = dest in TRANSITIONS[claimed] and claimed == actual
        try:
            self.ledger.write(self.ledger.move(job_id, claimed, dest, "test"))
            moved = True
        except IllegalTransition:
            moved = False
        assert moved == allowed, (claimed, actual, dest)
        if moved:
            self.model[job_id] = dest

    @rule(i=st.integers(0, N_JOBS - 1))
    def submit_intent(self, i):
        job_id = self.ids[i]
        try:
            self.ledger.write(self.ledger.begin_submission(job_id, self.model[job_id], 20))
            moved = True
        except IllegalTransition:
            moved = False
        assert moved == (JobState.SUBMITTING in TRANSITIONS[self.model[job_id]])
        if moved:
            self.model[job_id] = JobState.SUBMITTING

    @rule()
    def crash_and_recover(self):
        self.ledger.write(self.ledger.recover_interrupted("b"))
        for job_id, state in self.model.items():
            if state == JobState.SUBMITTING:
                self.model[job_id] = JobState.UNKNOWN

    @invariant()
    def ledger_matches_model(self):
        actual = {j.id: JobState(j.state) for j in self.ledger.iter_batch("b")}
        assert actual == self.model

    @invariant()
    def unknown_attempts_are_counted_as_held(self):
        spend = self.ledger.spend("b")
        assert spend.held >= 0 and spend.spent == 0


LedgerMachine.runs = 0
LedgerMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
TestLedgerStateMachine = LedgerMachine.TestCase


class PostgresLedgerMachine(LedgerMachine):
    backend = "postgres"


PostgresLedgerMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=20, deadline=None)


@pytest.mark.skipif(not PG_URL and not os.environ.get("CI"), reason="BATCHER_TEST_PG is not set")
class TestPostgresLedgerStateMachine(PostgresLedgerMachine.TestCase):
    pass
