"""Orphans: jobs that no row of a batch's current manifest produces any more (a prompt fixed, a
seed list shortened, a row removed, a reference changed: their keys changed). Staging marks every
job of the manifest with the batch's new generation (`jobs.add_rows`); a job left with an older
one is an orphan (`jobs.orphan_sql`). Counted apart, named by the rows the ledger recorded for
them, and pruned: unpaid ones cancelled (or forgotten), paid ones kept and marked, never dropped."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection

from ..states import JobState
from .control import LedgerControl
from .jobs import orphan_sql
from .store import Operation

# A job that has cost (or may have cost) credits: the API holds its request or may, or one of its
# attempts was charged and not refunded (a failure the API charged for).
_PAID = ("(job.state IN ('submitting', 'submitted', 'rendered', 'completed', 'unknown', 'expired') OR EXISTS "
         "(SELECT 1 FROM attempt pa WHERE pa.job_id = job.id AND (pa.outcome IN ('submitting', 'unknown') "
         "OR (pa.outcome = 'accepted' AND NOT pa.refunded))))")
_ORPHANS_OF = f"job.batch = :b AND {orphan_sql()}"


@dataclass(frozen=True)
class _Tally:
    counts: dict[str, int]  # jobs per state

    @property
    def jobs(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class OrphanRow(_Tally):
    """A manifest row (as the ledger recorded it) whose jobs are orphans: how many, per state."""

    origin: str
    label: str


@dataclass(frozen=True)
class Orphans(_Tally):
    """A batch's orphans: jobs per state, how many were paid for, and the rows they came from."""

    paid: int = 0
    rows: tuple[OrphanRow, ...] = ()


@dataclass(frozen=True)
class Pruned:
    """What `prune` did: unpaid orphans cancelled or forgotten; paid ones kept (per state), marked."""

    cancelled: int
    forgotten: int
    kept: dict[str, int]

    @property
    def kept_paid(self) -> int:
        return sum(self.kept.values())


class LedgerOrphans(LedgerControl):
    def orphans(self, batch: str) -> Orphans:
        """The batch's orphans, as its latest staging left them."""
        rows: dict[tuple[str, str], dict[str, int]] = {}
        counts: dict[str, int] = {}
        with self.engine.connect() as conn:
            for origin, label, state, n in self.x(conn, f"SELECT job.origin, job.label, job.state, COUNT(*) FROM job "
                                                        f"WHERE {_ORPHANS_OF} GROUP BY job.origin, job.label, "
                                                        f"job.state ORDER BY MIN(job.seq)", {"b": batch}):
                rows.setdefault((origin, label), {})[state] = int(n)
                counts[state] = counts.get(state, 0) + int(n)
            paid = self.x(conn, f"SELECT COUNT(*) FROM job WHERE {_ORPHANS_OF} AND {_PAID}", {"b": batch}).scalar_one()
        return Orphans(counts, int(paid), tuple(OrphanRow(c, o, lb) for (o, lb), c in rows.items()))

    def prune(self, batch: str, *, forget: bool = False, detail: str = "`batcher prune`") -> Operation[Pruned]:
        """Cancel the batch's pending orphans; with `forget`, remove every unpaid orphan (its job,
        events and attempts) instead. Paid orphans stay, each given an `orphaned` event once (a
        job another runner holds a live lease on is left for the next prune)."""
        now = self.clock()

        def op(conn: Connection) -> Pruned:
            cancelled, forgotten = 0, 0
            if forget:
                ids = [i for (i,) in self.x(conn, f"SELECT job.id FROM job WHERE {_ORPHANS_OF} AND NOT {_PAID} AND "
                                                  "(job.owner IS NULL OR job.lease_until IS NULL OR "
                                                  "job.lease_until < :now)", {"b": batch, "now": now})]
                for start in range(0, len(ids), 500):
                    chunk = {f"i{n}": i for n, i in enumerate(ids[start:start + 500])}
                    among = ", ".join(f":{k}" for k in chunk)
                    for table, column in (("event", "job_id"), ("attempt", "job_id"), ("job", "id")):
                        self.x(conn, f"DELETE FROM {table} WHERE {column} IN ({among})", chunk)
                forgotten = len(ids)
            else:
                cancelled = self._move_all(conn, batch, JobState.PENDING, JobState.CANCELLED, "cancelled",
                                           f"an orphan: no row of the manifest produces it ({detail})", now,
                                           f"AND {orphan_sql()}")
            unmarked = [i for (i,) in self.x(conn, f"SELECT job.id FROM job WHERE {_ORPHANS_OF} AND {_PAID} AND NOT "
                                                   "EXISTS (SELECT 1 FROM event oe WHERE oe.job_id = job.id AND "
                                                   "oe.kind = 'orphaned')", {"b": batch})]
            if unmarked:
                self._events(conn, unmarked, "orphaned", None, None,
                             f"no row of the manifest produces it any more; kept: it was paid for ({detail})", now)
            kept = {str(s): int(n) for s, n in self.x(conn, f"SELECT job.state, COUNT(*) FROM job WHERE {_ORPHANS_OF} "
                                                            f"AND {_PAID} GROUP BY job.state", {"b": batch})}
            return Pruned(cancelled, forgotten, kept)
        return Operation(op)
