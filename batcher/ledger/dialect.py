"""Where the ledger lives and how its two databases differ, decided once: SQLite (one host, a
file) or PostgreSQL (many hosts, a URL). Everything that depends on which one it is lives here.
"""

from __future__ import annotations

import functools
import os
import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, event, inspect, make_url
from sqlalchemy.exc import DBAPIError
from sqlmodel import create_engine

from ..defaults import DEFAULT_LEDGER as DEFAULT_LEDGER
from ..defaults import is_database_url as is_database_url
from ..errors import LedgerError

T = TypeVar("T")
# A new ledger's page size. SQLite's default of 4 KiB holds a few jobs a page (each carries its
# parameters and row data as JSON); 16 KiB pages mean fewer pages and shallower indexes: staging
# 104,000 jobs with bare sqlite3 0.63-0.69 s against 0.87-0.95 s, and the runner's small commits
# faster too (`bench overhead`, 4,000 jobs: 228-246 jobs/s against 199-203).
PAGE_SIZE = 16384
BULK_CACHE_KIB = 64 * 1024  # SQLite's page cache for a bulk write (the default: 2,000 KiB)
_NAMED = re.compile(r"(?<![:\w]):(\w+)")


def engine_url(location: str) -> Any:
    """A PostgreSQL URL with its driver named (plain postgresql:// means psycopg 3 here)."""
    url = make_url(location)
    return url.set(drivername="postgresql+psycopg") if url.drivername in ("postgresql", "postgres") else url


def display_location(location: str | Path) -> str:
    """The ledger's location for messages, with any password hidden."""
    if is_database_url(location):
        try:
            return make_url(str(location)).render_as_string(hide_password=True)
        except Exception:  # a malformed URL must not leak through an error
            return "postgresql://..."
    return str(location)


def postgres_engine(location: str, **options: Any) -> Engine:
    """An engine for a PostgreSQL ledger; a missing driver is a clear LedgerError, not a traceback."""
    try:
        import psycopg  # noqa: F401 - only to learn whether the driver is installed
    except ImportError:
        raise LedgerError(f"the ledger {display_location(location)} is on PostgreSQL, whose driver is not "
                          f"installed: pip install 'batcher[postgres]'") from None
    try:
        return create_engine(engine_url(location), **options)
    except Exception as e:  # a malformed URL, say; its text may hold the password
        raise LedgerError(f"cannot use ledger {display_location(location)}: {type(e).__name__}") from None


WRITE = "batcher_write"  # the execution option `LedgerStore.write` marks its transactions with


def sqlite_engine(path: Path, durable: bool, busy_timeout: float = 60.0) -> Engine:
    """An engine for an SQLite ledger file, created readable by its owner only.

    WAL mode (many readers, one writer), foreign keys on, `synchronous=FULL` when durable (a
    commit survives power loss: the intent before each paid POST must). A write transaction (one
    marked `WRITE`) begins IMMEDIATE, so a writer never fails half way with SQLITE_BUSY; any other
    begins deferred and reads a snapshot, taking no lock.
    """
    try:
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # prompts may be private
            os.close(fd)
    except OSError as e:
        raise LedgerError(f"cannot open ledger {path}: {e.strerror or e}") from None
    engine = create_engine(f"sqlite:///{path}", connect_args={"check_same_thread": False,
                                                                 "timeout": busy_timeout})

    def on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        # Let the begin event below issue the BEGIN, not pysqlite's implicit transactions.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA page_size={PAGE_SIZE}")  # a new file's (before WAL); an existing one keeps its own
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        cur.close()

    def on_begin(conn: Connection) -> None:
        # A write takes the write lock at once (a read that later wrote could fail to upgrade);
        # a read takes none: in WAL it reads a snapshot, so `status`, `watch` and a run's progress
        # never hold up a runner's commits (nor wait in SQLite's busy handler behind them).
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE) else "BEGIN")

    event.listen(engine, "connect", on_connect)
    event.listen(engine, "begin", on_begin)
    return engine


def readonly_sqlite_engine(path: Path) -> Engine:
    """An engine that only reads an SQLite ledger (it never creates the file or a journal)."""
    return create_engine("sqlite://", creator=lambda: sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                                                      check_same_thread=False))


