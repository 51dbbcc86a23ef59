"""The SQLite ledger: idempotent adds, transitions, upgrades, permissions."""
from __future__ import annotations

import sqlite3
import stat

import pytest

from batcher.errors import IllegalTransition, LedgerError
from batcher.ledger import MIGRATIONS, SCHEMA_VERSION, Ledger, SQLModel
from batcher.manifest import load_manifest
from batcher.plan import expand
from batcher.states import TRANSITIONS, JobState

from .conftest import MANIFESTS, sqlite_plans


@pytest.fixture
def demo():
    m = load_manifest(MANIFESTS / "demo.yaml")
    return m, expand(m)


def test_add_is_idempotent(ledger_url, demo):
    m, jobs = demo
    with Ledger(ledger_url) as ledger:
        assert ledger.write(ledger.add_jobs(m.batch, m.model.api_id, "demo.yaml", jobs)) == (12, 0, 0)
        assert ledger.write(ledger.add_jobs(m.batch, m.model.api_id, "demo.yaml", jobs)) == (0, 12, 0)
        assert ledger.write(ledger.add_jobs(m.batch, m.model.api_id, "demo.yaml", jobs[:5])) == (0, 5, 0)
        assert ledger.count_jobs(m.batch) == 12
        assert ledger.counts(m.batch)["pending"] == 12


def test_known_keys_keep_their_state(ledger_url, demo):
    m, jobs = demo
    with Ledger(ledger_url) as ledger:
        ledger.write(ledger.add_jobs(m.batch, m.model.api_id, "demo.yaml", jobs))
        job = ledger.jobs_in(m.batch, [JobState.PENDING], limit=1)[0]
        ledger.write(ledger.begin_submission(job.id, JobState.PENDING, 20))
        ledger.write(ledger.add_jobs(m.batch, m.model.api_id, "demo.yaml", jobs))
        assert ledger.get(job.id).state == "submitting"


def test_one_ledger_many_batches(ledger_url, demo):
    m, jobs = demo
    other = load_manifest(MANIFESTS / "dataset.yaml")
    with Ledger(ledger_url) as ledger:
        ledger.write(ledger.add_jobs(m.batch, m.model.api_id, "demo.yaml", jobs))
        ledger.write(ledger.add_jobs(other.batch, other.model.api_id, "dataset.yaml", expand(other)))
        assert {b.name for b in ledger.batches()} == {"knight-and-mare", "animal-dataset"}
        assert ledger.count_jobs("animal-dataset") == 5


def test_transitions_are_enforced(ledger_url, demo):
    m, jobs = demo
    with Ledger(ledger_url) as ledger:
        ledger.write(ledger.add_jobs(m.batch, m.model.api_id, "demo.yaml", jobs))
        job = ledger.jobs_in(m.batch, [JobState.PENDING], limit=1)[0]
        with pytest.raises(IllegalTransition):
            ledger.move(job.id, JobState.PENDING, JobState.COMPLETED, "nope")
        # compare-and-set: the recorded state must be the expected one
        with pytest.raises(IllegalTransition):
            ledger.write(ledger.move(job.id, JobState.SUBMITTED, JobState.RENDERED, "nope"))
        assert ledger.get(job.id).state == "pending"
        attempt = ledger.write(ledger.begin_submission(job.id, JobState.PENDING, 20))
        ledger.write_many([ledger.move(job.id, JobState.SUBMITTING, JobState.SUBMITTED, "accepted",
                                       remote_job_id="r1"),
                           ledger.end_attempt(attempt, "accepted", remote_job_id="r1", credit_cost=20)])
        assert [(e.from_state, e.to_state) for e in ledger.events(job.id)] == [
            ("pending", "submitting"), ("submitting", "submitted")]
        assert ledger.spend(m.batch).spent == 20


def test_every_state_has_a_transition_row():
    assert set(TRANSITIONS) == set(JobState)


def test_crash_in_submitting_becomes_unknown(ledger_url, demo):
    m, jobs = demo
    with Ledger(ledger_url) as ledger:
        ledger.write(ledger.add_jobs(m.batch, m.model.api_id, "demo.yaml", jobs))
        job = ledger.jobs_in(m.batch, [JobState.PENDING], limit=1)[0]
        ledger.write(ledger.begin_submission(job.id, JobState.PENDING, 20))
    with Ledger(ledger_url) as ledger:
        assert ledger.write(ledger.recover_interrupted(m.batch)) == 1
        assert ledger.get(job.id).state == "unknown"
        spend = ledger.spend(m.batch)
        assert spend.held == 20 and spend.spent == 0


