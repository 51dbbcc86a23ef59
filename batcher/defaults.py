"""Where batcher keeps its ledger unless told otherwise, and how a ledger location reads: light
enough for commands that never open a ledger (no SQLAlchemy is imported for them)."""

from __future__ import annotations

from pathlib import Path

DEFAULT_LEDGER = "batcher.db"
# Where --simulate keeps its batches, apart, so simulated clips never pass for real ones.
SIMULATED_LEDGER = "batcher-sim.db"


def is_database_url(location: str | Path) -> bool:
    """True for a PostgreSQL URL (postgresql+psycopg://...), False for an SQLite file path."""
    return str(location).startswith(("postgresql", "postgres://"))