@dataclass(frozen=True)
class Dialect:
    """The differences between the two databases, as the queries need them."""

    postgres: bool

    @property
    def name(self) -> str:
        return "postgresql" if self.postgres else "sqlite"

    @property
    def lock_row(self) -> str:
        """Lock a row read in a write transaction (SQLite's BEGIN IMMEDIATE already serialises)."""
        return " FOR UPDATE" if self.postgres else ""

    def in_id_order(self, table: str) -> str:
        """`table` for a query that pages through it by id: SQLite would rather read a batch's rows
        through an index on `batch` and sort them all for every page (quadratic in the batch);
        told to use no index, it reads the rowids in order from the last page on."""
        return table if self.postgres else f"{table} NOT INDEXED"

    @property
    def skip_locked(self) -> str:
        """Claim rows other runners are not claiming at this moment (SQLite: one writer anyway)."""
        return " FOR UPDATE SKIP LOCKED" if self.postgres else ""

    def json_value(self, column: str, key: str) -> str:
        """One top-level value of a JSON text column, as the driver returns it: a number or text
        (SQLite's json_extract; PostgreSQL's jsonb, which psycopg decodes alike). `key` must be a
        plain name: it is written into the SQL."""
        if not re.fullmatch(r"\w+", key):
            raise ValueError(f"not a plain JSON key: {key!r}")
        return f"(CAST({column} AS jsonb) -> '{key}')" if self.postgres else f"json_extract({column}, '$.{key}')"

    @property
    def mark(self) -> str:
        """The driver's positional placeholder, for rows sent as tuples (no name looked up per value)."""
        return "%s" if self.postgres else "?"

    def driver_sql(self, sql: str) -> str:
        """`:name` placeholders (sqlite3's native style) in the driver's own style."""
        return _pyformat(sql) if self.postgres else sql

    @contextmanager
    def roomy_cache(self, conn: Connection) -> Iterator[None]:
        """A write of many rows with room in memory for the indexes' pages: SQLite's 2 MB page cache
        spills the unique (batch, key) index of a 100,000-job staging (keys are hashes: each
        insert lands on a random page) and reads it back from the file (a staging of 104,000
        jobs: about 0.1 s of its 1.1 s). Set back after, even after a failure (through the
        driver's connection: SQLAlchemy's refuses statements in a failed transaction), since the
        connection returns to the pool; unless the failure closed it (a signal mid-write: SQLAlchemy
        drops the connection), when there is nothing to set back and the failure is what is said.
        PostgreSQL's cache is the server's."""
        if self.postgres:
            yield
            return
        driver = conn.connection.driver_connection
        assert driver is not None  # (a connection in use)
        was = driver.execute("PRAGMA cache_size").fetchone()[0]
        driver.execute(f"PRAGMA cache_size=-{BULK_CACHE_KIB}")
        try:
            yield
        finally:
            with suppress(sqlite3.ProgrammingError):  # (closed: "Cannot operate on a closed database")
                driver.execute(f"PRAGMA cache_size={int(was)}")


@functools.lru_cache(maxsize=256)
def _pyformat(sql: str) -> str:
    return _NAMED.sub(r"%(\1)s", sql)


def first_line(exc: Any) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def is_retryable(exc: BaseException) -> bool:
    """A transaction rolled back whole by the database (PostgreSQL's deadlock victim or
    serialization failure; SQLite's busy timeout already waits): safe to run again."""
    return getattr(getattr(exc, "orig", exc), "sqlstate", None) in ("40P01", "40001")


def is_disk_full(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", exc)
    code = getattr(orig, "sqlite_errorcode", None)
    return code == getattr(sqlite3, "SQLITE_FULL", 13) or "disk is full" in str(orig).lower()


def read_only(path: str | Path, table: str, read: Callable[[Connection], T]) -> T | None:
    """What `read` finds in a ledger opened read-only (None if there is no ledger; an empty
    result of `read`'s kind when its table is not there yet)."""
    shared = is_database_url(path)
    if not shared and not Path(path).exists():
        return None
    engine = postgres_engine(str(path)) if shared else readonly_sqlite_engine(Path(path))
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(table):
                return None
            return read(conn)
    except DBAPIError as e:
        raise LedgerError(f"cannot read ledger {display_location(path)}: {first_line(e.orig)}") from None
    finally:
        engine.dispose()
