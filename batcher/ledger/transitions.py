"""State changes, each a compare-and-set checked against `states.TRANSITIONS`, with its event:
every one returns a write operation, for `Ledger.write`, `write_many` or the run's group writer,
so the caller decides what commits together. The submission protocol lives here: the intent
(with the budget's reservation) before a paid POST, the attempt's end, refunds, late answers."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, text

from ..errors import BudgetExceeded, IllegalTransition, LeaseLost, LedgerError
from ..money import ZERO, from_hundredths, show, to_hundredths
from ..states import JobState, check_move
from .control import BatchNotRunning
from .jobs import orphan_sql
from .store import LedgerStore, Operation

# A job's columns that hold credits: written as integer hundredths.
_MONEY = frozenset({"credit_cost", "estimate"})


def _stored(fields: dict[str, Any]) -> dict[str, Any]:
    """Field values as the ledger stores them (amounts in hundredths)."""
    return {name: to_hundredths(value) if name in _MONEY else value for name, value in fields.items()}


class LedgerTransitions(LedgerStore):
    def move(self, job_id: int, source: JobState, target: JobState, kind: str, detail: str | None = None,
             token: int | None = None, **fields: Any) -> Operation[None]:
        """A compare-and-set state change with its event, as a write operation.

        With `token`, the write also requires the job's fencing token to be unchanged: a runner
        whose lease was taken over cannot overwrite the runner that took it.
        """
        check_move(source, target, str(job_id))
        now = self.clock()

        def op(conn: Connection) -> None:
            sets = ", ".join(f"{name} = :f_{name}" for name in fields)
            args = {f"f_{name}": value for name, value in _stored(fields).items()}
            args.update({"id": job_id, "src": source.value, "dst": target.value, "t": now, "tok": token})
            fence = " AND lease_token = :tok" if token is not None else ""
            sql = f"UPDATE job SET state = :dst, updated_at = :t{', ' + sets if sets else ''} " \
                  f"WHERE id = :id AND state = :src{fence}"
            if self.x(conn, sql, args).rowcount != 1:
                remote = fields.get("remote_job_id")
                if remote is not None and self._has_remote(conn, job_id, target, remote):
                    return  # this very move landed before its connection dropped (retried): once is enough
                row = self.x(conn, "SELECT state, lease_token FROM job WHERE id = :id", {"id": job_id}).first()
                if row is not None and token is not None and row[1] != token:
                    raise LeaseLost(f"job {job_id}: another runner holds it now (token {row[1]}, ours {token})")
                raise IllegalTransition(
                    f"job {job_id}: expected state {source.value}, found {row[0] if row else None}; "
                    f"not moving to {target.value}")
            self._event(conn, job_id, kind, source.value, target.value, detail, now)
        return Operation(op)

    def note(self, job_id: int, kind: str, detail: str | None = None, token: int | None = None, **fields: Any
             ) -> Operation[None]:
        """An event (and optional field updates, fenced by `token`) that does not change the state."""
        now = self.clock()

        def op(conn: Connection) -> None:
            if fields:
                sets = ", ".join(f"{name} = :f_{name}" for name in fields)
                args = {f"f_{name}": value for name, value in _stored(fields).items()}
                args.update({"id": job_id, "t": now, "tok": token})
                fence = " AND lease_token = :tok" if token is not None else ""
                if self.x(conn, f"UPDATE job SET {sets}, updated_at = :t WHERE id = :id{fence}", args).rowcount != 1:
                    raise LeaseLost(f"job {job_id}: another runner holds it now")
            self._event(conn, job_id, kind, None, None, detail, now)
        return Operation(op)

    def _lock_batch(self, conn: Connection, batch: str) -> Decimal:
        """The batch's committed credits, locked until the transaction ends (PostgreSQL; SQLite's
        BEGIN IMMEDIATE already serialises writers)."""
        lock = self.sql.lock_row
        value = conn.execute(text(f"SELECT committed FROM batch WHERE name = :b{lock}"), {"b": batch}).scalar()
        return from_hundredths(value) or ZERO

    def begin_submission(self, job_id: int, source: JobState, reserved: Decimal, *, token: int | None = None,
                         batch: str | None = None, budget: Decimal | None = None) -> Operation[int]:
        """The intent before a paid POST, in one transaction: job -> submitting, an attempt row, and
        the reservation added to the batch's running total, checked against `budget` there, so
        runners on different hosts together never exceed it. Refused (BatchNotRunning) while the
        batch is paused or cancelled. Returns the attempt id."""
        move = self.move(job_id, source, JobState.SUBMITTING, "submit-intent", f"reserved {show(reserved)} credits",
                         token=token)
        now = self.clock()
        cents = to_hundredths(reserved)

        def op(conn: Connection) -> int:
            name = batch or conn.execute(text("SELECT batch FROM job WHERE id = :id"), {"id": job_id}).scalar_one()
            if budget is not None:
                # This runner's own --budget, against the batch's total of every runner's spending.
                committed = self._lock_batch(conn, name)
                if committed + reserved > budget:
                    raise BudgetExceeded(f"budget reached: {show(committed)} of {show(budget)} credits committed; "
                                         f"the next job needs {show(reserved)}", committed)
            # Only while the batch is running: a pause or cancel committed before this intent refuses
            # it here, whatever a runner has read. (The batch row first, then the job's: the order
            # `batcher cancel` locks them in.)
            if self.x(conn, "UPDATE batch SET committed = committed + :r WHERE name = :b AND control = 'running'",
                      {"r": cents, "b": name}).rowcount != 1:
                word = conn.execute(text("SELECT control FROM batch WHERE name = :b"), {"b": name}).scalar()
                raise BatchNotRunning(f"job {job_id}: not sent, its batch is {word}")
            if budget is None:
                move(conn)
            else:
                self.move(job_id, source, JobState.SUBMITTING, "submit-intent",
                          f"reserved {show(reserved)} credits; batch total {show(committed + reserved)} of budget "
                          f"{show(budget)}",
                          token=token)(conn)
            number = self.x(conn, "UPDATE job SET attempts = attempts + 1 WHERE id = :id RETURNING attempts",
                            {"id": job_id}).scalar_one()
            attempt_id: int = self.x(conn, "INSERT INTO attempt (job_id, number, outcome, reserved, refunded, "
                                           "started_at) VALUES (:j, :n, 'submitting', :r, FALSE, :t) RETURNING id",
                                     {"j": job_id, "n": number, "r": cents, "t": now}).scalar_one()
            return attempt_id
        return Operation(op)

    def end_attempt(self, attempt_id: int, outcome: str, *, remote_job_id: str | None = None,
                    credit_cost: Decimal | None = None, known: tuple[str, Decimal, str] | None = None
                    ) -> Operation[None]:
        """Record how a submission ended, and move the batch's running total to match (in exact
        hundredths: the total always equals the sum recomputed from the attempts).

        `known` = (outcome so far, reserved credits, batch) saves a lookup when the caller has them."""
        now = self.clock()
        cost = to_hundredths(credit_cost)

        def read(conn: Connection) -> tuple[str, int, str]:
            row = conn.execute(text("SELECT a.outcome, a.reserved, j.batch FROM attempt a JOIN job j ON "
                                    "j.id = a.job_id WHERE a.id = :id"), {"id": attempt_id}).first()
            if row is None:
                raise LedgerError(f"no attempt {attempt_id}")
            return str(row[0]), int(row[1]), str(row[2])

        def op(conn: Connection) -> None:
            row = (known[0], to_hundredths(known[1]) or 0, known[2]) if known else read(conn)
            for _ in range(2):
                before, reserved, batch = row
                if before == outcome and outcome != "unknown":
                    return  # already recorded (a commit that landed before its connection dropped): no twice
                # Compare-and-set on the outcome, so the running total moves once for each real change.
                if self.x(conn, "UPDATE attempt SET outcome = :o, remote_job_id = COALESCE(:r, remote_job_id), "
                                "credit_cost = COALESCE(:c, credit_cost), ended_at = :t WHERE id = :id AND "
                                "outcome = :before", {"o": outcome, "r": remote_job_id, "c": cost, "t": now,
                                                      "id": attempt_id, "before": before}).rowcount == 1:
                    break
                row = read(conn)  # what `known` said is stale: decide again from the row itself
            else:
                raise LedgerError(f"attempt {attempt_id} keeps changing under this write")
            delta = 0
            if before in ("submitting", "unknown"):
                if outcome == "accepted":
                    delta = (cost or 0) - reserved
                elif outcome in ("not_sent", "rejected"):
                    delta = -reserved
            if delta:
                self.x(conn, "UPDATE batch SET committed = committed + :d WHERE name = :b", {"d": delta, "b": batch})
        return Operation(op)

    def _has_remote(self, conn: Connection, job_id: int, state: JobState, remote_job_id: str) -> bool:
        """Whether the job already stands in `state` as `remote_job_id` (a write retried after its
        commit landed finds its own work done)."""
        return conn.execute(text("SELECT 1 FROM job WHERE id = :id AND state = :s AND remote_job_id = :r"),
                            {"id": job_id, "s": state.value, "r": remote_job_id}).first() is not None

    def refund(self, job_id: int) -> Operation[None]:
        """The API refunds failed renders: the accepted attempt of the current remote job no longer costs."""
        def op(conn: Connection) -> None:
            costs = [c for (c,) in conn.execute(text(
                "UPDATE attempt SET refunded = TRUE WHERE job_id = :j AND outcome = 'accepted' AND NOT refunded AND "
                "remote_job_id = (SELECT remote_job_id FROM job WHERE id = :j) RETURNING credit_cost"), {"j": job_id})]
            if costs:
                conn.execute(text("UPDATE batch SET committed = committed - :c WHERE name = "
                                  "(SELECT batch FROM job WHERE id = :j)"),
                             {"c": sum(int(c or 0) for c in costs), "j": job_id})
        return Operation(op)

    def recover_interrupted(self, batch: str) -> Operation[int]:
        """Reap: a job left in `submitting` by a runner that is gone (no lease, or one that expired)
        may have been sent and charged: hold it as `unknown`, never pending again. Its fencing token
        moves on, so the runner that left it cannot write to it if it wakes up. Returns how many."""
        now = self.clock()

        def op(conn: Connection) -> int:
            ids = [i for (i,) in conn.execute(text(
                "SELECT id FROM job WHERE batch = :b AND state = 'submitting' AND "
                "(owner IS NULL OR lease_until IS NULL OR lease_until < :now)"), {"b": batch, "now": now})]
            for job_id in ids:
                conn.execute(text("UPDATE job SET state = 'unknown', updated_at = :t, error = :e, owner = NULL, "
                                  "lease_until = NULL, lease_token = lease_token + 1 WHERE id = :id"),
                             {"t": now, "id": job_id,
                              "e": "a run stopped while this job's submission was in flight; it may have been "
                                   "charged. Resubmit with `batcher retry --unknown` if you accept paying twice."})
                conn.execute(text("UPDATE attempt SET outcome = 'unknown', ended_at = :t "
                                  "WHERE job_id = :id AND outcome = 'submitting'"), {"t": now, "id": job_id})
                self._event(conn, job_id, "recovered", "submitting", "unknown",
                            "found in submitting with no live lease: outcome of the POST unknown", now)
            return len(ids)
        return Operation(op)

    def requeue(self, batch: str, states: Iterable[JobState], reason: str) -> Operation[int]:
        """Move jobs in `states` back to pending (the user's decision, e.g. `batcher retry`); returns
        how many. Orphans stay as they are: no run would send them."""
        wanted = [s for s in states]
        for s in wanted:
            check_move(s, JobState.PENDING)
        now = self.clock()

        def op(conn: Connection) -> int:
            ids = [(i, st) for (i, st) in conn.execute(
                text(f"SELECT id, state FROM job WHERE batch = :b AND NOT ({orphan_sql()}) AND state IN "
                     f"({', '.join(repr(s.value) for s in wanted)})"), {"b": batch})]
            for job_id, st in ids:
                conn.execute(text("UPDATE job SET state = 'pending', error = NULL, remote_job_id = NULL, "
                                  "status_url = NULL, output_url = NULL, output_expires_at = NULL, owner = NULL, "
                                  "lease_until = NULL, lease_token = lease_token + 1, "
                                  "attempts = CASE WHEN :reset THEN 0 ELSE attempts END, updated_at = :t "
                                  "WHERE id = :id"),
                             {"t": now, "id": job_id, "reset": st == "failed"})
                self._event(conn, job_id, "requeued", st, "pending", reason, now)
            return len(ids)
        return Operation(op)
