"""Accepting a submission's answer: one operation records it however it reaches the ledger, in
time (from the runner holding the job's lease), late (after that runner lost the lease mid-POST)
or from the answer journal. The attempt ends (the running total moves from the reservation to the
charge), and the remote id is checked against every other job's: the API giving one id twice must
never pair two jobs with one clip, so such a job is held, charged."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NamedTuple

from sqlalchemy import Connection, text

from ..errors import LeaseLost
from ..money import show, to_hundredths
from ..states import JobState as S
from ..states import check_move
from .store import Operation
from .transitions import LedgerTransitions


class Arrival(enum.Enum):
    """How an accepted answer reaches the ledger."""

    IN_TIME = "in time"  # from the runner holding the job's lease (fenced by its token)
    LATE = "late"  # after its runner lost the lease: the job is held as unknown, nobody's
    JOURNAL = "journal"  # from the answer journal: the runner that wrote the record gave the job up


class Acceptance(enum.Enum):
    """What recording an accepted answer did to its job."""

    SUBMITTED = "submitted"  # submitted as the answer's remote job: polled from now on
    HELD = "held"  # another job already has that remote id: this one is (or stays) held, never polled
    RESOLVED = "resolved"  # a late answer: the job held as unknown is submitted after all
    UNRESOLVED = "unresolved"  # a late answer to a job someone acted on since: its history says so


class Accepted(NamedTuple):
    """What `accept_answer` did (and, when it held the job, which job has its remote id)."""

    outcome: Acceptance
    holder: str | None = None  # HELD: the key of the job that has the remote id


@dataclass(frozen=True)
class Answer:
    """A submission the API accepted: what it answered, and the charge the budget counts."""

    job_id: int
    remote_job_id: str
    status_url: str | None
    credit_cost: Decimal | None  # None: a journal record that kept no charge
    submitted_at: float | None
    api_base: str | None = None  # the API that answered (remote ids are unique per base)
    attempt_id: int | None = None  # the attempt the answer ends (None: ended already)


def shared_id(remote_job_id: str) -> str:
    return f"the API answered with job id {remote_job_id}, which another job of this ledger already has"


class LedgerAnswers(LedgerTransitions):
    def accept_answer(self, answer: Answer, arrival: Arrival, *, source: S = S.SUBMITTING, token: int | None = None,
                      known: tuple[str, Decimal, str] | None = None, held_error: str | None = None,
                      cost_note: str | None = None) -> Operation[Accepted]:
        """Record an accepted answer to a job in `source` (submitting, or unknown from the journal).
        In time, the writes are fenced by the lease's `token`: a job taken over meanwhile gets the
        answer late instead. `held_error` is the job's error when held in time; `cost_note`, the
        job's `cost-untrusted` event; `known` as for `end_attempt`."""
        def op(conn: Connection) -> Accepted:
            now = self.clock()
            if answer.attempt_id is not None:
                # (a reaper may have moved the attempt to unknown meanwhile: the total moves the same way)
                self.end_attempt(answer.attempt_id, "accepted", remote_job_id=answer.remote_job_id,
                                 credit_cost=answer.credit_cost, known=known)(conn)
            holder = self._holder_of(conn, answer.remote_job_id, answer.job_id, answer.api_base or "")
            if holder is not None:
                self._hold(conn, answer, arrival, source, holder, token, held_error, now)
                return Accepted(Acceptance.HELD, holder)
            if arrival is Arrival.LATE:
                return self._late(conn, answer, now)
            if arrival is Arrival.JOURNAL:
                check_move(source, S.SUBMITTED, str(answer.job_id))
                self._give_up(conn, answer.job_id, source, S.SUBMITTED, "journal-accepted",
                              f"accepted as {answer.remote_job_id} ({answer.credit_cost} credits); the ledger could "
                              f"not record the answer when it came, the journal kept it", now,
                              remote_job_id=answer.remote_job_id, status_url=answer.status_url,
                              credit_cost=to_hundredths(answer.credit_cost), submitted_at=answer.submitted_at,
                              error=None, api_base=answer.api_base or "")
                return Accepted(Acceptance.SUBMITTED)
            try:
                # A refused move writes nothing, so no savepoint is needed around it.
                self.move(answer.job_id, source, S.SUBMITTED, "accepted",
                          f"job {answer.remote_job_id}, {show(answer.credit_cost)} credits", token=token,
                          remote_job_id=answer.remote_job_id, status_url=answer.status_url,
                          credit_cost=answer.credit_cost, submitted_at=answer.submitted_at, error=None,
                          api_base=answer.api_base)(conn)
            except LeaseLost:
                # Paused past its lease, the job was held as unknown meanwhile: the answer resolves
                # it, unless someone has acted on it since; either way its history says so.
                return self._late(conn, answer, now)
            if cost_note:
                self.note(answer.job_id, "cost-untrusted", cost_note)(conn)
            return Accepted(Acceptance.SUBMITTED)
        return Operation(op)

    def resolve_unknown(self, job_id: int, remote_job_id: str, status_url: str, credit_cost: Decimal,
                        submitted_at: float, api_base: str | None = None) -> Operation[bool]:
        """A late answer for a job held as unknown (its runner lost the lease mid-POST): if nobody
        has touched it since, it is submitted after all, and will be polled instead of held."""
        accept = self.accept_answer(Answer(job_id, remote_job_id, status_url, credit_cost, submitted_at, api_base),
                                    Arrival.LATE)
        return Operation(lambda conn: accept(conn).outcome is Acceptance.RESOLVED)

    def _holder_of(self, conn: Connection, remote_job_id: str, job_id: int, api_base: str) -> str | None:
        """The key of another job the ledger already gave `remote_job_id` (from `api_base`, or an
        older ledger's whose base it did not record), or None. (The unique index on (api_base,
        remote_job_id) backs this up; the attempts also remember ids jobs no longer hold, after a
        retry.)"""
        if self.postgres:  # two runners given one id at once: the second waits and finds the first
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:r))"), {"r": remote_job_id})
        row = conn.execute(text(
            "SELECT j.key FROM attempt a JOIN job j ON j.id = a.job_id WHERE a.remote_job_id = :r AND a.job_id != :id "
            "AND (j.api_base IS NULL OR j.api_base IN ('', :base)) LIMIT 1"),
            {"r": remote_job_id, "id": job_id, "base": api_base}).first()
        if row is None:
            row = conn.execute(text("SELECT key FROM job WHERE api_base IN ('', :base) AND remote_job_id = :r "
                                    "AND id != :id LIMIT 1"),
                               {"r": remote_job_id, "id": job_id, "base": api_base}).first()
        return None if row is None else str(row[0])

    def _hold(self, conn: Connection, answer: Answer, arrival: Arrival, source: S, holder: str, token: int | None,
              held_error: str | None, now: float) -> None:
        """Another job has the answer's remote id: never this job's clip; it was charged (its cost
        counts), and waits for the user."""
        shared = shared_id(answer.remote_job_id)
        if arrival is Arrival.IN_TIME:
            self.move(answer.job_id, source, S.UNKNOWN, "duplicate-job-id", f"{shared} ({holder}); held",
                      token=token, credit_cost=answer.credit_cost, submitted_at=answer.submitted_at,
                      error=held_error)(conn)
        elif arrival is Arrival.JOURNAL:
            why = f"{shared} ({holder}); held: it was charged"
            self._give_up(conn, answer.job_id, source, S.UNKNOWN, "duplicate-job-id", f"{why} (from the journal)",
                          now, credit_cost=to_hundredths(answer.credit_cost), submitted_at=answer.submitted_at,
                          error=why)
        else:  # held already: it stays so
            self._event(conn, answer.job_id, "duplicate-job-id", None, None,
                        f"answered late with job id {answer.remote_job_id}, which {holder} already has; stays held",
                        now)

    def _late(self, conn: Connection, answer: Answer, now: float) -> Accepted:
        moved: bool = self.x(conn, "UPDATE job SET state = 'submitted', remote_job_id = :r, status_url = :u, "
                                   "credit_cost = :c, submitted_at = :s, error = NULL, updated_at = :t, "
                                   "api_base = :base WHERE id = :id AND state = 'unknown' AND owner IS NULL",
                             {"r": answer.remote_job_id, "u": answer.status_url,
                              "c": to_hundredths(answer.credit_cost), "s": answer.submitted_at, "t": now,
                              "id": answer.job_id, "base": answer.api_base}).rowcount == 1
        detail = (f"accepted as {answer.remote_job_id} ({show(answer.credit_cost)} credits), answered after its "
                  f"runner lost the lease")
        self._event(conn, answer.job_id, "late-answer", "unknown" if moved else None, "submitted" if moved else None,
                    detail, now)
        return Accepted(Acceptance.RESOLVED if moved else Acceptance.UNRESOLVED)

    def _give_up(self, conn: Connection, job_id: int, source: S, target: S, kind: str, detail: str, now: float,
                 **values: Any) -> None:
        """`source` -> `target` for a job whose runner gave it up (its answer came from the journal):
        its lease ends and its fencing token moves on."""
        sets = "".join(f"{name} = :f_{name}, " for name in values)
        self.x(conn, f"UPDATE job SET state = :dst, {sets}owner = NULL, lease_until = NULL, "
                     f"lease_token = lease_token + 1, updated_at = :t WHERE id = :id",
               {**{f"f_{name}": v for name, v in values.items()}, "dst": target.value, "t": now, "id": job_id})
        self._event(conn, job_id, kind, source.value, target.value, detail, now)
