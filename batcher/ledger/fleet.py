"""The fleet at a glance, for `batcher watch`: a batch's jobs per state, what it has spent, how
many jobs it completed lately, and every runner with the jobs it holds and when it last renewed
its leases. A few aggregate queries in one transaction: the same work for ten jobs or a million."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from ..errors import LedgerError
from ..money import ZERO, from_hundredths
from ..states import JobState
from .dialect import first_line
from .jobs import orphan_sql
from .rows import Batch, from_mapping
from .store import LedgerStore

# A runner renews its heartbeat and every lease it holds in one write, each third of its
# --lease-seconds. The ledger does not record that length: a runner holding no job is judged by
# the default (three missed heartbeats at 60 s).
QUIET_AFTER = 60.0
UNFINISHED = ("pending", "submitting", "submitted", "rendered")
RATE_WINDOW = 300.0  # completions per minute are counted over the last five minutes
SHORTEST_WINDOW = 5.0  # ... or since the first of them was submitted, if later, but never less


@dataclass(frozen=True)
class RunnerStatus:
    """A runner of the batch: its row in `runner`, and the jobs whose leases carry its name."""

    owner: str
    host: str
    pid: int | None
    started_at: float | None
    heartbeat_at: float | None  # None: no runner row (an older batcher's runner, known by its leases)
    holds: int  # unfinished jobs (pending, submitting, submitted, rendered) it holds
    lease_until: float | None  # when its latest lease runs out; None when no job carries its name

    def stale(self, now: float) -> bool:
        """Its leases have lapsed: others may take its jobs. A runner no job names yet is stale
        once its heartbeat is QUIET_AFTER seconds old."""
        if self.lease_until is not None:
            return self.lease_until < now
        return self.heartbeat_at is None or now - self.heartbeat_at > QUIET_AFTER


@dataclass(frozen=True)
class Fleet:
    """Where a batch and its runners stand, read at `at` (the ledger's clock)."""

    batch: Batch
    at: float
    counts: dict[str, int]  # every state, zeros included (of the current manifest's jobs: no orphan)
    spent: Decimal  # charged by the API and not refunded
    recent: int  # jobs completed in the last `window` seconds
    window: float
    runners: tuple[RunnerStatus, ...]

    @property
    def jobs(self) -> int:
        return sum(self.counts.values())

    @property
    def left(self) -> int:
        """Jobs runners will still work on (held and failed ones wait for a person)."""
        return sum(self.counts.get(s, 0) for s in UNFINISHED)


def _owner_parts(owner: str) -> tuple[str, int | None]:
    """Host and process of a lease's owner name (`host:pid:random`)."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    return host, int(pid) if pid.isdigit() else None


class LedgerFleet(LedgerStore):
    def fleet(self, batch: str, window: float = RATE_WINDOW) -> Fleet | None:
        """The batch's figures and runners in one read transaction (None if there is no such batch).
        Every query is an aggregate in the database; nothing is read job by job into Python."""
        try:
            with self.engine.connect() as conn:  # one transaction: one snapshot for every query
                return self._fleet(conn, batch, self.clock(), window)
        except DBAPIError as e:
            raise LedgerError(f"cannot read ledger {self.display}: {first_line(e.orig)}") from None

    def _fleet(self, conn: Connection, batch: str, now: float, window: float) -> Fleet | None:
        row = conn.execute(text("SELECT * FROM batch WHERE name = :b"), {"b": batch}).mappings().first()
        if row is None:
            return None
        counts = {s.value: 0 for s in JobState}
        # The current manifest's jobs: orphans (`orphan_sql`) never finish, and would hold the ETA up.
        for state, n in conn.execute(text(f"SELECT state, COUNT(*) FROM job WHERE batch = :b AND NOT ({orphan_sql()}) "
                                          "GROUP BY state"), {"b": batch}):
            counts[state] = int(n)
        spent = conn.execute(text(
            "SELECT COALESCE(SUM(a.credit_cost), 0) FROM attempt a JOIN job j ON j.id = a.job_id "
            "WHERE j.batch = :b AND a.outcome = 'accepted' AND NOT a.refunded"), {"b": batch}).scalar_one()
        since = now - window
        recent, first = conn.execute(text(
            "SELECT COUNT(*), MIN(submitted_at) FROM job WHERE batch = :b AND state = 'completed' "
            "AND updated_at >= :since"), {"b": batch, "since": since}).one()
        # A run younger than the window: its rate is over the time since its first completed job went out.
        span = now - max(since, float(first)) if first is not None else window
        return Fleet(from_mapping(Batch, row), now, counts, from_hundredths(spent) or ZERO, int(recent),
                     max(SHORTEST_WINDOW, span), self._fleet_runners(conn, batch))

    def _fleet_runners(self, conn: Connection, batch: str) -> tuple[RunnerStatus, ...]:
        """The batch's recorded runners, and owners of unfinished jobs that have no runner row."""
        unfinished = ", ".join(f"'{s}'" for s in UNFINISHED)
        leases = {owner: (int(holds or 0), until) for owner, holds, until in conn.execute(text(
            f"SELECT owner, SUM(CASE WHEN state IN ({unfinished}) THEN 1 ELSE 0 END), MAX(lease_until) "
            "FROM job WHERE batch = :b AND owner IS NOT NULL GROUP BY owner"), {"b": batch})}
        out = []
        for owner, host, pid, started, beat in conn.execute(text(
                "SELECT owner, host, pid, started_at, heartbeat_at FROM runner WHERE batch = :b"), {"b": batch}):
            holds, until = leases.pop(owner, (0, None))
            out.append(RunnerStatus(owner, host, int(pid), started, beat, holds, until))
        for owner, (holds, until) in leases.items():
            if holds:  # an older batcher's runner (or one whose row was dropped) still holding work
                host, pid = _owner_parts(owner)
                out.append(RunnerStatus(owner, host, pid, None, None, holds, until))
        return tuple(sorted(out, key=lambda r: (r.host, r.pid or 0, r.owner)))
