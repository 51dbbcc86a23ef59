"""The ledger: batches, jobs, submission attempts, each job's history and the runners working on
them, in one SQLite file (one host) or one PostgreSQL database (many hosts).

    store        opening, upgrading, and running writes (one transaction, or many in one)
    schema       the tables, defined once          migrations   what each version added, by name
    dialect      where the ledger lives; SQLite and PostgreSQL's differences, decided once
    rows         the frozen rows it hands out
    jobs         adding a manifest's jobs; reading jobs, batches, attempts and events
    transitions  every state change, as a write operation (the submission protocol included)
    answers      accepting a submission's answer (in time, late, or from the journal): one operation
    leases       claims, renewals, releases, runners and their heartbeats
    figures      counts, spend, budget outlook, failure reasons
    control      a batch's control word (pause, resume, cancel) and what it does to the jobs
    references   what preflight found at each reference URL; local images and where they are stored
    modelinfo    models the API described, cached
    journal      answers of the API the ledger could not record when they came, kept beside it
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, inspect, text
from sqlalchemy.exc import DBAPIError
from sqlmodel import SQLModel

from ..errors import LedgerError
from .answers import Acceptance, Accepted, Answer, Arrival
from .control import ControlChange, LedgerControl
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
from .fleet import Fleet, LedgerFleet, RunnerStatus
from .journal import LedgerJournal
from .leases import LedgerLeases
from .migrations import MIGRATIONS, SCHEMA_VERSION, Migration
from .modelinfo import LedgerModelInfo
from .references import LedgerReferences
from .rows import (
    Attempt,
    Batch,
    Event,
    Figures,
    Job,
    LocalImage,
    ModelInfo,
    Reference,
    Spend,
    StoredImage,
    from_mapping,
)
from .transitions import LedgerTransitions

__all__ = [
    "DEFAULT_LEDGER", "MIGRATIONS", "SCHEMA_VERSION", "Acceptance", "Accepted", "Answer", "Arrival", "Attempt",
    "Batch", "ControlChange", "Event", "Figures", "Fleet", "Job", "Ledger", "LocalImage", "Migration", "ModelInfo",
    "Reference", "RunnerStatus", "SQLModel", "Spend", "StoredImage", "display_location", "engine_url",
    "is_database_url", "postgres_engine", "read_model_infos", "read_states", "read_stored"
]

T = TypeVar("T")


class Ledger(LedgerJournal, LedgerTransitions, LedgerLeases, LedgerFigures, LedgerReferences, LedgerModelInfo,
             LedgerFleet, LedgerControl):
    """One ledger. Writes return operations (`write`, `write_many`, or the run's group writer
    commit them); reads return frozen rows. Opened for writing (the default), it first records
    what its answer journal holds (`journal_applied` says what), before any command acts on it."""

    def __init__(self, path: str | Path = DEFAULT_LEDGER, **options: Any) -> None:
        super().__init__(path, **options)
        try:
            self.journal_applied = self.apply_journal() if options.get("upgrade", True) else []
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Ledger:
        return self


def read_states(path: str | Path, batch: str) -> dict[str, str] | None:
    """Key -> state for a batch, read without writing anything (None if there is no ledger)."""
    states = _read_only(path, "job", lambda conn: {k: v for k, v in conn.execute(
        text("SELECT key, state FROM job WHERE batch = :b"), {"b": batch})})
    # An SQLite ledger still being created holds no job yet.
    return {} if states is None and not is_database_url(path) and Path(path).exists() else states


def read_stored(path: str | Path, store: str, addresses: list[str]) -> set[str] | None:
    """Which of `addresses` the ledger knows `store` holds, read without writing anything."""
    wanted = set(addresses)
    return _read_only(path, "stored_image", lambda conn: {a for (a,) in conn.execute(
        text("SELECT address FROM stored_image WHERE store = :s"), {"s": store}) if a in wanted})


def read_model_infos(path: str | Path, api_ids: list[str]) -> dict[str, ModelInfo]:
    """The cached descriptions of `api_ids`, read without writing anything."""
    wanted = set(api_ids)
    found = _read_only(path, "model_info", lambda conn: [from_mapping(ModelInfo, row) for row in conn.execute(
        text("SELECT api_id, info, request_schema, fetched_at FROM model_info")).mappings() if row["api_id"] in wanted])
    return {m.api_id: m for m in found or []}


def _read_only(path: str | Path, table: str, read: Callable[[Connection], T]) -> T | None:
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
