"""The ledger's plumbing: opening (and upgrading) the database, and running writes, one
transaction each or many in one (group commit), with a full disk reported as such."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

from sqlalchemy import Connection, Engine, inspect
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from ..errors import BatcherError, DiskFullError, LedgerError, WriteRefused
from .dialect import (
    DEFAULT_LEDGER,
    WRITE,
    Dialect,
    display_location,
    first_line,
    is_database_url,
    is_disk_full,
    is_retryable,
    postgres_engine,
    sqlite_engine,
)
from .migrations import SCHEMA_VERSION
from .migrations import missing as missing_versions
from .migrations import upgrade as apply_migrations

T = TypeVar("T")
DEADLOCK_RETRIES = 5


class Operation(Generic[T]):
    """One ledger write, not committed yet: the statements of one change, run on a write
    transaction's connection. Only `LedgerStore.write` and `write_many` (the run's group writer
    calls it) commit one; an operation may also run inside another's transaction (`op(conn)`)."""

    __slots__ = ("run",)

    def __init__(self, run: Callable[[Connection], T]) -> None:
        self.run = run

    def __call__(self, conn: Connection) -> T:
        return self.run(conn)

    def __repr__(self) -> str:
        return f"<Operation {self.run.__qualname__.replace('.<locals>', '')}>"


class Unchanged(Operation[T]):
    """An operation with nothing to write (no rows given): committing it opens no transaction."""

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        super().__init__(lambda conn: value)
        self.value = value


def refused_value(e: BaseException) -> WriteRefused | None:
    """A write the database (or its driver) refuses for a value it holds, not for a failing ledger:
    a constraint, a text it cannot store (a NUL for PostgreSQL, a lone surrogate for either). That
    write alone fails, at once; the others in its transaction commit."""
    if isinstance(e, (IntegrityError, DataError)):
        return WriteRefused(f"ledger write refused: {first_line(e.orig)}")
    if isinstance(e, (UnicodeError, ValueError)):
        return WriteRefused(f"ledger write refused: a value the database cannot store ({type(e).__name__})")
    return None


class LedgerStore:
    """One ledger database, SQLite file (one host) or PostgreSQL (many hosts). Thread-safe: every
    call takes its own connection from the pool."""

    def __init__(self, path: str | Path = DEFAULT_LEDGER, *, clock: Callable[[], float] = time.time,
                 upgrade: bool = True, durable: bool = True, busy_timeout: float = 60.0):
        """`busy_timeout`: how long an SQLite write waits for another's lock before it fails (the
        run's group writer then waits out a failing ledger for its own patience)."""
        self.location = str(path)
        self.postgres = is_database_url(path)
        self.sql = Dialect(self.postgres)
        # Runners on other hosts share it: their files are not on this host.
        self.shared = self.postgres
        self.dialect = self.sql.name
        self.path = Path(path) if not self.postgres else Path("postgresql")
        self.display = display_location(path)
        self.clock = clock
        if self.postgres:
            self.engine: Engine = postgres_engine(self.location, pool_pre_ping=True, pool_size=10, max_overflow=20)
        else:
            self.engine = sqlite_engine(self.path, durable, busy_timeout)
        try:
            if upgrade:
                self.upgrade()
            elif self.schema_version() == 0:
                raise LedgerError(f"{self.display} is not a batcher ledger")
        except DBAPIError as e:
            self.engine.dispose()
            raise LedgerError(f"cannot open ledger {self.display}: {first_line(e.orig)}") from None
        except LedgerError:
            self.engine.dispose()
            raise

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def write(self, fn: Callable[[Connection], T]) -> T:
        """Commit an operation (or any `fn` of a connection) in one write transaction; disk-full
        becomes DiskFullError. A transaction the database chose as a deadlock's victim was rolled
        back whole, so it is simply run again."""
        if isinstance(fn, Unchanged):
            return cast(T, fn.value)
        for attempt in range(1, DEADLOCK_RETRIES + 1):
            try:
                with self.engine.connect() as conn, conn.execution_options(**{WRITE: True}).begin():
                    return fn(conn)
            except DBAPIError as e:
                if is_disk_full(e):
                    raise DiskFullError(f"no space left on the disk holding the ledger {self.display}") from None
                if attempt < DEADLOCK_RETRIES and is_retryable(e):
                    time.sleep(random.uniform(0, 0.05 * attempt))  # apart, so they do not meet again
                    continue
                refused = refused_value(e)
                if refused is not None:
                    raise refused from None
                raise LedgerError(f"ledger write failed: {first_line(e.orig)}") from None
        raise AssertionError("unreachable: the last attempt raises or returns")

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
                except Exception as e:
                    if refused_value(e) is None:
                        raise
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
                except Exception as e:
                    refused = refused_value(e)
                    if refused is None:
                        raise
                    savepoint.rollback()
                    results.append(refused)
            return results

        try:
            return self.write(straight)
        except _Retry:
            return self.write(guarded)

    def x(self, conn: Connection, sql: str, params: dict[str, Any] | list[dict[str, Any]] | None = None) -> Any:
        """Run one statement on the hot path straight through the driver (no SQL compilation):
        written once with `:name` placeholders, for both databases."""
        return conn.exec_driver_sql(self.sql.driver_sql(sql), params or {})

    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            if not inspect(conn).has_table("schema_migrations"):
                return 0
            return int(conn.exec_driver_sql("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").scalar_one())

    def upgrade(self, target: int = SCHEMA_VERSION) -> list[int]:
        """Apply missing migrations up to `target`; returns the versions applied. A ledger already
        up to date is only read: `status` or `watch` opening it neither waits for a runner's write
        nor holds one up."""
        def run(conn: Connection) -> list[int]:
            if self.postgres:
                # Runners starting together: one migrates, the others wait and find it done.
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(727274)")
            return apply_migrations(conn, self.clock(), self.display, target)
        try:
            if self._up_to_date(target):
                return []
            return self.write(run)
        except (LedgerError, DBAPIError) as e:
            if "not a database" in str(e):
                raise LedgerError(f"{self.path} is not a batcher ledger (not an SQLite database)") from None
            raise

    def _up_to_date(self, target: int) -> bool:
        """Every migration up to `target` is recorded (a newer batcher's ledger is refused here,
        without waiting for the write lock)."""
        with self.engine.connect() as conn:
            if not inspect(conn).has_table("schema_migrations"):
                return False
            have = {int(v) for (v,) in conn.exec_driver_sql("SELECT version FROM schema_migrations")}
        return not missing_versions(have, self.display, target)

    def _event(self, conn: Connection, job_id: int, kind: str, src: str | None, dst: str | None,
               detail: str | None, at: float) -> None:
        self._events(conn, [job_id], kind, src, dst, detail, at)

    def _events(self, conn: Connection, job_ids: list[int], kind: str, src: str | None, dst: str | None,
                detail: str | None, at: float) -> None:
        """The same event in the history of each of `job_ids`."""
        rows = [{"j": job_id, "a": at, "k": kind, "s": src, "d": dst, "x": detail} for job_id in job_ids]
        self.x(conn, "INSERT INTO event (job_id, at, kind, from_state, to_state, detail) "
                     "VALUES (:j, :a, :k, :s, :d, :x)", rows[0] if len(rows) == 1 else rows)
