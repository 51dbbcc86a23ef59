"""The ledger: batches, jobs, submission attempts, each job's history and the runners working on
them, in one SQLite file (one host) or one PostgreSQL database (many hosts).

Every write is an `Operation`, committed only by `Ledger.write` (or `write_many`, which the run's
group writer calls). Why: the run must commit many jobs' writes together, so operations stay; methods
that committed by themselves looked the same at a call site, and a forgotten commit failed silently.
Now an uncommitted result used is a type error, and one dropped fails tests/test_ledger_convention.py.
(Only opening commits by itself: `upgrade`, and `apply_journal`, which empties its file after.)

    store        opening, upgrading, and committing operations (one transaction, or many in one)
    schema       the tables, defined once          migrations   what each version added, by name
    dialect      where the ledger lives; SQLite and PostgreSQL's differences, decided once
    rows         the frozen rows it hands out
    jobs         adding a manifest's jobs; reading jobs, batches, attempts and events
    transitions  every state change, as a write operation (the submission protocol included)
    answers      accepting a submission's answer (in time, late, or from the journal): one operation
    leases       claims, renewals, releases, runners and their heartbeats
    figures      counts, spend, budget outlook, failure reasons
    control      a batch's control word (pause, resume, cancel) and what it does to the jobs
    curation     clips rejected from exports; rerolls, new takes of a request
    orphans      jobs no row of the current manifest produces: counted, named, pruned
    references   what preflight found at each reference URL; local images and where they are stored
    modelinfo    models the API described, cached
    journal      answers of the API the ledger could not record when they came, kept beside it
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlmodel import SQLModel

from .answers import Acceptance, Accepted, Answer, Arrival
from .control import ControlChange, LedgerControl
from .curation import LedgerCuration, Reroll
from .dialect import DEFAULT_LEDGER, display_location, engine_url, is_database_url, postgres_engine
from .figures import LedgerFigures
from .fleet import Fleet, LedgerFleet, RunnerStatus
from .jobs import Staged, read_origins, read_states
from .journal import LedgerJournal
from .leases import LedgerLeases
from .migrations import MIGRATIONS, SCHEMA_VERSION, Migration
from .modelinfo import LedgerModelInfo, read_model_infos
from .orphans import LedgerOrphans, OrphanRow, Orphans, Pruned
from .references import LedgerReferences, read_stored
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
)
from .store import Operation
from .transitions import LedgerTransitions

__all__ = [
    "DEFAULT_LEDGER", "MIGRATIONS", "SCHEMA_VERSION", "Acceptance", "Accepted", "Answer", "Arrival", "Attempt",
    "Batch", "ControlChange", "Event", "Figures", "Fleet", "Job", "Ledger", "LocalImage", "Migration", "ModelInfo",
    "Operation", "OrphanRow", "Orphans", "Pruned", "Reference", "Reroll", "RunnerStatus", "SQLModel", "Spend", "Staged",
    "StoredImage", "display_location", "engine_url", "is_database_url", "postgres_engine", "read_model_infos",
    "read_origins", "read_states", "read_stored"
]


class Ledger(LedgerJournal, LedgerTransitions, LedgerLeases, LedgerFigures, LedgerReferences, LedgerModelInfo,
             LedgerFleet, LedgerOrphans, LedgerControl, LedgerCuration):
    """One ledger. Writes return operations (`write`, `write_many`, or the run's group writer
    commit them; nothing else does); reads return frozen rows. Opened for writing (the default),
    it first records what its answer journal holds (`journal_applied` says what), before any
    command acts on it."""

    def __init__(self, path: str | Path = DEFAULT_LEDGER, **options: Any) -> None:
        super().__init__(path, **options)
        try:
            self.journal_applied = self.apply_journal() if options.get("upgrade", True) else []
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Ledger:
        return self