def test_ledger_is_private_and_wal(tmp_path):
    path = tmp_path / "l.db"
    Ledger(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_schema_matches_the_table_models(ledger_url):
    from sqlalchemy import inspect
    with Ledger(ledger_url) as ledger:
        inspector = inspect(ledger.engine)
        for table in SQLModel.metadata.sorted_tables:
            actual = {c["name"] for c in inspector.get_columns(table.name)}
            assert actual == {c.name for c in table.columns}, table.name


# The schema of a version-1 ledger, as the first release wrote it (SQLite).
VERSION_1_DDL = [
    """CREATE TABLE batch (
        name TEXT PRIMARY KEY, model TEXT NOT NULL, manifest TEXT NOT NULL,
        created_at REAL NOT NULL, updated_at REAL NOT NULL)""",
    """CREATE TABLE job (
        id INTEGER PRIMARY KEY, batch TEXT NOT NULL REFERENCES batch(name), key TEXT NOT NULL,
        seq INTEGER NOT NULL, row INTEGER NOT NULL, take INTEGER NOT NULL, origin TEXT NOT NULL,
        label TEXT NOT NULL, params TEXT NOT NULL, estimate REAL NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending', remote_job_id TEXT, status_url TEXT,
        credit_cost REAL, output_url TEXT, output_expires_at REAL, file_path TEXT, size BIGINT,
        sha256 TEXT, error TEXT, attempts INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL, updated_at REAL NOT NULL, submitted_at REAL, finished_at REAL,
        UNIQUE (batch, key))""",
    "CREATE INDEX job_batch_state_seq ON job (batch, state, seq)",
    """CREATE TABLE event (
        id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL REFERENCES job(id), at REAL NOT NULL,
        kind TEXT NOT NULL, from_state TEXT, to_state TEXT, detail TEXT)""",
    "CREATE INDEX event_job ON event (job_id, id)",
]


def test_upgrade_from_version_1_keeps_data_and_costs(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                 "applied_at REAL NOT NULL)")
    for sql in VERSION_1_DDL:
        conn.execute(sql)
    conn.execute("INSERT INTO schema_migrations VALUES (1, 'initial', 0)")
    conn.execute("INSERT INTO batch VALUES ('b', 'happyhorse-1.0-r2v', 'm.yaml', 0, 0)")
    conn.execute("INSERT INTO job (batch, key, seq, row, take, origin, label, params, estimate, state, "
                 "remote_job_id, credit_cost, created_at, updated_at) VALUES "
                 "('b', 'k1', 0, 0, 1, 'm.yaml:3', 'row0001', '{}', 20, 'completed', 'r1', 20, 0, 0), "
                 "('b', 'k2', 1, 0, 1, 'm.yaml:4', 'row0001', '{}', 20, 'pending', NULL, NULL, 0, 0)")
    conn.commit()
    conn.close()
    with Ledger(path) as ledger:
        assert ledger.schema_version() == SCHEMA_VERSION
        assert ledger.counts("b")["completed"] == 1
        assert ledger.spend("b").spent == 20
        assert [a.credit_cost for a in ledger.attempts(1)] == [20]
        assert ledger.generation("b") == 0
        assert ledger.batch("b").budget is None
        assert ledger.committed("b") == 20  # the shared budget's running total, backfilled
    applied = sqlite3.connect(path).execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    assert [v for (v,) in applied] == [m[0] for m in MIGRATIONS]


def test_newer_ledger_is_refused(tmp_path):
    path = tmp_path / "l.db"
    Ledger(path).close()
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_migrations VALUES (99, 'future', 0)")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match="newer batcher"):
        Ledger(path)


def test_not_a_database_is_a_clear_error(tmp_path):
    path = tmp_path / "l.db"
    path.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(LedgerError, match=r"not a batcher ledger|cannot open"):
        Ledger(path)


def test_a_job_row_is_frozen_and_evolves_into_a_new_row(ledger_url, demo):
    import dataclasses
    m, jobs = demo
    with Ledger(ledger_url) as ledger:
        ledger.write(ledger.add_jobs(m.batch, m.model.api_id, "demo.yaml", jobs))
        job = ledger.jobs_in(m.batch, [JobState.PENDING], limit=1)[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.state = "completed"
    moved = job.evolve(state="submitting", attempts=1)
    assert (moved.state, moved.attempts, job.state, job.attempts) == ("submitting", 1, "pending", 0)
    assert moved == dataclasses.replace(job, state="submitting", attempts=1)
    with pytest.raises(TypeError):
        job.evolve(no_such_field=1)


def test_only_a_transaction_the_database_rolled_back_whole_is_retried():
    from batcher.ledger.dialect import is_retryable

    class Orig(Exception):
        def __init__(self, sqlstate):
            self.sqlstate = sqlstate

    class Wrapped(Exception):
        def __init__(self, sqlstate):
            self.orig = Orig(sqlstate)

    assert is_retryable(Wrapped("40P01")) and is_retryable(Wrapped("40001"))  # deadlock, serialization
    assert not is_retryable(Wrapped("23505")) and not is_retryable(Wrapped(None))  # a unique violation


def _begins(engine_class_events: list[str]):
    """Record the BEGIN statements every engine issues (the ledger makes its engine itself)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def seen(conn, cursor, statement, *rest):
        if statement.startswith("BEGIN"):
            engine_class_events.append(statement)
    event.listen(Engine, "before_cursor_execute", seen)
    return lambda: event.remove(Engine, "before_cursor_execute", seen)


def test_on_sqlite_only_writes_take_the_lock_and_they_take_it_at_once(tmp_path, demo):
    """A run's progress, `status` and `watch` read while runners write: a read takes no lock (a
    WAL snapshot), so it neither waits behind a write nor holds one up; a write takes the lock at
    its BEGIN, so it never fails half way for want of it."""
    import threading

    from sqlalchemy import text
    m, jobs = demo
    path = tmp_path / "l.db"
    with Ledger(path) as ledger:
        ledger.write(ledger.add_jobs(m.batch, m.model.api_id, "demo.yaml", jobs))
        other = sqlite3.connect(path, timeout=0, isolation_level=None)  # fails at once when locked
        other.execute("BEGIN IMMEDIATE")  # another runner holds the write lock
        other.execute("UPDATE job SET error = 'uncommitted' WHERE id = 1")
        try:
            # Reads go on (a read that waited would fail after the ledger's 60 s busy timeout)
            assert ledger.counts(m.batch)["pending"] == len(jobs)
            assert ledger.get(1).error is None  # the snapshot: the uncommitted write is not seen
            assert ledger.figures(m.batch).jobs == len(jobs)
        finally:
            other.execute("ROLLBACK")
        holding, release = threading.Event(), threading.Event()

        def hold(conn):  # a write that has begun and executed nothing yet
            holding.set()
            release.wait(30)
        writer = threading.Thread(target=ledger.write, args=(hold,))
        writer.start()
        try:
            assert holding.wait(30)
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")  # the write's BEGIN already took the lock
        finally:
            release.set()
            writer.join(30)
        other.close()
        ledger.write(lambda conn: conn.execute(text("UPDATE job SET error = 'w' WHERE id = 1")))
        assert ledger.get(1).error == "w"


def test_opening_an_up_to_date_ledger_only_reads_it(tmp_path):
    """`status` or `watch` opening a ledger neither waits for a runner's write nor holds one up:
    a current ledger is not migrated, so no write transaction begins."""
    path = tmp_path / "l.db"
    begins: list[str] = []
    stop = _begins(begins)
    try:
        Ledger(path).close()  # a new ledger: created in a write transaction
        assert "BEGIN IMMEDIATE" in begins
        begins.clear()
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # a runner's write in progress
        try:
            with Ledger(path) as ledger:
                assert ledger.schema_version() == SCHEMA_VERSION
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert begins and "BEGIN IMMEDIATE" not in begins
    finally:
        stop()


def test_figures_tally_every_state_of_a_batch_and_of_one_model(ledger_url):
    """What status, reports and the gallery show, against the same figures computed from the rows."""
    from sqlalchemy import text

    from batcher.plan import JobSpec
    jobs = [JobSpec(key=f"k{i}", batch="b", row=i, take=1, origin=f"m.yaml:{i + 1}", label="r",
                    params={"prompt": f"p{i}"}, estimate=10 + i, estimate_is_guess=False,
                    model="other-model" if i % 3 == 0 else "") for i in range(12)]
    # (state, submitted_at, updated_at, size, render_seconds) per job; the rest stay pending
    rows = {0: ("completed", 100, 150, 1000, 4.0), 1: ("completed", 90, 160, 3000, 6.5), 2: ("unknown", 95, 96, None,
            None), 3: ("unknown", 120, 121, None, None), 4: ("failed", 80, 170, None, 2.0), 5: ("expired", 85, 165,
            None, None), 6: ("submitted", 70, 71, None, None), 7: ("rendered", 130, 180, None, 3.0)}
    with Ledger(ledger_url) as ledger:
        ledger.write(ledger.add_jobs("b", "happyhorse-1.0-r2v", "m.yaml", jobs))
        with ledger.engine.begin() as conn:
            for i, (state, sub, upd, size, render) in rows.items():
                conn.execute(text("UPDATE job SET state = :s, submitted_at = :a, updated_at = :u, size = :z, "
                                  "render_seconds = :r WHERE batch = 'b' AND key = :k"),
                             {"s": state, "a": sub, "u": upd, "z": size, "r": render, "k": f"k{i}"})
        for model, members in ((None, range(12)), ("other-model", range(0, 12, 3))):
            f = ledger.figures("b", model=model)
            mine = {i: rows.get(i, ("pending", None, None, None, None)) for i in members}
            assert f.counts["pending"] == sum(1 for r in mine.values() if r[0] == "pending")
            assert (f.videos, f.bytes) == (sum(1 for r in mine.values() if r[0] == "completed"),
                                           sum(r[3] for r in mine.values() if r[0] == "completed"))
            assert f.held == sum(1 for r in mine.values() if r[0] == "unknown")
            assert f.held_cost == sum(10 + i for i, r in mine.items() if r[0] == "unknown")
            assert f.first_submitted == min(r[1] for r in mine.values() if r[1] is not None)
            assert f.last_finished == max(r[2] for r in mine.values() if r[0] in ("completed", "failed", "expired"))
            renders = [r[4] for r in mine.values() if r[4] is not None]
            assert f.average_render == pytest.approx(sum(renders) / len(renders))
        assert ledger.figures("nothing").jobs == 0 and ledger.figures("nothing").average_render is None


def test_a_batch_is_read_whole_in_id_order_a_page_at_a_time(ledger_url):
    """Export reads a batch a page at a time: every job once, in the order it was added, whatever
    other batches share the ledger, on both backends."""
    from sqlalchemy import text

    from batcher.plan import JobSpec

    def specs(batch: str, n: int) -> list[JobSpec]:
        return [JobSpec(key=f"{batch}{i}", batch=batch, row=i, take=1, origin=f"m.yaml:{i + 1}", label="r",
                        params={"prompt": f"p{i}"}, estimate=1, estimate_is_guess=False) for i in range(n)]
    with Ledger(ledger_url) as ledger:
        for part in range(3):  # two batches' jobs interleaved in the table
            ledger.write(ledger.add_jobs("a", "happyhorse-1.0-r2v", "a.yaml", specs("a", 7 * (part + 1))))
            ledger.write(ledger.add_jobs("b", "happyhorse-1.0-r2v", "b.yaml", specs("b", 5 * (part + 1))))
        got = [j.key for j in ledger.iter_batch("a", page=4)]
        assert got == [f"a{i}" for i in range(21)]
        with ledger.engine.connect() as conn:
            ids_of_b = [i for (i,) in conn.execute(text("SELECT id FROM job WHERE batch = 'b'"))]
        assert [j.id for j in ledger.iter_batch("b", page=3)] == sorted(ids_of_b)
        assert [j.key for j in ledger.iter_batch("b", page=5)] == [f"b{i}" for i in range(15)]  # pages end flush
        assert list(ledger.iter_batch("no such batch")) == []
        assert len(list(ledger.iter_batch(None, page=5))) == 21 + 15


def test_paging_a_batch_by_id_reads_rowids_in_order_not_a_sort_per_page(tmp_path, demo):
    """SQLite read a batch's rows through an index on `batch` and sorted them all for each page:
    export was quadratic in the batch (100,000 jobs: 1.2 s of sorting, 1,000,000: minutes)."""
    m, jobs = demo
    with Ledger(tmp_path / "l.db") as ledger:
        ledger.write(ledger.add_jobs(m.batch, m.model.api_id, "demo.yaml", jobs))
        read: list[object] = []
        plans = sqlite_plans(ledger, lambda: read.extend(ledger.iter_batch(m.batch, page=5)), "ORDER BY id")
        assert len(read) == len(jobs) and len(plans) <= -(-len(jobs) // 5) + 1
        for plan in plans:
            assert "PRIMARY KEY" in plan and "TEMP B-TREE" not in plan, plan


def test_a_new_ledger_takes_16_kib_pages_and_an_older_one_keeps_its_own(tmp_path, demo):
    from batcher.ledger.dialect import PAGE_SIZE
    m, jobs = demo
    with Ledger(tmp_path / "new.db") as ledger:
        ledger.write(ledger.add_jobs(m.batch, m.model.api_id, "demo.yaml", jobs))
    older = tmp_path / "older.db"
    db = sqlite3.connect(older)  # a ledger an earlier batcher made: SQLite's default pages
    db.execute("PRAGMA journal_mode=WAL")
    db.close()
    with Ledger(older) as ledger:
        ledger.write(ledger.add_jobs(m.batch, m.model.api_id, "demo.yaml", jobs))
        assert ledger.count_jobs(m.batch) == len(jobs)
    sizes = {}
    for name in ("new.db", "older.db"):
        db = sqlite3.connect(tmp_path / name)
        sizes[name] = db.execute("PRAGMA page_size").fetchone()[0]
        db.close()
    assert sizes == {"new.db": PAGE_SIZE, "older.db": 4096} and PAGE_SIZE == 16384
