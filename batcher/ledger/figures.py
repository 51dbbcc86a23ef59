"""A batch's figures: jobs per state (and per row), what it has cost, what is held, what the
budget will still cover, why jobs failed, how long renders take."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any, NamedTuple

from sqlalchemy import text

from ..money import ZERO, from_hundredths, to_hundredths
from ..states import JobState
from .jobs import LedgerJobs, count_orphans, orphan_sql
from .rows import Figures, Spend

_ID_OR_NUMBER = re.compile(r"\b(?:job_)?[0-9a-f]*\d[0-9a-f]*\b")


def job_model(alias: str = "job") -> str:
    """SQL for the model a job renders with: its own, else (a job an older ledger wrote) its batch's."""
    return f"COALESCE({alias}.model, (SELECT bm.model FROM batch bm WHERE bm.name = {alias}.batch))"


# The same, in a query that joins `job j` to its `batch b` (to group by it).
_JOINED = "COALESCE(j.model, b.model)"


def _only(model: str | None, alias: str = "job") -> str:
    """A condition keeping one model's jobs (nothing when `model` is None); binds :model."""
    return f" AND {job_model(alias)} = :model" if model is not None else ""


class StateTally(NamedTuple):
    """The jobs of a batch in one state."""

    jobs: int
    estimate: Decimal  # what they are estimated to cost
    bytes: int  # of their videos on disk
    first_submitted: float | None
    last_update: float | None
    render_seconds: float  # summed over the renders timed
    renders: int  # how many were timed
    current: int  # of them, the current manifest's (of the generation asked for, when pending)
    orphans: int  # of them, those no row of the current manifest produces


_NONE = StateTally(0, ZERO, 0, None, None, 0.0, 0, 0, 0)  # a state no job is in
_FINISHED = {JobState.COMPLETED.value, JobState.FAILED.value, JobState.EXPIRED.value}


def _credits(hundredths: Any) -> Decimal:
    """A sum the database made of hundredths, as credits (an empty sum is 0)."""
    return from_hundredths(hundredths) or ZERO


