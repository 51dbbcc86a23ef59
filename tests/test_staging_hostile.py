"""Hostile cases for staging (ledger.jobs.add_rows): a transaction the database rolls back as a
deadlock's victim, run again by the ledger, must not stage only the rows left in a generator."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.exc import DBAPIError

from batcher.errors import LedgerError
from batcher.ledger import Ledger
from batcher.manifest import load_manifest
from batcher.plan import JobRow, job_rows

from .conftest import small_manifest


class _Deadlock(Exception):
    sqlstate = "40P01"  # what PostgreSQL says of a deadlock's victim: `write` runs it again


def _rows_then_deadlock(rows: list[JobRow], after: int) -> Iterator[JobRow]:
    yield from rows[:after]
    raise DBAPIError("INSERT INTO job ...", None, _Deadlock("deadlock detected"))


def test_a_restage_rolled_back_by_a_deadlock_leaves_the_batch_as_it_was(ledger_url, write):
    m = load_manifest(write("m.yaml", small_manifest(n_rows=8)))
    rows = list(job_rows(m))
    with Ledger(ledger_url) as ledger:
        assert ledger.write(ledger.add_rows(m.batch, m.model.api_id, "m.yaml", iter(rows), chunk=2)) == (8, 0, 0)
        generation = ledger.generation(m.batch)
        with pytest.raises(LedgerError, match="deadlock"):
            # Before: the retry read the generator's remaining rows (none), so the batch moved to
            # a new generation holding none of its jobs: every pending job left unsent.
            ledger.write(ledger.add_rows(m.batch, m.model.api_id, "m.yaml", _rows_then_deadlock(rows, 5), chunk=2))
        assert ledger.generation(m.batch) == generation
        assert ledger.count_jobs(m.batch) == 8


def test_rows_given_as_a_function_are_made_anew_when_a_deadlock_victim_is_retried(ledger_url, write):
    """What `api.stage` passes: the retry stages every job, in a new generation that holds them all."""
    m = load_manifest(write("m.yaml", small_manifest(n_rows=8)))
    rows = list(job_rows(m))
    attempts = []

    def make() -> Iterator[JobRow]:
        attempts.append(1)
        return _rows_then_deadlock(rows, 5) if len(attempts) == 1 else iter(rows)
    with Ledger(ledger_url) as ledger:
        assert ledger.write(ledger.add_rows(m.batch, m.model.api_id, "m.yaml", iter(rows), chunk=2)) == (8, 0, 0)
        generation = ledger.generation(m.batch)
        assert ledger.write(ledger.add_rows(m.batch, m.model.api_id, "m.yaml", make, chunk=2)) == (0, 8, 0)
        assert len(attempts) == 2
        assert ledger.generation(m.batch) == generation + 1
        assert ledger.counts(m.batch, generation + 1).get("pending") == 8


def test_rows_of_credits_not_hundredths_are_refused_before_anything_is_written(ledger_url, write):
    """A JobRow's estimate is whole hundredths: a float of credits taken for hundredths would
    reserve a hundredth of each job's price against the budget."""
    m = load_manifest(write("m.yaml", small_manifest(n_rows=3)))
    rows = list(job_rows(m))
    in_credits = [row._replace(estimate=row.estimate / 100) for row in rows]
    with Ledger(ledger_url) as ledger:
        with pytest.raises(TypeError, match="hundredths"):
            ledger.write(ledger.add_rows(m.batch, m.model.api_id, "m.yaml", iter(in_credits)))
        assert ledger.count_jobs(m.batch) == 0
        with pytest.raises(ValueError, match="chunk"):  # (a chunk of none would stage nothing, say nothing)
            ledger.add_rows(m.batch, m.model.api_id, "m.yaml", iter(rows), chunk=0)
        # a row naming no model renders with the batch's, as a job of an older ledger does
        nameless = [row._replace(model="") for row in rows]
        assert ledger.write(ledger.add_rows(m.batch, m.model.api_id, "m.yaml", iter(nameless))).added == 3
        assert {job.model for job in ledger.iter_batch(m.batch)} == {None}
        assert ledger.figures(m.batch, model=m.model.api_id).counts["pending"] == 3


def test_a_staging_that_fails_sets_its_connections_page_cache_back(tmp_path, write):
    m = load_manifest(write("m.yaml", small_manifest(n_rows=6)))
    rows = list(job_rows(m))

    def failing() -> Iterator[JobRow]:
        yield from rows[:3]
        raise RuntimeError("the rows gave out")
    with Ledger(tmp_path / "l.db") as ledger:
        for _ in range(2):  # a second failure reads the cache the first one left: SQLite's default
            with pytest.raises(RuntimeError, match="gave out"):
                ledger.write(ledger.add_rows(m.batch, m.model.api_id, "m.yaml", failing, chunk=2))
        with ledger.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA cache_size").scalar_one() == -2000
        assert ledger.count_jobs(m.batch) == 0


class _Interrupting:
    """A value whose binding is interrupted, as Ctrl-C or SIGTERM interrupts a staging mid-write:
    the KeyboardInterrupt comes from inside the driver's executemany, and SQLAlchemy closes the
    connection it was writing on."""

    def __conform__(self, protocol: object) -> str:
        raise KeyboardInterrupt


def test_a_signal_mid_write_is_what_a_staging_says_though_its_connection_was_closed(tmp_path, write):
    m = load_manifest(write("m.yaml", small_manifest(n_rows=6)))
    rows = list(job_rows(m))
    rows[3] = rows[3]._replace(label=_Interrupting())  # type: ignore[arg-type]  # (a label that cannot be bound)
    with Ledger(tmp_path / "l.db") as ledger:
        with pytest.raises(KeyboardInterrupt):  # not "Cannot operate on a closed database"
            ledger.write(ledger.add_rows(m.batch, m.model.api_id, "m.yaml", iter(rows)))
        assert ledger.count_jobs(m.batch) == 0
        with ledger.engine.connect() as conn:  # the pool's next connection: SQLite's default cache
            assert conn.exec_driver_sql("PRAGMA cache_size").scalar_one() == -2000
