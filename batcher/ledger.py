"""The SQLite ledger: batches, jobs, submission attempts and each job's event history.

Every write is one transaction started with `BEGIN IMMEDIATE` (so a writer never fails half
way with SQLITE_BUSY), in WAL mode with `synchronous=FULL` (a commit survives power loss: the
submission intent written before each paid POST must). Writes are compare-and-set on the job's
state and checked against `states.TRANSITIONS`.

The schema is built by an append-only list of migrations recorded in `schema_migrations`;
opening an older ledger applies the missing ones in place.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, TypeVar

from sqlalchemy import Connection, Engine, event, inspect, make_url, text
from sqlalchemy.exc import DBAPIError
from sqlmodel import Field, Session, SQLModel, create_engine, select

from .errors import (
    BatcherError, BudgetExceeded, DiskFullError, IllegalTransition, LeaseLost, LedgerError, SimulationMismatch,
)
from .plan import JobSpec
from .states import JobState, check_move

DEFAULT_LEDGER = "batcher.db"
T = TypeVar("T")


# --- tables (mirroring the migrations below; a test checks they agree) -------------------------

class SchemaMigration(SQLModel, table=True):
    __tablename__ = "schema_migrations"
    version: int = Field(primary_key=True)
    name: str
    applied_at: float


class Batch(SQLModel, table=True):
    __tablename__ = "batch"
    name: str = Field(primary_key=True)
    model: str
    manifest: str
    generation: int = 0
    budget: Optional[float] = None  # the budget of the latest run
    committed: float = 0.0  # credits charged or reserved: the shared budget's running total
    simulated: bool = False  # rendered by the built-in simulator: its clips are not real renders
    created_at: float
    updated_at: float


class Job(SQLModel, table=True):
    __tablename__ = "job"
    id: Optional[int] = Field(default=None, primary_key=True)
    batch: str = Field(foreign_key="batch.name")
    key: str
    seq: int
    generation: int = 0
    row: int
    take: int
    origin: str
    label: str
    params: str  # JSON, manifest names
    estimate: float
    state: str = JobState.PENDING.value
    remote_job_id: Optional[str] = None
    status_url: Optional[str] = None
    credit_cost: Optional[float] = None
    output_url: Optional[str] = None
    output_expires_at: Optional[float] = None
    file_path: Optional[str] = None
    size: Optional[int] = None
    sha256: Optional[str] = None
    error: Optional[str] = None
    attempts: int = 0
    render_seconds: Optional[float] = None
    owner: Optional[str] = None  # the runner holding the lease
    lease_until: Optional[float] = None
    lease_token: int = 0  # fencing token: bumped by every claim; every write checks it
    created_at: float
    updated_at: float
    submitted_at: Optional[float] = None
    finished_at: Optional[float] = None

    @property
    def job_state(self) -> JobState:
        return JobState(self.state)

    def parameters(self) -> dict[str, Any]:
        return json.loads(self.params)


class Attempt(SQLModel, table=True):
    """One submission attempt: the record that says what a job may have cost."""

    __tablename__ = "attempt"
    id: Optional[int] = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="job.id")
    number: int
    outcome: str  # submitting | accepted | unknown | not_sent | rejected
    reserved: float
    remote_job_id: Optional[str] = None
    credit_cost: Optional[float] = None
    refunded: bool = False
    started_at: float
    ended_at: Optional[float] = None


class Event(SQLModel, table=True):
    __tablename__ = "event"
    id: Optional[int] = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="job.id")
    at: float
    kind: str
    from_state: Optional[str] = None
    to_state: Optional[str] = None
    detail: Optional[str] = None


# --- migrations: append only; never edit one that has shipped ----------------------------------

MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (1, "initial", [
        """CREATE TABLE batch (
            name TEXT PRIMARY KEY, model TEXT NOT NULL, manifest TEXT NOT NULL,
            created_at {real} NOT NULL, updated_at {real} NOT NULL)""",
        """CREATE TABLE job (
            id {pk}, batch TEXT NOT NULL REFERENCES batch(name), key TEXT NOT NULL,
            seq INTEGER NOT NULL, row INTEGER NOT NULL, take INTEGER NOT NULL, origin TEXT NOT NULL,
            label TEXT NOT NULL, params TEXT NOT NULL, estimate {real} NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending', remote_job_id TEXT, status_url TEXT,
            credit_cost {real}, output_url TEXT, output_expires_at {real}, file_path TEXT, size BIGINT,
            sha256 TEXT, error TEXT, attempts INTEGER NOT NULL DEFAULT 0,
            created_at {real} NOT NULL, updated_at {real} NOT NULL, submitted_at {real}, finished_at {real},
            UNIQUE (batch, key))""",
        "CREATE INDEX job_batch_state_seq ON job (batch, state, seq)",
        """CREATE TABLE event (
            id {pk}, job_id {ref} NOT NULL REFERENCES job(id), at {real} NOT NULL,
            kind TEXT NOT NULL, from_state TEXT, to_state TEXT, detail TEXT)""",
        "CREATE INDEX event_job ON event (job_id, id)",
    ]),
    (2, "attempts, generations and render times", [
        """CREATE TABLE attempt (
            id {pk}, job_id {ref} NOT NULL REFERENCES job(id), number INTEGER NOT NULL,
            outcome TEXT NOT NULL, reserved {real} NOT NULL, remote_job_id TEXT, credit_cost {real},
            refunded BOOLEAN NOT NULL DEFAULT {false}, started_at {real} NOT NULL, ended_at {real})""",
        "CREATE INDEX attempt_job ON attempt (job_id)",
        "ALTER TABLE job ADD COLUMN render_seconds {real}",
        "ALTER TABLE job ADD COLUMN generation INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE batch ADD COLUMN generation INTEGER NOT NULL DEFAULT 0",
        # A version-1 ledger kept the cost on the job only: carry it over so budgets stay true.
        """INSERT INTO attempt (job_id, number, outcome, reserved, remote_job_id, credit_cost, refunded,
                                started_at, ended_at)
           SELECT id, 1, CASE WHEN state = 'submitting' THEN 'unknown' ELSE 'accepted' END,
                  estimate, remote_job_id, credit_cost, state = 'failed', COALESCE(submitted_at, created_at),
                  finished_at
           FROM job WHERE remote_job_id IS NOT NULL OR state = 'submitting'""",
    ]),
    (3, "batch budget", [
        "ALTER TABLE batch ADD COLUMN budget {real}",
    ]),
    (4, "leases, fencing tokens and the shared budget's running total", [
        "ALTER TABLE job ADD COLUMN owner TEXT",
        "ALTER TABLE job ADD COLUMN lease_until {real}",
        "ALTER TABLE job ADD COLUMN lease_token INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX job_batch_owner ON job (batch, owner)",
        "ALTER TABLE batch ADD COLUMN committed {real} NOT NULL DEFAULT 0",
        """UPDATE batch SET committed = COALESCE((
             SELECT SUM(CASE WHEN a.outcome = 'accepted' AND NOT a.refunded THEN a.credit_cost
                             WHEN a.outcome IN ('submitting', 'unknown') THEN a.reserved ELSE 0 END)
             FROM attempt a JOIN job j ON j.id = a.job_id WHERE j.batch = batch.name), 0)""",
    ]),
    (5, "batches remember whether they were simulated", [
        "ALTER TABLE batch ADD COLUMN simulated BOOLEAN NOT NULL DEFAULT {false}",
    ]),
]

# Column types per database: migrations are written once with these tokens.
DIALECT_TOKENS = {
    "sqlite": {"{pk}": "INTEGER PRIMARY KEY", "{real}": "REAL", "{ref}": "INTEGER", "{false}": "0"},
    "postgresql": {"{pk}": "BIGSERIAL PRIMARY KEY", "{real}": "DOUBLE PRECISION", "{ref}": "BIGINT",
                   "{false}": "FALSE"},
}


def render_ddl(sql: str, dialect: str) -> str:
    for token, value in DIALECT_TOKENS[dialect].items():
        sql = sql.replace(token, value)
    return sql
SCHEMA_VERSION = MIGRATIONS[-1][0]


_ID_OR_NUMBER = re.compile(r"\b(?:job_)?[0-9a-f]*\d[0-9a-f]*\b")
_NAMED = re.compile(r"(?<![:\w]):(\w+)")


@functools.lru_cache(maxsize=256)
def _pyformat(sql: str) -> str:
    """`:name` placeholders (sqlite3's native named style) as psycopg's `%(name)s`."""
    return _NAMED.sub(r"%(\1)s", sql)


def _first_line(exc: Any) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _is_disk_full(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", exc)
    code = getattr(orig, "sqlite_errorcode", None)
    return code == getattr(sqlite3, "SQLITE_FULL", 13) or "disk is full" in str(orig).lower()


@dataclass(frozen=True)
class Spend:
    """Credits a batch has cost, by how sure we are of it."""

    spent: float  # charged by the API and not refunded
    held: float  # reserved for submissions whose outcome is unknown (may have been charged)
    refunded: float

    @property
    def committed(self) -> float:
        return self.spent + self.held


def is_database_url(location: str | Path) -> bool:
    """True for a PostgreSQL URL (postgresql+psycopg://...), False for an SQLite file path."""
    return str(location).startswith(("postgresql", "postgres://"))


def engine_url(location: str) -> Any:
    """A PostgreSQL URL with its driver named (plain postgresql:// means psycopg 3 here)."""
    url = make_url(location)
    return url.set(drivername="postgresql+psycopg") if url.drivername in ("postgresql", "postgres") else url


def postgres_engine(location: str, **options: Any) -> Engine:
    """An engine for a PostgreSQL ledger; a missing driver is a clear LedgerError, not a traceback."""
    try:
        import psycopg  # noqa: F401 - only to learn whether the driver is installed
    except ImportError:
        raise LedgerError(f"the ledger {display_location(location)} is on PostgreSQL, whose driver is not "
                          f"installed: pip install 'batcher[postgres]'") from None
    try:
        return create_engine(engine_url(location), **options)
    except Exception as e:  # noqa: BLE001 - a malformed URL, say; its text may hold the password
        raise LedgerError(f"cannot use ledger {display_location(location)}: {type(e).__name__}") from None


def display_location(location: str | Path) -> str:
    """The ledger's location for messages, with any password hidden."""
    if is_database_url(location):
        try:
            return make_url(str(location)).render_as_string(hide_password=True)
        except Exception:  # noqa: BLE001 - a malformed URL must not leak through an error
            return "postgresql://..."
    return str(location)


class Ledger:
    """One ledger: an SQLite file (one host) or a PostgreSQL database (many hosts).

    Thread-safe: every call takes its own connection from the pool.
    """

    def __init__(self, path: str | Path = DEFAULT_LEDGER, *, clock: Callable[[], float] = time.time,
                 upgrade: bool = True, durable: bool = True):
        self.location = str(path)
        self.postgres = is_database_url(path)
        self.dialect = "postgresql" if self.postgres else "sqlite"
        self.path = Path(path) if not self.postgres else Path("postgresql")
        self.display = display_location(path)
        self.clock = clock
        self._durable = durable
        if self.postgres:
            self.engine: Engine = postgres_engine(self.location, pool_pre_ping=True, pool_size=10, max_overflow=20)
        else:
            try:
                if str(self.path) != ":memory:":
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    # Prompts may be private: the ledger is readable by its owner only.
                    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                    os.close(fd)
            except OSError as e:
                raise LedgerError(f"cannot open ledger {self.path}: {e.strerror or e}") from None
            self.engine = create_engine(
                f"sqlite:///{self.path}", connect_args={"check_same_thread": False, "timeout": 60})
            event.listen(self.engine, "connect", self._on_connect)
            event.listen(self.engine, "begin", self._on_begin)
        try:
            if upgrade:
                self.upgrade()
            elif self.schema_version() == 0:
                raise LedgerError(f"{self.display} is not a batcher ledger")
        except DBAPIError as e:
            self.engine.dispose()
            raise LedgerError(f"cannot open ledger {self.display}: {_first_line(e.orig)}") from None

    def _on_connect(self, dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        # Let SQLAlchemy's begin event issue BEGIN IMMEDIATE instead of pysqlite's deferred BEGIN.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA synchronous={'FULL' if self._durable else 'NORMAL'}")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @staticmethod
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- plumbing ---------------------------------------------------------------------------

    def write(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn` in one write transaction; disk-full becomes DiskFullError."""
        try:
            with self.engine.begin() as conn:
                return fn(conn)
        except DBAPIError as e:
            if _is_disk_full(e):
                raise DiskFullError(f"no space left on the disk holding the ledger {self.display}") from None
            raise LedgerError(f"ledger write failed: {_first_line(e.orig)}") from None

    def write_many(self, fns: list[Callable[[Connection], Any]]) -> list[Any]:
        """Run several writes in one transaction (one fsync for them all).

        Returns each result, or the exception a write raised: that write alone is left out. The
        common case (no write fails) runs them straight; only when one fails are they run again,
        each in its own savepoint. A full disk fails them all.
        """
        class _Retry(Exception):
            pass

        def straight(conn: Connection) -> list[Any]:
            results = []
            for fn in fns:
                try:
                    results.append(fn(conn))
                except DiskFullError:
                    raise
                except BatcherError as e:
                    raise _Retry() from e
            return results

        def guarded(conn: Connection) -> list[Any]:
            results: list[Any] = []
            for fn in fns:
                savepoint = conn.begin_nested()
                try:
                    results.append(fn(conn))
                    savepoint.commit()
                except DiskFullError:
                    raise
                except BatcherError as e:
                    savepoint.rollback()
                    results.append(e)
            return results

        try:
            return self.write(straight)
        except _Retry:
            return self.write(guarded)

    def x(self, conn: Connection, sql: str, params: dict[str, Any] | None = None) -> Any:
        """Run one statement on the hot path straight through the driver (no SQL compilation):
        written once with `:name` placeholders, for both databases."""
        return conn.exec_driver_sql(_pyformat(sql) if self.postgres else sql, params or {})

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            if not inspect(conn).has_table("schema_migrations"):
                return 0
            return conn.exec_driver_sql("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").scalar_one()

    def upgrade(self, target: int = SCHEMA_VERSION) -> list[int]:
        """Apply missing migrations up to `target`; returns the versions applied."""
        def run(conn: Connection) -> list[int]:
            if self.postgres:
                # Runners starting together: one migrates, the others wait and find it done.
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(727274)")
            conn.exec_driver_sql(render_ddl(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at {real} NOT NULL)", self.dialect))
            have = {v for (v,) in conn.exec_driver_sql("SELECT version FROM schema_migrations")}
            newest = max(have, default=0)
            if newest > SCHEMA_VERSION:
                raise LedgerError(f"{self.display} was written by a newer batcher (schema {newest}); "
                                  f"upgrade batcher")
            applied = []
            for version, name, statements in MIGRATIONS:
                if version in have or version > target:
                    continue
                for sql in statements:
                    conn.exec_driver_sql(render_ddl(sql, self.dialect))
                conn.execute(text("INSERT INTO schema_migrations VALUES (:v, :n, :t)"),
                             {"v": version, "n": name, "t": self.clock()})
                applied.append(version)
            return applied
        try:
            return self.write(run)
        except LedgerError as e:
            if "not a database" in str(e):
                raise LedgerError(f"{self.path} is not a batcher ledger (not an SQLite database)") from None
            raise

    # --- batches and jobs ---------------------------------------------------------------------

    def add_jobs(self, batch: str, model: str, manifest: str, jobs: Iterable[JobSpec], chunk: int = 5000,
                 *, simulated: bool = False) -> tuple[int, int]:
        """Add a manifest's jobs; known keys keep their state. Returns (added, already known).

        Marks every job of this manifest with a new generation, so pending jobs that are no longer
        in the manifest are not submitted. A batch remembers whether it is simulated: once anything
        of it was submitted, a run of the other kind is refused (SimulationMismatch), so simulated
        clips never pass for real ones.
        """
        now = self.clock()

        def start(conn: Connection) -> int:
            self._check_mode(conn, batch, simulated)
            conn.execute(text(
                "INSERT INTO batch (name, model, manifest, generation, simulated, created_at, updated_at) "
                "VALUES (:n, :m, :f, 1, :s, :t, :t) ON CONFLICT(name) DO UPDATE SET "
                "generation = batch.generation + 1, manifest = excluded.manifest, simulated = excluded.simulated, "
                "updated_at = excluded.updated_at"),
                {"n": batch, "m": model, "f": manifest, "s": simulated, "t": now})
            return conn.execute(text("SELECT generation FROM batch WHERE name = :n"), {"n": batch}).scalar_one()

        before = self.count_jobs(batch)
        seen = 0

        def insert_all(conn: Connection) -> int:
            nonlocal seen
            generation = start(conn)
            sql = text(
                "INSERT INTO job (batch, key, seq, generation, row, take, origin, label, params, estimate, "
                "state, attempts, created_at, updated_at) VALUES (:batch, :key, :seq, :gen, :row, :take, "
                ":origin, :label, :params, :estimate, 'pending', 0, :t, :t) "
                "ON CONFLICT(batch, key) DO UPDATE SET generation = excluded.generation, "
                "origin = excluded.origin, label = excluded.label, row = excluded.row")
            buf: list[dict[str, Any]] = []
            for job in jobs:
                buf.append({"batch": batch, "key": job.key, "seq": seen, "gen": generation, "row": job.row,
                            "take": job.take, "origin": job.origin, "label": job.label,
                            "params": json.dumps(job.params, ensure_ascii=False), "estimate": job.estimate,
                            "t": now})
                seen += 1
                if len(buf) >= chunk:
                    conn.execute(sql, buf)
                    buf.clear()
            if buf:
                conn.execute(sql, buf)
            return generation

        self.write(insert_all)
        after = self.count_jobs(batch)
        return after - before, seen - (after - before)

    def _check_mode(self, conn: Connection, batch: str, simulated: bool) -> None:
        was = conn.execute(text("SELECT simulated FROM batch WHERE name = :n"), {"n": batch}).scalar()
        if was is None or bool(was) == simulated:
            return
        submitted = conn.execute(text(
            "SELECT COUNT(*) FROM attempt a JOIN job j ON j.id = a.job_id WHERE j.batch = :n"), {"n": batch}).scalar()
        if not submitted:
            return  # nothing was rendered yet: the batch may change sides
        if was:
            raise SimulationMismatch(
                f"batch {batch!r} in {self.display} holds simulated results (from --simulate); a real run would "
                f"take them for real clips. Use another ledger for real renders (--ledger real.db), or rename the "
                f"batch ('batch:' in the manifest)")
        raise SimulationMismatch(
            f"batch {batch!r} in {self.display} holds real, paid results; a simulated run would mix fake clips "
            f"into them. Drop --ledger to let --simulate keep its own ledger, or rename the batch")

    def check_mode(self, batch: str, simulated: bool) -> None:
        """Raise SimulationMismatch if a run of this kind (simulated or real) would mix results."""
        with self.engine.connect() as conn:
            self._check_mode(conn, batch, simulated)

    def is_simulated(self, batch: str) -> bool:
        with self.engine.connect() as conn:
            return bool(conn.execute(text("SELECT simulated FROM batch WHERE name = :n"), {"n": batch}).scalar())

    def generation(self, batch: str) -> int:
        with self.engine.connect() as conn:
            value = conn.execute(text("SELECT generation FROM batch WHERE name = :n"), {"n": batch}).scalar()
            return int(value or 0)

    def set_budget(self, batch: str, budget: float | None) -> None:
        self.write(lambda conn: conn.execute(text("UPDATE batch SET budget = :b WHERE name = :n"),
                                             {"b": budget, "n": batch}))

    def batch(self, name: str) -> Batch | None:
        with self.session() as s:
            return s.get(Batch, name)

    def timings(self, batch: str) -> tuple[float | None, float | None]:
        """(first submission, last update of a finished job) of a batch, epoch seconds."""
        with self.engine.connect() as conn:
            first, last = conn.execute(text(
                "SELECT MIN(submitted_at), MAX(CASE WHEN state IN ('completed', 'failed', 'expired') "
                "THEN updated_at END) FROM job WHERE batch = :b"), {"b": batch}).one()
        return first, last

    def batches(self) -> list[Batch]:
        with self.session() as s:
            return list(s.exec(select(Batch).order_by(Batch.created_at)))

    def count_jobs(self, batch: str) -> int:
        with self.engine.connect() as conn:
            return conn.execute(text("SELECT COUNT(*) FROM job WHERE batch = :b"), {"b": batch}).scalar_one()

    def counts(self, batch: str | None = None, generation: int | None = None) -> dict[str, int]:
        """Jobs per state (every state present, zeros included)."""
        sql = "SELECT state, COUNT(*) FROM job"
        where, args = [], {}
        if batch is not None:
            where.append("batch = :b")
            args["b"] = batch
        if generation is not None:
            where.append("(generation = :g OR state != 'pending')")
            args["g"] = generation
        if where:
            sql += " WHERE " + " AND ".join(where)
        out = {s.value: 0 for s in JobState}
        with self.engine.connect() as conn:
            for state, n in conn.execute(text(sql + " GROUP BY state"), args):
                out[state] = n
        return out

    def counts_by_row(self, batch: str) -> list[tuple[str, str, str, dict[str, int]]]:
        """Per manifest row, in manifest order: (origin, label, the prompt of its first job, jobs per state)."""
        rows: dict[str, dict[str, int]] = {}
        with self.engine.connect() as conn:
            for origin, state, n in conn.execute(text(
                    "SELECT origin, state, COUNT(*) FROM job WHERE batch = :b GROUP BY origin, state "
                    "ORDER BY MIN(seq)"), {"b": batch}):
                rows.setdefault(origin, {})[state] = n
            first = {origin: (label, params) for origin, label, params in conn.execute(text(
                "SELECT origin, label, params FROM job WHERE batch = :b AND seq IN "
                "(SELECT MIN(seq) FROM job WHERE batch = :b GROUP BY origin)"), {"b": batch})}
        out = []
        for origin, counts in rows.items():
            label, params = first.get(origin, ("", "{}"))
            out.append((origin, label, str(json.loads(params).get("prompt", "")), counts))
        return out

    def spend(self, batch: str) -> Spend:
        with self.engine.connect() as conn:
            row = conn.execute(text(
                "SELECT "
                " COALESCE(SUM(CASE WHEN a.outcome = 'accepted' AND NOT a.refunded THEN a.credit_cost END), 0),"
                " COALESCE(SUM(CASE WHEN a.outcome IN ('submitting', 'unknown') THEN a.reserved END), 0),"
                " COALESCE(SUM(CASE WHEN a.outcome = 'accepted' AND a.refunded THEN a.credit_cost END), 0) "
                "FROM attempt a JOIN job j ON j.id = a.job_id WHERE j.batch = :b"), {"b": batch}).one()
        return Spend(float(row[0]), float(row[1]), float(row[2]))

    def downloaded_bytes(self, batch: str) -> tuple[int, int]:
        with self.engine.connect() as conn:
            n, size = conn.execute(text(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM job WHERE batch = :b AND state = 'completed'"),
                {"b": batch}).one()
        return int(n), int(size)

    def get(self, job_id: int) -> Job:
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise LedgerError(f"no job with id {job_id}")
            return job

    def find(self, key_prefix: str, batch: str | None = None) -> list[Job]:
        """Jobs whose key starts with `key_prefix` (a short key as shown in file names works)."""
        with self.session() as s:
            q = select(Job).where(Job.key.startswith(key_prefix))  # type: ignore[attr-defined]
            if batch:
                q = q.where(Job.batch == batch)
            return list(s.exec(q.limit(20)))

    def jobs_in(self, batch: str, states: Iterable[JobState], *, after_seq: int = -1, limit: int = 500,
                generation: int | None = None) -> list[Job]:
        """A page of a batch's jobs in some states, in manifest order (for streaming)."""
        with self.session() as s:
            q = select(Job).where(Job.batch == batch, Job.state.in_([st.value for st in states]),  # type: ignore
                                  Job.seq > after_seq)
            if generation is not None:
                q = q.where(Job.generation == generation)
            return list(s.exec(q.order_by(Job.seq).limit(limit)))

    def iter_batch(self, batch: str | None = None, page: int = 1000) -> Iterator[Job]:
        """Every job (of a batch, or of the ledger), a page at a time."""
        last = 0
        while True:
            with self.session() as s:
                q = select(Job).where(Job.id > last)  # type: ignore[operator]
                if batch:
                    q = q.where(Job.batch == batch)
                chunk = list(s.exec(q.order_by(Job.id).limit(page)))
            if not chunk:
                return
            yield from chunk
            last = chunk[-1].id  # type: ignore[assignment]

    def completed_files(self, batch: str) -> list[tuple[int, str, int | None, str | None]]:
        """(job id, file path, size, sha256) of a batch's completed jobs."""
        with self.engine.connect() as conn:
            return [(i, f, n, h) for i, f, n, h in conn.execute(text(
                "SELECT id, file_path, size, sha256 FROM job WHERE batch = :b AND state = 'completed' "
                "AND file_path IS NOT NULL"), {"b": batch})]

    def file_owners(self, file_path: str) -> list[int]:
        """Jobs (of any batch) whose recorded video is `file_path`."""
        with self.engine.connect() as conn:
            return [i for (i,) in conn.execute(text("SELECT id FROM job WHERE file_path = :f"), {"f": file_path})]

    def events(self, job_id: int) -> list[Event]:
        with self.session() as s:
            return list(s.exec(select(Event).where(Event.job_id == job_id).order_by(Event.id)))

    def attempts(self, job_id: int) -> list[Attempt]:
        with self.session() as s:
            return list(s.exec(select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.id)))

    # --- state changes: each returns a function for write()/write_many() ------------------------

    def move(self, job_id: int, source: JobState, target: JobState, kind: str, detail: str | None = None,
             token: int | None = None, **fields: Any) -> Callable[[Connection], None]:
        """A compare-and-set state change with its event, as a write operation.

        With `token`, the write also requires the job's fencing token to be unchanged: a runner
        whose lease was taken over cannot overwrite the runner that took it.
        """
        check_move(source, target, str(job_id))
        now = self.clock()

        def op(conn: Connection) -> None:
            sets = ", ".join(f"{name} = :f_{name}" for name in fields)
            args = {f"f_{name}": value for name, value in fields.items()}
            args.update({"id": job_id, "src": source.value, "dst": target.value, "t": now, "tok": token})
            fence = " AND lease_token = :tok" if token is not None else ""
            sql = f"UPDATE job SET state = :dst, updated_at = :t{', ' + sets if sets else ''} " \
                  f"WHERE id = :id AND state = :src{fence}"
            if self.x(conn, sql, args).rowcount != 1:
                row = self.x(conn, "SELECT state, lease_token FROM job WHERE id = :id", {"id": job_id}).first()
                if row is not None and token is not None and row[1] != token:
                    raise LeaseLost(f"job {job_id}: another runner holds it now (token {row[1]}, ours {token})")
                raise IllegalTransition(
                    f"job {job_id}: expected state {source.value}, found {row[0] if row else None}; "
                    f"not moving to {target.value}")
            self._event(conn, job_id, kind, source.value, target.value, detail, now)
        return op

    def note(self, job_id: int, kind: str, detail: str | None = None, token: int | None = None, **fields: Any
             ) -> Callable[[Connection], None]:
        """An event (and optional field updates, fenced by `token`) that does not change the state."""
        now = self.clock()

        def op(conn: Connection) -> None:
            if fields:
                sets = ", ".join(f"{name} = :f_{name}" for name in fields)
                args = {f"f_{name}": value for name, value in fields.items()}
                args.update({"id": job_id, "t": now, "tok": token})
                fence = " AND lease_token = :tok" if token is not None else ""
                if self.x(conn, f"UPDATE job SET {sets}, updated_at = :t WHERE id = :id{fence}", args).rowcount != 1:
                    raise LeaseLost(f"job {job_id}: another runner holds it now")
            self._event(conn, job_id, kind, None, None, detail, now)
        return op

    def _event(self, conn: Connection, job_id: int, kind: str, src: str | None, dst: str | None,
               detail: str | None, at: float) -> None:
        self.x(conn, "INSERT INTO event (job_id, at, kind, from_state, to_state, detail) "
                     "VALUES (:j, :a, :k, :s, :d, :x)",
               {"j": job_id, "a": at, "k": kind, "s": src, "d": dst, "x": detail})

    def _lock_batch(self, conn: Connection, batch: str) -> float:
        """The batch's committed credits, locked until the transaction ends (PostgreSQL; SQLite's
        BEGIN IMMEDIATE already serialises writers)."""
        lock = " FOR UPDATE" if self.postgres else ""
        value = conn.execute(text(f"SELECT committed FROM batch WHERE name = :b{lock}"), {"b": batch}).scalar()
        return float(value or 0.0)

    def begin_submission(self, job_id: int, source: JobState, reserved: float, *, token: int | None = None,
                         batch: str | None = None, budget: float | None = None) -> Callable[[Connection], int]:
        """The intent before a paid POST, in one transaction: job -> submitting, an attempt row, and
        the reservation added to the batch's running total, checked against `budget` there, so
        runners on different hosts together never exceed it. Returns the attempt id."""
        move = self.move(job_id, source, JobState.SUBMITTING, "submit-intent", f"reserved {reserved:g} credits",
                         token=token)
        now = self.clock()

        def op(conn: Connection) -> int:
            name = batch or conn.execute(text("SELECT batch FROM job WHERE id = :id"), {"id": job_id}).scalar_one()
            if budget is None:
                move(conn)
            else:
                # This runner's own --budget, against the batch's total of every runner's spending.
                committed = self._lock_batch(conn, name)
                if committed + reserved > budget + 1e-9:
                    raise BudgetExceeded(f"budget reached: {committed:g} of {budget:g} credits committed; the next "
                                         f"job needs {reserved:g}", committed)
                self.move(job_id, source, JobState.SUBMITTING, "submit-intent",
                          f"reserved {reserved:g} credits; batch total {committed + reserved:g} of budget {budget:g}",
                          token=token)(conn)
            number = self.x(conn, "UPDATE job SET attempts = attempts + 1 WHERE id = :id RETURNING attempts",
                            {"id": job_id}).scalar_one()
            self.x(conn, "UPDATE batch SET committed = committed + :r WHERE name = :b", {"r": reserved, "b": name})
            return self.x(conn, "INSERT INTO attempt (job_id, number, outcome, reserved, refunded, started_at) "
                                "VALUES (:j, :n, 'submitting', :r, FALSE, :t) RETURNING id",
                          {"j": job_id, "n": number, "r": reserved, "t": now}).scalar_one()
        return op

    def end_attempt(self, attempt_id: int, outcome: str, *, remote_job_id: str | None = None,
                    credit_cost: float | None = None, known: tuple[str, float, str] | None = None
                    ) -> Callable[[Connection], None]:
        """Record how a submission ended, and move the batch's running total to match.

        `known` = (outcome so far, reserved, batch) saves a lookup when the caller has them."""
        now = self.clock()

        def op(conn: Connection) -> None:
            row = known or conn.execute(text(
                "SELECT a.outcome, a.reserved, j.batch FROM attempt a JOIN job j ON j.id = a.job_id "
                "WHERE a.id = :id"), {"id": attempt_id}).first()
            if row is None:
                raise LedgerError(f"no attempt {attempt_id}")
            before, reserved, batch = row
            delta = 0.0
            if before in ("submitting", "unknown"):
                if outcome == "accepted":
                    delta = (credit_cost or 0.0) - reserved
                elif outcome in ("not_sent", "rejected"):
                    delta = -reserved
            self.x(conn, "UPDATE attempt SET outcome = :o, remote_job_id = COALESCE(:r, remote_job_id), "
                         "credit_cost = COALESCE(:c, credit_cost), ended_at = :t WHERE id = :id",
                   {"o": outcome, "r": remote_job_id, "c": credit_cost, "t": now, "id": attempt_id})
            if delta:
                self.x(conn, "UPDATE batch SET committed = committed + :d WHERE name = :b", {"d": delta, "b": batch})
        return op

    def refund(self, job_id: int) -> Callable[[Connection], None]:
        """The API refunds failed renders: the accepted attempt of the current remote job no longer costs."""
        def op(conn: Connection) -> None:
            costs = [c for (c,) in conn.execute(text(
                "UPDATE attempt SET refunded = TRUE WHERE job_id = :j AND outcome = 'accepted' AND NOT refunded AND "
                "remote_job_id = (SELECT remote_job_id FROM job WHERE id = :j) RETURNING credit_cost"), {"j": job_id})]
            if costs:
                conn.execute(text("UPDATE batch SET committed = committed - :c WHERE name = "
                                  "(SELECT batch FROM job WHERE id = :j)"), {"c": sum(c or 0 for c in costs), "j": job_id})
        return op

    def resolve_unknown(self, job_id: int, remote_job_id: str, status_url: str, credit_cost: float,
                        submitted_at: float) -> Callable[[Connection], bool]:
        """A late answer for a job held as unknown (its runner lost the lease mid-POST): if nobody
        has touched it since, it is submitted after all, and will be polled instead of held."""
        now = self.clock()

        def op(conn: Connection) -> bool:
            moved = self.x(conn, "UPDATE job SET state = 'submitted', remote_job_id = :r, status_url = :u, "
                                 "credit_cost = :c, submitted_at = :s, error = NULL, updated_at = :t "
                                 "WHERE id = :id AND state = 'unknown' AND owner IS NULL",
                           {"r": remote_job_id, "u": status_url, "c": credit_cost, "s": submitted_at, "t": now,
                            "id": job_id}).rowcount == 1
            detail = f"accepted as {remote_job_id} ({credit_cost:g} credits), answered after its runner lost the lease"
            self._event(conn, job_id, "late-answer", "unknown" if moved else None, "submitted" if moved else None,
                        detail, now)
            return moved
        return op

    def recover_interrupted(self, batch: str) -> int:
        """Reap: a job left in `submitting` by a runner that is gone (no lease, or one that expired)
        may have been sent and charged: hold it as `unknown`, never pending again. Its fencing token
        moves on, so the runner that left it cannot write to it if it wakes up."""
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
        return self.write(op)

    # --- leases -------------------------------------------------------------------------------

    def claim(self, batch: str, states: Iterable[JobState], owner: str, lease_seconds: float, limit: int,
              generation: int | None = None) -> list[Job]:
        """Take up to `limit` jobs nobody holds (or whose lease expired), paid work first.

        One statement: each claimed job gets this owner, a lease and a new fencing token
        (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite's BEGIN IMMEDIATE serialises claims).
        """
        now = self.clock()
        wanted = ", ".join(f"'{s.value}'" for s in states)
        skip = " FOR UPDATE SKIP LOCKED" if self.postgres else ""
        gen = " AND (generation = :g OR state != 'pending')" if generation is not None else ""
        sql = (f"UPDATE job SET owner = :o, lease_until = :u, lease_token = lease_token + 1 WHERE id IN ("
               f"SELECT id FROM job WHERE batch = :b AND state IN ({wanted}){gen} AND "
               f"(owner IS NULL OR lease_until IS NULL OR lease_until < :now) "
               f"ORDER BY CASE state WHEN 'rendered' THEN 0 WHEN 'submitted' THEN 1 ELSE 2 END, seq "
               f"LIMIT :n{skip}) RETURNING id")
        ids = self.write(lambda conn: [i for (i,) in conn.execute(text(sql), {
            "o": owner, "u": now + lease_seconds, "b": batch, "now": now, "n": limit, "g": generation})])
        if not ids:
            return []
        with self.session() as s:
            jobs = list(s.exec(select(Job).where(Job.id.in_(ids))))  # type: ignore[union-attr]
        order = {"rendered": 0, "submitted": 1}
        return sorted(jobs, key=lambda j: (order.get(j.state, 2), j.seq))

    def renew(self, batch: str, owner: str, lease_seconds: float) -> int:
        """Extend every lease this runner holds in the batch."""
        until = self.clock() + lease_seconds
        return self.write(lambda conn: conn.execute(text(
            "UPDATE job SET lease_until = :u WHERE batch = :b AND owner = :o"),
            {"u": until, "b": batch, "o": owner}).rowcount)

    def release(self, batch: str, owner: str) -> int:
        """Give up every lease this runner holds (end of run): others may take the jobs at once."""
        return self.write(lambda conn: conn.execute(text(
            "UPDATE job SET owner = NULL, lease_until = NULL WHERE batch = :b AND owner = :o"),
            {"b": batch, "o": owner}).rowcount)

    def owners(self, batch: str) -> list[str]:
        """Runners holding leases in a batch."""
        with self.engine.connect() as conn:
            return [o for (o,) in conn.execute(text(
                "SELECT DISTINCT owner FROM job WHERE batch = :b AND owner IS NOT NULL"), {"b": batch})]

    def expire_owner(self, batch: str, owner: str) -> int:
        """End the leases of a runner known to be dead (same host, process gone)."""
        return self.write(lambda conn: conn.execute(text(
            "UPDATE job SET lease_until = 0 WHERE batch = :b AND owner = :o"), {"b": batch, "o": owner}).rowcount)

    def held_by_others(self, batch: str, owner: str, include_pending: bool = True) -> int:
        """Unfinished jobs other runners hold with live leases (work that may still come back)."""
        states = "'submitting', 'submitted', 'rendered'" + (", 'pending'" if include_pending else "")
        with self.engine.connect() as conn:
            return conn.execute(text(
                "SELECT COUNT(*) FROM job WHERE batch = :b AND owner IS NOT NULL AND owner != :o AND "
                f"lease_until >= :now AND state IN ({states})"),
                {"b": batch, "o": owner, "now": self.clock()}).scalar_one()

    def release_jobs(self, ids: list[int], owner: str) -> int:
        """Give back particular jobs this runner claimed but will not work on."""
        if not ids:
            return 0
        return self.write(lambda conn: conn.execute(text(
            f"UPDATE job SET owner = NULL, lease_until = NULL WHERE owner = :o AND id IN "
            f"({', '.join(str(int(i)) for i in ids)})"), {"o": owner}).rowcount)

    def committed(self, batch: str) -> float:
        """The shared budget's running total for a batch (charged, plus reserved and held)."""
        with self.engine.connect() as conn:
            return float(conn.execute(text("SELECT committed FROM batch WHERE name = :b"), {"b": batch}).scalar() or 0)

    def requeue(self, batch: str, states: Iterable[JobState], reason: str) -> int:
        """Move jobs in `states` back to pending (the user's decision, e.g. `batcher retry`)."""
        wanted = [s for s in states]
        for s in wanted:
            check_move(s, JobState.PENDING)
        now = self.clock()

        def op(conn: Connection) -> int:
            ids = [(i, st) for (i, st) in conn.execute(
                text(f"SELECT id, state FROM job WHERE batch = :b AND state IN "
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
        return self.write(op)

    def held_estimate(self, batch: str) -> tuple[int, float]:
        """How many jobs are held as unknown, and what resubmitting them all may cost."""
        with self.engine.connect() as conn:
            n, credits = conn.execute(text(
                "SELECT COUNT(*), COALESCE(SUM(estimate), 0) FROM job WHERE batch = :b AND state = 'unknown'"),
                {"b": batch}).one()
        return int(n), float(credits)

    def budget_outlook(self, batch: str, generation: int, remaining: float) -> tuple[int, int, float]:
        """(pending jobs, how many of them `remaining` credits cover in the order they are submitted,
        their total estimate), summed in the database: no list of a million estimates in memory."""
        with self.engine.connect() as conn:
            pending, total = conn.execute(text(
                "SELECT COUNT(*), COALESCE(SUM(estimate), 0) FROM job WHERE batch = :b AND state = 'pending' "
                "AND generation = :g"), {"b": batch, "g": generation}).one()
            covered = conn.execute(text(
                "SELECT COUNT(*) FROM (SELECT SUM(estimate) OVER (ORDER BY seq) AS running FROM job "
                "WHERE batch = :b AND state = 'pending' AND generation = :g) AS s WHERE running <= :r"),
                {"b": batch, "g": generation, "r": remaining + 1e-9}).scalar_one()
        return int(pending), int(covered), float(total)

    def failure_groups(self, batch: str, keys_per_group: int = 3) -> list[tuple[str, str, int, list[str]]]:
        """Failed and expired jobs grouped by state and reason: (state, reason, count, a few keys),
        largest group first. Reasons that differ only in ids or numbers are one group."""
        groups: dict[tuple[str, str], list[Any]] = {}
        with self.engine.connect() as conn:
            for state, error, key in conn.execute(text(
                    "SELECT state, error, key FROM job WHERE batch = :b AND state IN ('failed', 'expired') "
                    "ORDER BY seq"), {"b": batch}):
                reason = _ID_OR_NUMBER.sub("#", error or "no reason recorded")[:200]
                group = groups.setdefault((state, reason), [0, []])
                group[0] += 1
                if len(group[1]) < keys_per_group:
                    group[1].append(key)
        ordered = sorted(groups.items(), key=lambda item: -item[1][0])
        return [(state, reason, n, keys) for (state, reason), (n, keys) in ordered]

    def jobs_with_event(self, batch: str, kind: str) -> int:
        """How many jobs of a batch have an event of this kind in their history."""
        with self.engine.connect() as conn:
            return int(conn.execute(text(
                "SELECT COUNT(DISTINCT e.job_id) FROM event e JOIN job j ON j.id = e.job_id "
                "WHERE j.batch = :b AND e.kind = :k"), {"b": batch, "k": kind}).scalar_one())

    def lost_jobs(self, batch: str) -> int:
        """Jobs held as unknown although the API accepted (and charged) them: it no longer knows them."""
        with self.engine.connect() as conn:
            return int(conn.execute(text(
                "SELECT COUNT(*) FROM job j WHERE j.batch = :b AND j.state = 'unknown' AND (SELECT a.outcome "
                "FROM attempt a WHERE a.job_id = j.id ORDER BY a.id DESC LIMIT 1) = 'accepted'"),
                {"b": batch}).scalar_one())

    def average_render_seconds(self, batch: str) -> float | None:
        with self.engine.connect() as conn:
            value = conn.execute(text("SELECT AVG(render_seconds) FROM job WHERE batch = :b AND "
                                      "render_seconds IS NOT NULL"), {"b": batch}).scalar()
        return float(value) if value is not None else None


def read_states(path: str | Path, batch: str) -> dict[str, str] | None:
    """Key -> state for a batch, read without writing anything (None if there is no ledger)."""
    if is_database_url(path):
        engine = postgres_engine(str(path))
        try:
            with engine.connect() as conn:
                if not inspect(conn).has_table("job"):
                    return None
                return {k: v for k, v in conn.execute(text("SELECT key, state FROM job WHERE batch = :b"),
                                                      {"b": batch})}
        except DBAPIError as e:
            raise LedgerError(f"cannot read ledger {display_location(path)}: {_first_line(e.orig)}") from None
        finally:
            engine.dispose()
    path = Path(path)
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return dict(conn.execute("SELECT key, state FROM job WHERE batch = ?", (batch,)))
        finally:
            conn.close()
    except sqlite3.Error as e:
        if "no such table" in str(e):
            return {}  # a ledger still being created
        raise LedgerError(f"cannot read ledger {path}: {e}") from None
