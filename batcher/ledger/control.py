"""A batch's control word (`states.Control`): what `batcher pause / resume / cancel` asked of every
runner of the batch. Setting it, with what it does to the jobs in the same transaction (cancel:
pending -> cancelled; resume: cancelled -> pending, each with its event), and the cheap read every
runner makes twice a second. Beside it, the batch's webhook secret, which every runner shares.

The batch row is locked first (`FOR UPDATE` on PostgreSQL; SQLite's BEGIN IMMEDIATE serialises
writers), so a command and a runner's sweep of a cancelled batch cannot interleave: a sweep that
runs after a resume finds the batch running and cancels nothing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from ..errors import LeaseLost, LedgerError
from ..states import CONTROL_MOVES, Control, JobState, check_move
from .dialect import first_line
from .store import LedgerStore, Operation

PAID = ("submitting", "submitted", "rendered")  # states of jobs the API is working on, or may be


class BatchNotRunning(LeaseLost):
    """An intent refused because its batch is paused or cancelled: the job was not sent and stays
    pending. To the run it is a job it may not write to (a LeaseLost): it gives the job back."""


@dataclass(frozen=True)
class ControlChange:
    """What setting a batch's control word did."""

    batch: str
    before: Control
    after: Control
    at: float  # when the batch got the word it has now (unchanged when it already had it)
    moved: int  # jobs cancelled (cancel) or put back to pending (resume)
    in_flight: int  # jobs paid for (or maybe) and not finished: still polled and downloaded

    @property
    def changed(self) -> bool:
        return self.before is not self.after

    @property
    def allowed(self) -> bool:
        return not self.changed or self.after in CONTROL_MOVES[self.before]


class LedgerControl(LedgerStore):
    def control_word(self, batch: str) -> tuple[Control, float | None] | None:
        """The batch's control word and when it was set (None: no such batch). One indexed read:
        every runner makes it twice a second."""
        try:
            with self.engine.connect() as conn:
                row = self.x(conn, "SELECT control, control_at FROM batch WHERE name = :b", {"b": batch}).first()
        except DBAPIError as e:
            raise LedgerError(f"cannot read the control word of batch {batch!r}: {first_line(e.orig)}") from None
        return None if row is None else (Control.of(row[0]), row[1])

    def set_control(self, batch: str, word: Control, detail: str) -> Operation[ControlChange]:
        """Give the batch `word`, in one transaction with what it does to the jobs. A move
        `CONTROL_MOVES` does not allow (pausing a cancelled batch) changes nothing: the returned
        change says so (`allowed`). `detail` goes into the event of every job moved."""
        now = self.clock()

        def op(conn: Connection) -> ControlChange:
            row = conn.execute(text(f"SELECT control, control_at FROM batch WHERE name = :b{self.sql.lock_row}"),
                               {"b": batch}).first()
            if row is None:
                raise LedgerError(f"batch {batch!r} is not in the ledger {self.display}")
            before = Control.of(row[0])
            moved = 0
            change = ControlChange(batch, before, word, row[1] if before is word else now, 0, 0)
            if change.changed and change.allowed:
                self.x(conn, "UPDATE batch SET control = :c, control_at = :t WHERE name = :b",
                       {"c": word.value, "t": now, "b": batch})
                if word is Control.CANCELLED:
                    moved = self._cancel_pending(conn, batch, detail, now)
                elif before is Control.CANCELLED:
                    moved = self._move_all(conn, batch, JobState.CANCELLED, JobState.PENDING, "resumed", detail, now)
            in_flight = self.x(conn, f"SELECT COUNT(*) FROM job WHERE batch = :b AND state IN "
                                     f"({', '.join(repr(s) for s in PAID)})", {"b": batch}).scalar_one()
            return ControlChange(batch, before, change.after, change.at, moved, int(in_flight))
        return Operation(op)

    def webhook_secret(self, batch: str, make: Callable[[], str]) -> Operation[str]:
        """The batch's webhook secret, made with `make` the first time it is asked for. Every runner
        of the batch gets the same one (the first writer's), so any of them checks any poke."""
        def op(conn: Connection) -> str:
            self.x(conn, "UPDATE batch SET webhook_secret = :s WHERE name = :b AND webhook_secret IS NULL",
                   {"s": make(), "b": batch})
            secret = self.x(conn, "SELECT webhook_secret FROM batch WHERE name = :b", {"b": batch}).scalar()
            if not isinstance(secret, str) or not secret:
                raise LedgerError(f"batch {batch!r} is not in the ledger {self.display}")
            return secret
        return Operation(op)

    def cancelling(self, batch: str, detail: str) -> Operation[int]:
        """If the batch is (still) cancelled, cancel its pending jobs: those that became pending
        after the cancel (a refunded failure, a submission that never left, `batcher retry`, new
        rows of the manifest). Returns how many."""
        now = self.clock()

        def op(conn: Connection) -> int:
            word = conn.execute(text(f"SELECT control FROM batch WHERE name = :b{self.sql.lock_row}"),
                                {"b": batch}).scalar()
            if Control.of(word) is not Control.CANCELLED:
                return 0
            return self._cancel_pending(conn, batch, detail, now)
        return Operation(op)

    def _cancel_pending(self, conn: Connection, batch: str, detail: str, now: float) -> int:
        """Pending jobs of the batch's current manifest -> cancelled. Their leases end and their
        fencing tokens move on: a runner holding one cannot write its intent."""
        return self._move_all(conn, batch, JobState.PENDING, JobState.CANCELLED, "cancelled", detail, now,
                              "AND generation = (SELECT generation FROM batch WHERE name = :b)")

    def _move_all(self, conn: Connection, batch: str, source: JobState, target: JobState, kind: str, detail: str,
                  now: float, where: str = "") -> int:
        """Every job of the batch in `source` -> `target`, each with its event."""
        check_move(source, target)
        ids = [i for (i,) in self.x(conn, f"UPDATE job SET state = :dst, owner = NULL, lease_until = NULL, "
                                          f"lease_token = lease_token + 1, updated_at = :t "
                                          f"WHERE batch = :b AND state = :src {where} RETURNING id",
                                    {"b": batch, "src": source.value, "dst": target.value, "t": now})]
        if ids:
            self._events(conn, ids, kind, source.value, target.value, detail, now)
        return len(ids)