class LedgerFigures(LedgerJobs):
    def figures(self, batch: str, generation: int | None = None, *, model: str | None = None) -> Figures:
        """Everything status, a run's report and the gallery show about a batch; with `model`, about
        that model's jobs only (then `committed` is what they charged and hold, not the batch's total).
        Its jobs per state are those of the current manifest: orphans are counted apart (`orphans`)."""
        tallies = self._tallies(batch, generation, model)
        held, done = tallies.get(JobState.UNKNOWN.value, _NONE), tallies.get(JobState.COMPLETED.value, _NONE)
        timed = sum(t.renders for t in tallies.values())
        spend = self.spend(batch, model=model)
        # as `counts(batch, generation, model=model, orphans=False)` and `orphan_jobs` count them
        counts = {s.value: 0 for s in JobState} | {s: t.current for s, t in tallies.items() if t.current}
        return Figures(
            self.batch(batch), counts, spend, held.jobs, held.estimate,
            self.lost_jobs(batch, model=model) if held.jobs else 0, done.jobs, done.bytes,
            sum(t.render_seconds for t in tallies.values()) / timed if timed else None,
            self.committed(batch) if model is None else spend.committed,
            self.jobs_with_event(batch, "cost-untrusted", model=model),
            min((t.first_submitted for t in tallies.values() if t.first_submitted is not None), default=None),
            max((t.last_update for s, t in tallies.items() if s in _FINISHED and t.last_update is not None),
                default=None),
            sum(t.orphans for t in tallies.values()))

    def last_activity(self, batch: str) -> float | None:
        """When anything last happened to the batch: a job changed, or it was staged."""
        with self.engine.connect() as conn:
            job, staged = conn.execute(text("SELECT (SELECT MAX(updated_at) FROM job WHERE batch = :b), "
                                            "(SELECT updated_at FROM batch WHERE name = :b)"), {"b": batch}).one()
        return max((t for t in (job, staged) if t is not None), default=None)

    def orphan_jobs(self, batch: str, *, model: str | None = None) -> int:
        """How many jobs of the batch no row of its current manifest produces (of `model`'s, if given)."""
        with self.engine.connect() as conn:
            return count_orphans(conn, batch, _only(model), model=model)

    def _tallies(self, batch: str, generation: int | None, model: str | None) -> dict[str, StateTally]:
        """Each state's tally, its jobs of the current manifest (`generation`: as `counts` takes
        it) and its orphans among them, in one pass that reads the jobs in the state index's order
        (a 100,000-job batch: about 60 ms; reached through the (batch, key) index instead, whose
        hash order visits the rows at random, each of its figures alone took 120 ms)."""
        orphan = orphan_sql()
        current = f"NOT ({orphan})" + (" AND (generation = :g OR state != 'pending')" if generation is not None else "")
        with self.engine.connect() as conn:
            return {str(state): StateTally(int(n), _credits(estimate), int(size), first, last, float(rendered),
                                           int(timed), int(now), int(orphans))
                    for state, n, estimate, size, first, last, rendered, timed, orphans, now in conn.execute(text(
                        "SELECT state, COUNT(*), COALESCE(SUM(estimate), 0), COALESCE(SUM(size), 0), "
                        "MIN(submitted_at), MAX(updated_at), COALESCE(SUM(render_seconds), 0), "
                        f"COUNT(render_seconds), SUM(CASE WHEN {orphan} THEN 1 ELSE 0 END), "
                        f"SUM(CASE WHEN {current} THEN 1 ELSE 0 END) FROM job WHERE batch = :b" + _only(model)
                        + " GROUP BY state"), {"b": batch, "g": generation, "model": model})}

    def counts(self, batch: str | None = None, generation: int | None = None, *,
               model: str | None = None, orphans: bool = True) -> dict[str, int]:
        """Jobs per state (every state present, zeros included); of one model's jobs if `model`;
        without the orphans (jobs no row of the current manifest produces) unless `orphans`."""
        sql = "SELECT state, COUNT(*) FROM job"
        where: list[str] = []
        args: dict[str, Any] = {}
        if batch is not None:
            where.append("batch = :b")
            args["b"] = batch
        if generation is not None:
            where.append("(generation = :g OR state != 'pending')")
            args["g"] = generation
        if model is not None:
            where.append(f"{job_model()} = :model")
            args["model"] = model
        if not orphans:
            where.append(f"NOT ({orphan_sql(batch=':b' if batch is not None else None)})")
        if where:
            sql += " WHERE " + " AND ".join(where)
        out = {s.value: 0 for s in JobState}
        with self.engine.connect() as conn:
            for state, n in conn.execute(text(sql + " GROUP BY state"), args):
                out[state] = n
        return out

    def spend(self, batch: str, *, model: str | None = None) -> Spend:
        with self.engine.connect() as conn:
            row = conn.execute(text(
                "SELECT "
                " COALESCE(SUM(CASE WHEN a.outcome = 'accepted' AND NOT a.refunded THEN a.credit_cost END), 0),"
                " COALESCE(SUM(CASE WHEN a.outcome IN ('submitting', 'unknown') THEN a.reserved END), 0),"
                " COALESCE(SUM(CASE WHEN a.outcome = 'accepted' AND a.refunded THEN a.credit_cost END), 0) "
                "FROM attempt a JOIN job j ON j.id = a.job_id WHERE j.batch = :b" + _only(model, "j")),
                {"b": batch, "model": model}).one()
        return Spend(_credits(row[0]), _credits(row[1]), _credits(row[2]))

    def committed(self, batch: str) -> Decimal:
        """The shared budget's running total for a batch (charged, plus reserved and held)."""
        with self.engine.connect() as conn:
            return _credits(conn.execute(text("SELECT committed FROM batch WHERE name = :b"), {"b": batch}).scalar())

    def budget_outlook(self, batch: str, generation: int, remaining: Decimal) -> tuple[int, int, Decimal]:
        """(pending jobs, how many of them `remaining` credits cover in the order they are submitted,
        their total estimate). The covered ones are read in submission order from the state index
        until the credits run out: no list of a million estimates in memory, and a small budget
        reads a few rows, not a running sum over every pending job. (In hundredths: exact.)"""
        room = to_hundredths(remaining) or 0
        with self.engine.connect() as conn:
            pending, total = conn.execute(text(
                "SELECT COUNT(*), COALESCE(SUM(estimate), 0) FROM job WHERE batch = :b AND state = 'pending' "
                "AND generation = :g"), {"b": batch, "g": generation}).one()
            if int(total) <= room:
                return int(pending), int(pending), _credits(total)
            covered, running = 0, 0
            rows = conn.execute(text("SELECT estimate FROM job WHERE batch = :b AND state = 'pending' AND "
                                     "generation = :g ORDER BY seq"), {"b": batch, "g": generation})
            for (estimate,) in rows:
                running += int(estimate)
                if running > room:
                    break
                covered += 1
            rows.close()
        return int(pending), covered, _credits(total)

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

    def jobs_with_event(self, batch: str, kind: str, *, model: str | None = None) -> int:
        """How many jobs of a batch have an event of this kind in their history."""
        with self.engine.connect() as conn:
            return int(conn.execute(text(
                "SELECT COUNT(DISTINCT e.job_id) FROM event e JOIN job j ON j.id = e.job_id "
                "WHERE j.batch = :b AND e.kind = :k" + _only(model, "j")),
                {"b": batch, "k": kind, "model": model}).scalar_one())

    def lost_jobs(self, batch: str, *, model: str | None = None) -> int:
        """Jobs held as unknown although the API accepted (and charged) them: it no longer knows them."""
        with self.engine.connect() as conn:
            return int(conn.execute(text(
                "SELECT COUNT(*) FROM job j WHERE j.batch = :b AND j.state = 'unknown' AND (SELECT a.outcome "
                "FROM attempt a WHERE a.job_id = j.id ORDER BY a.id DESC LIMIT 1) = 'accepted'"
                + _only(model, "j")), {"b": batch, "model": model}).scalar_one())

    # --- a batch that mixes models ------------------------------------------------------------

    def models_of(self, batch: str | None = None) -> dict[str, int]:
        """Jobs per model (of a batch, or of the ledger), in the order each model's first job was added."""
        where = " WHERE j.batch = :b" if batch is not None else ""
        with self.engine.connect() as conn:
            return {str(m): int(n) for m, n in conn.execute(text(
                f"SELECT {_JOINED} AS m, COUNT(*) FROM job j JOIN batch b ON b.name = j.batch{where} "
                f"GROUP BY {_JOINED} ORDER BY MIN(j.id)"), {"b": batch})}

    def counts_by_model(self, batch: str) -> dict[str, tuple[dict[str, int], Decimal]]:
        """Per model, in the order its first job was added: (jobs per state present, credits spent)."""
        out: dict[str, tuple[dict[str, int], Decimal]] = {}
        with self.engine.connect() as conn:
            for model, state, n in conn.execute(text(
                    f"SELECT {_JOINED}, j.state, COUNT(*) FROM job j JOIN batch b ON b.name = j.batch "
                    f"WHERE j.batch = :b GROUP BY {_JOINED}, j.state ORDER BY MIN(j.id)"), {"b": batch}):
                out.setdefault(str(model), ({}, ZERO))[0][state] = int(n)
            for model, spent in conn.execute(text(
                    f"SELECT {_JOINED}, COALESCE(SUM(CASE WHEN a.outcome = 'accepted' AND NOT a.refunded "
                    "THEN a.credit_cost END), 0) FROM attempt a JOIN job j ON j.id = a.job_id JOIN batch b "
                    f"ON b.name = j.batch WHERE j.batch = :b GROUP BY {_JOINED}"), {"b": batch}):
                if str(model) in out:
                    out[str(model)] = (out[str(model)][0], _credits(spent))
        return out

    def counts_by_row_and_model(self, batch: str, model: str | None = None
                                ) -> list[tuple[str, str, str, str, dict[str, int]]]:
        """Per manifest row and model, in manifest order: (origin, label, prompt of its first job, model,
        jobs per state); only `model`'s jobs when given. A row is one model's, unless an edit changed it.
        The jobs of the current manifest only: an orphan is no row's (`LedgerOrphans.orphans` names them)."""
        rows: dict[tuple[str, str], dict[str, int]] = {}
        with self.engine.connect() as conn:
            for origin, m, state, n in conn.execute(text(
                    f"SELECT j.origin, {_JOINED}, j.state, COUNT(*) FROM job j JOIN batch b ON b.name = j.batch "
                    f"WHERE j.batch = :b AND NOT ({orphan_sql('j')}){_only(model, 'j')} "
                    f"GROUP BY j.origin, {_JOINED}, j.state ORDER BY MIN(j.seq)"),
                    {"b": batch, "model": model}):
                rows.setdefault((origin, str(m)), {})[state] = int(n)
            first = {origin: (label, params) for origin, label, params in conn.execute(text(
                f"SELECT origin, label, params FROM job WHERE batch = :b AND NOT ({orphan_sql()}) AND seq IN "
                f"(SELECT MIN(seq) FROM job WHERE batch = :b AND NOT ({orphan_sql()}) GROUP BY origin)"), {"b": batch})}
        out = []
        for (origin, m), counts in rows.items():
            label, params = first.get(origin, ("", "{}"))
            out.append((origin, label, str(json.loads(params).get("prompt", "")), m, counts))
        return out

    def render_history(self, simulated: bool, per_class: int = 200, horizon: int = 20_000
                       ) -> dict[tuple[Any, Any, Any], tuple[int, list[tuple[float, float | None]]]]:
        """Render times the ledger measured in every batch of this kind (simulated or real: the
        simulator's times say nothing of the API's), per (model, duration, resolution) of the job's
        params: (how many of the `horizon` newest rendered jobs are of the class, the `per_class`
        most recently finished of them as (render_seconds, seconds from submission until the poll
        that saw it done)). Bounded work: the newest `horizon` rendered jobs are picked by id (an
        index scan, no JSON read), and only they are parsed and numbered per class (a window)."""
        d = self.sql
        duration, resolution = d.json_value("j.params", "duration"), d.json_value("j.params", "resolution")
        sql = (
            "SELECT model, duration, resolution, total, render_seconds, seen FROM ("
            " SELECT model, duration, resolution, render_seconds, seen,"
            "  ROW_NUMBER() OVER (PARTITION BY model, duration, resolution ORDER BY finished_at DESC, id DESC) AS n,"
            "  COUNT(*) OVER (PARTITION BY model, duration, resolution) AS total FROM ("
            f"  SELECT j.id, COALESCE(j.model, b.model) AS model, {duration} AS duration, {resolution} AS resolution,"
            "   j.render_seconds, j.finished_at - j.submitted_at AS seen, j.finished_at"
            "   FROM job j JOIN batch b ON b.name = j.batch WHERE j.id IN ("
            "    SELECT r.id FROM job r WHERE r.state IN ('rendered', 'completed') AND r.render_seconds IS NOT NULL"
            "    AND r.batch IN (SELECT name FROM batch WHERE simulated = :s) ORDER BY r.id DESC LIMIT :h)"
            " ) AS measured) AS numbered WHERE n <= :k")
        out: dict[tuple[Any, Any, Any], tuple[int, list[tuple[float, float | None]]]] = {}
        with self.engine.connect() as conn:
            for model, dur, res, total, render, seen in conn.execute(
                    text(sql), {"s": simulated, "k": per_class, "h": horizon}):
                out.setdefault((model, dur, res), (int(total), []))[1].append(
                    (float(render), float(seen) if seen is not None else None))
        return out
