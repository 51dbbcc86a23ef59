"""Named, append-only migrations: what each version of the ledger added, by name of the schema's
own columns and tables, so the schema is written once (in `schema.py`).

A new ledger is created whole from the schema and stamped with every version. An older ledger
gets the steps of the versions it lacks, in order; adding a column or table that is already
there is skipped, so a step stays correct when the schema grows later. Data carried over
between versions is plain SQL, written for both databases.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

from sqlalchemy import Column, Connection, Index, Table, inspect, text
from sqlalchemy.schema import CreateColumn
from sqlmodel import SQLModel

from ..errors import LedgerError
from .schema import (
    AttemptTable,
    BatchTable,
    JobTable,
    LocalImageTable,
    ModelInfoTable,
    ReferenceTable,
    RunnerTable,
    SchemaMigration,
    StoredImageTable,
)

Step = Callable[[Connection], None]


class Migration(NamedTuple):
    version: int
    name: str
    steps: list[Step]


def _table(model: Any) -> Table:
    table: Table = model.__table__
    return table


def add_column(model: Any, name: str) -> Step:
    """ALTER TABLE ... ADD COLUMN, the column rendered from the schema for this database."""
    table = _table(model)
    column: Column[Any] = table.c[name]

    def step(conn: Connection) -> None:
        if name in {c["name"] for c in inspect(conn).get_columns(table.name)}:
            return
        ddl = CreateColumn(column).compile(dialect=conn.dialect)
        conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {ddl}")
    return step


def create_table(model: Any) -> Step:
    """A table of the schema (with its indexes), if it is not there yet."""
    def step(conn: Connection) -> None:
        _table(model).create(conn, checkfirst=True)
    return step


def recreate_without_column(model: Any, column: str) -> Step:
    """Drop and create again a table of cached rows that lacks `column` (nothing lost that the
    next run does not write again); a table that has it is left alone."""
    table = _table(model)

    def step(conn: Connection) -> None:
        if column in {c["name"] for c in inspect(conn).get_columns(table.name)}:
            return
        table.drop(conn, checkfirst=True)
        table.create(conn)
    return step


def create_index(model: Any, name: str) -> Step:
    def step(conn: Connection) -> None:
        index: Index = next(i for i in _table(model).indexes if i.name == name)
        index.create(conn, checkfirst=True)
    return step


def sql(statement: str) -> Step:
    def step(conn: Connection) -> None:
        conn.execute(text(statement))
    return step


# Beyond this many credits an amount an older ledger holds is not money (an absurd charge the
# API answered with, believed then): the ledger's 64-bit hundredths could not hold it anyway.
_ABSURD = "1e12"


def in_hundredths(model: Any, name: str, instead: str = "NULL") -> Step:
    """A column of credits (a float) rewritten as whole hundredths (BIGINT): a new column filled
    from the old, the old dropped, the new given its name. An amount beyond any real one becomes
    `instead` (SQL over the row: an absurd charge gives way to the estimate, as it would now); no
    amount stays none.
    Always run (once, as its migration): an older step may have made the column BIGINT already,
    holding credits."""
    table, column = _table(model), _table(model).c[name]

    def step(conn: Connection) -> None:
        t, new = table.name, f"{name}_hundredths"
        required = "" if column.nullable else " NOT NULL DEFAULT 0"
        conn.exec_driver_sql(f"ALTER TABLE {t} ADD COLUMN {new} BIGINT{required}")
        conn.exec_driver_sql(f"UPDATE {t} SET {new} = CASE WHEN {name} IS NULL THEN NULL "
                             f"WHEN ABS({name}) <= {_ABSURD} THEN CAST(ROUND({name} * 100) AS BIGINT) "
                             f"ELSE {instead} END")
        conn.exec_driver_sql(f"ALTER TABLE {t} DROP COLUMN {name}")
        conn.exec_driver_sql(f"ALTER TABLE {t} RENAME COLUMN {new} TO {name}")
    return step


# The shared budget's running total, recomputed from the attempts (what they cost or hold).
_RECOMPUTE_COMMITTED = """UPDATE batch SET committed = COALESCE((
                 SELECT SUM(CASE WHEN a.outcome = 'accepted' AND NOT a.refunded THEN a.credit_cost
                                 WHEN a.outcome IN ('submitting', 'unknown') THEN a.reserved ELSE 0 END)
                 FROM attempt a JOIN job j ON j.id = a.job_id WHERE j.batch = batch.name), 0)"""

_SHARED_ID = ("the API gave this job the id {id}, which another job of this ledger also has (its clip may be "
              "the other's); it was charged. Check its video; `batcher retry --unknown` renders it again, "
              "paying again")


def claim_remote_ids(conn: Connection) -> None:
    """Before remote job ids are unique per API base: of the jobs an older ledger gave one id,
    the first keeps it (under the base '', an older ledger's); every later one is left outside
    the index (no base), with an event saying so, and held as unknown if it is still to be
    polled or downloaded (it would be given the other job's clip)."""
    conn.execute(text("UPDATE job SET api_base = '' WHERE id IN (SELECT MIN(id) FROM job "
                      "WHERE remote_job_id IS NOT NULL GROUP BY remote_job_id)"))
    shared = [(i, st, r) for i, st, r in conn.execute(text(
        "SELECT id, state, remote_job_id FROM job WHERE remote_job_id IS NOT NULL AND api_base IS NULL"))]
    for job_id, state, remote in shared:
        why = _SHARED_ID.format(id=remote)
        held = state in ("submitted", "rendered")
        if held:
            conn.execute(text("UPDATE job SET state = 'unknown', error = :e, owner = NULL, lease_until = NULL, "
                              "lease_token = lease_token + 1 WHERE id = :id"), {"e": why, "id": job_id})
        conn.execute(text("INSERT INTO event (job_id, at, kind, from_state, to_state, detail) "
                          "VALUES (:j, :t, 'duplicate-job-id', :f, :s, :d)"),
                     {"j": job_id, "t": time.time(), "f": state if held else None, "s": "unknown" if held else None,
                      "d": why})


MIGRATIONS: list[Migration] = [
    # Every table of version 1 is made whole by `create` for a new ledger; nothing older exists.
    Migration(1, "initial", []),
    Migration(2, "attempts, generations and render times", [
        create_table(AttemptTable),
        add_column(JobTable, "render_seconds"),
        add_column(JobTable, "generation"),
        add_column(BatchTable, "generation"),
        # A version-1 ledger kept the cost on the job only: carry it over so budgets stay true.
        sql("""INSERT INTO attempt (job_id, number, outcome, reserved, remote_job_id, credit_cost, refunded,
                                    started_at, ended_at)
               SELECT id, 1, CASE WHEN state = 'submitting' THEN 'unknown' ELSE 'accepted' END,
                      estimate, remote_job_id, credit_cost, state = 'failed', COALESCE(submitted_at, created_at),
                      finished_at
               FROM job WHERE remote_job_id IS NOT NULL OR state = 'submitting'"""),
    ]),
    Migration(3, "batch budget", [add_column(BatchTable, "budget")]),
    Migration(4, "leases, fencing tokens and the shared budget's running total", [
        add_column(JobTable, "owner"),
        add_column(JobTable, "lease_until"),
        add_column(JobTable, "lease_token"),
        create_index(JobTable, "job_batch_owner"),
        add_column(BatchTable, "committed"),
        sql(_RECOMPUTE_COMMITTED),
    ]),
    Migration(5, "batches remember whether they were simulated", [add_column(BatchTable, "simulated")]),
    Migration(6, "runners recorded with their host, process and heartbeat", [create_table(RunnerTable)]),
    Migration(7, "reference URLs checked by preflight, with their validators", [create_table(ReferenceTable)]),
    Migration(8, "local reference images: where each was found, and where it was stored",
              [create_table(LocalImageTable), create_table(StoredImageTable)]),
    Migration(9, "jobs carry their model (batches may mix models); models described by the API, cached", [
        add_column(JobTable, "model"),
        sql("UPDATE job SET model = (SELECT b.model FROM batch b WHERE b.name = job.batch) WHERE model IS NULL"),
        create_table(ModelInfoTable),
    ]),
    # Where a local image lies is a cache that every staging writes again: a ledger whose table
    # predates hosts is given the new one, empty, rather than rows no host can vouch for.
    Migration(10, "local images remembered per host", [recreate_without_column(LocalImageTable, "host")]),
    Migration(11, "a batch's control (running, paused, cancelled) and its webhook secret", [
        add_column(BatchTable, "control"),
        add_column(BatchTable, "control_at"),
        add_column(BatchTable, "webhook_secret"),
    ]),
    # Money was floats: a running total that drifts, and one absurd charge (later refunded) that
    # cancelled every charge before it. The total is recomputed from the attempts, exactly.
    Migration(12, "money in exact hundredths of a credit; remote job ids unique per API base", [
        in_hundredths(JobTable, "estimate", "0"),
        in_hundredths(AttemptTable, "reserved", "0"),
        in_hundredths(AttemptTable, "credit_cost", "reserved"),
        in_hundredths(JobTable, "credit_cost", "estimate"),
        in_hundredths(BatchTable, "budget"),
        in_hundredths(BatchTable, "committed", "0"),
        sql(_RECOMPUTE_COMMITTED),
        add_column(JobTable, "api_base"),
        create_index(AttemptTable, "attempt_remote_id"),
        claim_remote_ids,
        create_index(JobTable, "job_remote_id"),
    ]),
    Migration(13, "a completed file's modification time, for quick checks on a rerun", [
        add_column(JobTable, "file_mtime_ns"),
    ]),
    Migration(14, "a job's dataset columns (template variables, meta); curation: rejected clips and rerolls", [
        add_column(JobTable, "row_data"),
        add_column(JobTable, "rejected_at"),
        add_column(JobTable, "reroll_of"),
    ]),
    # Every staging so far was of a whole manifest: its generation is the mark it would have given.
    Migration(15, "jobs marked by the latest staging of the whole manifest: orphans told apart", [
        add_column(BatchTable, "manifest_generation"),
        add_column(JobTable, "manifest_generation"),
        sql("UPDATE batch SET manifest_generation = generation"),
        sql("UPDATE job SET manifest_generation = generation"),
    ]),
]
SCHEMA_VERSION = MIGRATIONS[-1].version


def missing(have: set[int], display: str, target: int = SCHEMA_VERSION) -> list[int]:
    """The versions up to `target` a ledger that recorded `have` lacks; a ledger of a newer
    batcher is refused (LedgerError)."""
    newest = max(have, default=0)
    if newest > SCHEMA_VERSION:
        raise LedgerError(f"{display} was written by a newer batcher (schema {newest}); upgrade batcher")
    return [m.version for m in MIGRATIONS if m.version <= target and m.version not in have]


def upgrade(conn: Connection, now: float, display: str, target: int = SCHEMA_VERSION) -> list[int]:
    """Bring the ledger on `conn` to `target`; returns the versions applied."""
    migrations = _table(SchemaMigration)
    fresh = not inspect(conn).has_table("schema_migrations")
    if fresh and inspect(conn).has_table("job"):
        raise LedgerError(f"{display} has batcher's tables but no schema_migrations: not a ledger batcher wrote")
    migrations.create(conn, checkfirst=True)
    have = {v for (v,) in conn.execute(text("SELECT version FROM schema_migrations"))}
    lacking = missing(have, display, SCHEMA_VERSION if fresh else target)  # a new ledger is made whole
    if not lacking:
        return []
    wanted = [m for m in MIGRATIONS if m.version in lacking]
    if fresh:
        SQLModel.metadata.create_all(conn)  # the whole schema at once; every version is in it
    else:
        for migration in wanted:
            for step in migration.steps:
                step(conn)
    for migration in wanted:
        conn.execute(text("INSERT INTO schema_migrations (version, name, applied_at) VALUES (:v, :n, :t)"),
                     {"v": migration.version, "n": migration.name, "t": now})
    return [m.version for m in wanted]
