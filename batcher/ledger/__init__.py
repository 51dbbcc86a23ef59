"""The ledger: batches, jobs, submission attempts, each job's history and the runners working on
them, in one SQLite file (one host) or one PostgreSQL database (many hosts).

    store        opening, upgrading, and running writes (one transaction, or many in one)
    schema       the tables, defined once          migrations   what each version added, by name
    dialect      where the ledger lives; SQLite and PostgreSQL's differences, decided once
    rows         the frozen rows it hands out
    jobs         adding a manifest's jobs; reading jobs, batches, attempts and events
    transitions  every state change, as a write operation (the submission protocol included)
    leases       claims, renewals, releases, runners and their heartbeats
    figures      counts, spend, budget outlook, failure reasons
    references   what preflight found at each reference URL
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import inspect, text
from sqlalchemy.exc import DBAPIError
from sqlmodel import SQLModel

from ..errors import LedgerError
from .dialect import (
    DEFAULT_LEDGER,
    display_location,
    engine_url,
    first_line,
    is_database_url,
    postgres_engine,
    readonly_sqlite_engine,
)
from .figures import LedgerFigures
from .leases import LedgerLeases
from .migrations import MIGRATIONS, SCHEMA_VERSION, Migration
from .references import LedgerReferences
from .rows import Attempt, Batch, Event, Figures, Job, Reference, Spend
from .transitions import LedgerTransitions

__all__ = [
    "DEFAULT_LEDGER", "MIGRATIONS", "SCHEMA_VERSION", "Attempt", "Batch", "Event", "Figures", "Job", "Ledger",
    "Migration", "Reference", "SQLModel", "Spend", "display_location", "engine_url", "is_database_url",
    "postgres_engine", "read_states"
]


class Ledger(LedgerTransitions, LedgerLeases, LedgerFigures, LedgerReferences):
    """One ledger. Writes return operations (`write`, `write_many`, or the run's group writer
    commit them); reads return frozen rows."""

    def __enter__(self) -> Ledger:
        return self


def read_states(path: str | Path, batch: str) -> dict[str, str] | None:
    """Key -> state for a batch, read without writing anything (None if there is no ledger)."""
    shared = is_database_url(path)
    if not shared and not Path(path).exists():
        return None
    engine = postgres_engine(str(path)) if shared else readonly_sqlite_engine(Path(path))
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("job"):
                return None if shared else {}  # (an SQLite ledger still being created)
            return {k: v for k, v in conn.execute(text("SELECT key, state FROM job WHERE batch = :b"),
                                                  {"b": batch})}
    except DBAPIError as e:
        raise LedgerError(f"cannot read ledger {display_location(path)}: {first_line(e.orig)}") from None
    finally:
        engine.dispose()
