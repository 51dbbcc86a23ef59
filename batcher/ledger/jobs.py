"""Batches and their jobs: adding a manifest's jobs (known keys keep their state) and reading
jobs, batches, attempts and events back as frozen rows."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple, cast

from sqlalchemy import Connection, text

from ..errors import LedgerError, SimulationMismatch
from ..money import to_hundredths
from ..plan import JobRow, JobSpec, row_of
from ..states import JobState
from .dialect import is_database_url, read_only
from .rows import Attempt, Batch, Event, Job, R, from_mapping
from .store import LedgerStore, Operation

Request = tuple[int, int, str, str, str, str | None]  # seq, id, state, origin, params JSON, model
# job id, file path or s3:// URI, size, sha256, the file's modification time (ns) when it was verified
CompletedFile = tuple[int, str, int | None, str | None, int | None]


def orphan_sql(alias: str = "job", batch: str | None = ":b") -> str:
    """SQL true of an orphan: a job the batch's latest staging of its whole manifest did not mark (no
    row of the current manifest produces it any more: its prompt, seeds, row or reference changed).
    That staging gives every job of the manifest the batch's new manifest_generation; an orphan
    keeps an older one. `batch`: the parameter naming the jobs' batch, whose mark is then read once;
    None for jobs of any batch (each job's own batch's mark)."""
    of = batch if batch is not None else f"{alias}.batch"
    return f"{alias}.manifest_generation < (SELECT ob.manifest_generation FROM batch ob WHERE ob.name = {of})"


def _page(columns: str, states: Iterable[JobState], generation: int | None) -> str:
    """A page of a batch's jobs in some states (of one generation), in manifest order; binds :b,
    :after (the last seq of the page before), :n and :g."""
    wanted = ", ".join(f"'{JobState(s).value}'" for s in states)
    gen = " AND generation = :g" if generation is not None else ""
    return (f"SELECT {columns} FROM job WHERE batch = :b AND state IN ({wanted}) AND seq > :after{gen} "
            "ORDER BY seq LIMIT :n")


def _staging_sql(q: str, whole: bool) -> str:
    """One statement adding jobs (a tuple each, `q` the driver's mark); a key already known keeps
    its state, and a job never sent takes today's estimate (a --rate at the real price, say); the
    staging of a `whole` manifest marks each job its manifest produces."""
    mark = "manifest_generation = excluded.manifest_generation, " if whole else ""
    # A JobRow's columns first, in its order, then the staging's own (see add_rows): one tuple a row.
    return ("INSERT INTO job (key, row, take, origin, label, params, estimate, model, row_data, seq, batch, "
            "generation, created_at, updated_at, manifest_generation, state, attempts, lease_token) VALUES "
            f"({', '.join([q] * 7)}, NULLIF({q}, ''), NULLIF({q}, ''), {', '.join([q] * 6)}, 'pending', 0, 0) "
            f"ON CONFLICT(batch, key) DO UPDATE SET {mark}"
            "generation = excluded.generation, "
            "origin = excluded.origin, label = excluded.label, row = excluded.row, row_data = excluded.row_data, "
            "estimate = CASE WHEN job.state = 'pending' AND job.attempts = 0 THEN excluded.estimate "
            "ELSE job.estimate END")


def _after_staging(conn: Connection, batch: str, generation: int, mark: int) -> None:
    """What a staging settles beside its rows: rerolls and orphans' leases."""
    # A reroll is no row of the manifest, yet part of the batch: it stays current (and one not yet
    # sent stays in this generation, so the run sends it).
    conn.execute(text("UPDATE job SET manifest_generation = :mg WHERE batch = :b AND reroll_of IS NOT NULL"),
                 {"mg": mark, "b": batch})
    conn.execute(text("UPDATE job SET generation = :g WHERE batch = :b AND reroll_of IS NOT NULL "
                      "AND state = 'pending'"), {"g": generation, "b": batch})
    # A runner that claimed a job before this staging orphaned it must not send it: its lease ends
    # and its fencing token moves on, so the intent it would write is refused.
    conn.execute(text("UPDATE job SET owner = NULL, lease_until = NULL, lease_token = lease_token + 1 "
                      "WHERE batch = :b AND state = 'pending' AND owner IS NOT NULL "
                      "AND manifest_generation < :mg"), {"b": batch, "mg": mark})


def _check_estimates(chunk: list[tuple[Any, ...]]) -> None:
    """Every row's estimate (its seventh column) is whole hundredths: an int, not a float of credits."""
    bad = next((row for row in chunk if type(row[6]) is not int), None)
    if bad is not None:
        raise TypeError(f"a job's estimate must be whole hundredths of a credit (an int), got {bad[6]!r}")


def count_orphans(conn: Connection, batch: str, only: str = "", **args: Any) -> int:
    """How many jobs of `batch` no row of its current manifest produces (`only`: a further
    condition, its parameters in `args`)."""
    return int(conn.execute(text(f"SELECT COUNT(*) FROM job WHERE batch = :b AND {orphan_sql()}{only}"),
                            {"b": batch, **args}).scalar_one())


def _count(conn: Connection, batch: str) -> int:
    return int(conn.execute(text("SELECT COUNT(*) FROM job WHERE batch = :b"), {"b": batch}).scalar_one())


class Staged(NamedTuple):
    """What a staging found: jobs new to the ledger, jobs it already held (they keep their state),
    and the batch's orphans after it (jobs no row of the manifest produces: see `orphan_sql`)."""

    added: int
    known: int
    orphans: int


def _next_generation(conn: Connection, batch: str, model: str, manifest: str, simulated: bool, now: float,
                     whole: bool) -> tuple[int, int]:
    """The batch (made if new) staged once more: its new generation, and its manifest generation
    (bumped only by the staging of a `whole` manifest)."""
    conn.execute(text(
        "INSERT INTO batch (name, model, manifest, generation, simulated, committed, created_at, updated_at, "
        "manifest_generation) VALUES (:n, :m, :f, 1, :s, 0, :t, :t, :w) ON CONFLICT(name) DO UPDATE SET "
        "generation = batch.generation + 1, manifest = excluded.manifest, simulated = excluded.simulated, "
        "updated_at = excluded.updated_at, manifest_generation = batch.manifest_generation + :w"),
        {"n": batch, "m": model, "f": manifest, "s": simulated, "t": now, "w": int(whole)})
    row = conn.execute(text("SELECT generation, manifest_generation FROM batch WHERE name = :n"),
                                    {"n": batch}).one()
    return int(row[0]), int(row[1])


class LedgerJobs(LedgerStore):
    def add_jobs(self, batch: str, model: str, manifest: str, jobs: Iterable[JobSpec], chunk: int = 5000,
                 *, simulated: bool = False, whole: bool = False) -> Operation[Staged]:
        """Add a manifest's jobs (built one by one; see `add_rows`)."""
        return self.add_rows(batch, model, manifest, (row_of(job, model) for job in jobs), chunk, simulated=simulated,
                             whole=whole)

    def add_rows(self, batch: str, model: str, manifest: str, rows: Iterable[JobRow] | Callable[[], Iterable[JobRow]],
                 chunk: int = 5000, *, simulated: bool = False, whole: bool = False) -> Operation[Staged]:
        """Add a manifest's jobs, in one transaction; known keys keep their state.

        Marks every job of this manifest with a new generation, so pending jobs that are no longer
        in the manifest are not submitted. A batch remembers whether it is simulated: once anything
        of it was submitted, a run of the other kind is refused (SimulationMismatch), so simulated
        clips never pass for real ones.

        `whole`: the rows are every job of the batch's manifest (a run's staging): they are marked
        with a new manifest generation, and the batch's jobs left unmarked are orphans
        (`orphan_sql`). Otherwise the rows are added to the current manifest's jobs.

        Each row's estimate is in whole hundredths of a credit (`JobRow`; anything else is refused,
        a TypeError, before it is written: credits taken for hundredths would under-reserve the
        budget a hundred times); a row of no model ("") renders with the batch's.
        """
        if chunk < 1:
            raise ValueError(f"chunk must be at least 1, got {chunk}")
        now = self.clock()

        # A deadlock's victim is run again by `write`: rows given as a function are made anew for
        # each attempt; a generator cannot be read twice.
        one_shot = not callable(rows) and iter(rows) is rows
        tried = False

        def insert_all(conn: Connection) -> Staged:
            nonlocal tried
            if tried and one_shot:
                # A second pass would stage only the rest, and its new generation would leave the
                # others unsent. Nothing was written: say so.
                raise LedgerError(f"staging batch {batch!r} was rolled back by the database (a deadlock with "
                                  f"another runner); nothing was staged: run again")
            tried, seen = True, 0
            self._check_mode(conn, batch, simulated)
            before = _count(conn, batch)
            generation, mark = _next_generation(conn, batch, model, manifest, simulated, now, whole)
            # Straight to the driver, many rows a statement, each a tuple: SQLAlchemy's processing
            # of each row's parameters, and the driver's lookup of each by name, cost more than the
            # database's insert.
            sql = _staging_sql(self.sql.mark, whole)
            given = iter(rows() if callable(rows) else rows)
            order, ours = itertools.count(), (batch, generation, now, now, mark)
            with self.sql.roomy_cache(conn):
                # A chunk's rows made in one comprehension, each a JobRow with its manifest order
                # and the staging's columns after it: no statement run per row in Python.
                # (zip stops at the chunk's end: `order` runs on into the next chunk.)
                while buf := [(*job, seq, *ours)
                              for job, seq in zip(itertools.islice(given, chunk), order, strict=False)]:
                    _check_estimates(buf)
                    conn.exec_driver_sql(sql, buf)
                    seen += len(buf)
            if before:  # (a batch new to the ledger has no reroll, and no orphan a runner claimed)
                _after_staging(conn, batch, generation, mark)
            added = _count(conn, batch) - before
            # (a batch new to the ledger has none: no pass over its jobs to count them)
            orphans = count_orphans(conn, batch) if before else 0
            return Staged(added, seen - added, orphans)
        return Operation(insert_all)

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

    def set_budget(self, batch: str, budget: Decimal | None) -> Operation[None]:
        def op(conn: Connection) -> None:
            conn.execute(text("UPDATE batch SET budget = :b WHERE name = :n"), {"b": to_hundredths(budget), "n": batch})
        return Operation(op)

    # --- reads ---------------------------------------------------------------------------------

    def _rows(self, cls: type[R], sql: str, params: dict[str, Any]) -> list[R]:
        with self.engine.connect() as conn:
            return [from_mapping(cls, row) for row in conn.execute(text(sql), params).mappings()]

    def is_simulated(self, batch: str) -> bool:
        info = self.batch(batch)
        return bool(info and info.simulated)

    def generation(self, batch: str) -> int:
        info = self.batch(batch)
        return int(info.generation) if info else 0

    def batch(self, name: str) -> Batch | None:
        found = self._rows(Batch, "SELECT * FROM batch WHERE name = :n", {"n": name})
        return found[0] if found else None

    def batches(self) -> list[Batch]:
        return self._rows(Batch, "SELECT * FROM batch ORDER BY created_at", {})

    def count_jobs(self, batch: str) -> int:
        with self.engine.connect() as conn:
            return _count(conn, batch)

    def get(self, job_id: int) -> Job:
        found = self._rows(Job, "SELECT * FROM job WHERE id = :id", {"id": job_id})
        if not found:
            raise LedgerError(f"no job with id {job_id}")
        return found[0]

    def find(self, key_prefix: str, batch: str | None = None) -> list[Job]:
        """Jobs whose key starts with `key_prefix` (a short key as shown in file names works)."""
        prefix = key_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        where = " AND batch = :b" if batch else ""
        return self._rows(Job, f"SELECT * FROM job WHERE key LIKE :k ESCAPE '\\'{where} ORDER BY id LIMIT 20",
                          {"k": prefix, "b": batch})

    def jobs_in(self, batch: str, states: Iterable[JobState], *, after_seq: int = -1, limit: int = 500,
                generation: int | None = None) -> list[Job]:
        """A page of a batch's jobs in some states, in manifest order (for streaming)."""
        return self._rows(Job, _page("*", states, generation),
                          {"b": batch, "after": after_seq, "n": limit, "g": generation})

    def requests_in(self, batch: str, states: Iterable[JobState], *, after_seq: int = -1, limit: int = 2000,
                    generation: int | None = None) -> list[Request]:
        """(seq, id, state, origin, params JSON, model) for a page of a batch's jobs in some states, in
        manifest order: what a run surveys before it spends, without building a Job of each."""
        sql = self.sql.driver_sql(_page("seq, id, state, origin, params, model", states, generation))
        with self.engine.connect() as conn:
            rows = conn.exec_driver_sql(sql, {"b": batch, "after": after_seq, "n": limit, "g": generation})
            return cast(list[Request], [tuple(row) for row in rows])

    def iter_batch(self, batch: str | None = None, page: int = 1000, *, orphans: bool = True) -> Iterator[Job]:
        """Every job (of a batch, or of the ledger), a page at a time, in the order they were added;
        without the orphans (`orphan_sql`) unless `orphans`.

        Pages walk the ids from the batch's first to its last: read through an index on `batch`,
        each page would sort the whole batch (`Dialect.in_id_order`); bounded, the walk costs the
        batch's span of the table, not the ledger's every row."""
        where, args = "", {}
        if batch:
            with self.engine.connect() as conn:
                first, last_id = conn.execute(text("SELECT MIN(id), MAX(id) FROM job WHERE batch = :b"),
                                              {"b": batch}).one()
            if first is None:
                return
            where, args = " AND id <= :end AND batch = :b", {"end": last_id, "b": batch}
            last = int(first) - 1
        else:
            last = 0
        if not orphans:
            where += f" AND NOT ({orphan_sql(batch=':b' if batch else None)})"
        while True:
            chunk = self._rows(Job, f"SELECT * FROM {self.sql.in_id_order('job')} WHERE id > :last{where} "
                                    "ORDER BY id LIMIT :n", {"last": last, "n": page, **args})
            yield from chunk
            if len(chunk) < page:
                return
            last = chunk[-1].id

    def completed_files(self, batch: str) -> list[CompletedFile]:
        """(job id, file path or s3:// URI, size, sha256, the file's modification time in ns when it
        was verified) of a batch's completed jobs: straight from the driver, as tuples (a rerun of
        a large batch reads every one of them before it starts)."""
        sql = self.sql.driver_sql("SELECT id, file_path, size, sha256, file_mtime_ns FROM job WHERE batch = :b "
                                  "AND state = 'completed' AND file_path IS NOT NULL")
        with self.engine.connect() as conn:
            return cast(list[CompletedFile], [tuple(row) for row in conn.exec_driver_sql(sql, {"b": batch})])

    def last_event_details(self, batch: str | None, kind: str) -> dict[int, str | None]:
        """Job id -> the detail of its latest event of `kind`, for a batch (or the ledger) in one
        read: an export's per-job facts without a query per job."""
        where = "e.kind = :k" + (" AND j.batch = :b" if batch is not None else "")
        with self.engine.connect() as conn:
            return {int(job_id): detail for job_id, detail in conn.execute(text(
                f"SELECT e.job_id, e.detail FROM event e JOIN job j ON j.id = e.job_id WHERE {where} ORDER BY e.id"),
                {"k": kind, "b": batch})}

    def events(self, job_id: int) -> list[Event]:
        return self._rows(Event, "SELECT * FROM event WHERE job_id = :j ORDER BY id", {"j": job_id})

    def attempts(self, job_id: int) -> list[Attempt]:
        return self._rows(Attempt, "SELECT * FROM attempt WHERE job_id = :j ORDER BY id", {"j": job_id})


def read_origins(path: str | Path, batch: str, keys: Iterable[str]) -> dict[str, tuple[str, str, str]]:
    """Key -> (state, origin, label) of some of a batch's jobs, read without writing anything
    (nothing if there is no ledger): the rows the ledger recorded for them."""
    wanted = set(keys)
    found = read_only(path, "job", lambda conn: {k: (s, o, lb) for k, s, o, lb in conn.execute(
        text("SELECT key, state, origin, label FROM job WHERE batch = :b"), {"b": batch}) if k in wanted})
    return found or {}


def read_states(path: str | Path, batch: str) -> dict[str, str] | None:
    """Key -> state for a batch, read without writing anything (None if there is no ledger)."""
    states = read_only(path, "job", lambda conn: {k: v for k, v in conn.execute(
        text("SELECT key, state FROM job WHERE batch = :b"), {"b": batch})})
    # An SQLite ledger still being created holds no job yet.
    return {} if states is None and not is_database_url(path) and Path(path).exists() else states
