"""A batch's figures: jobs per state (and per row), what it has cost, what is held, what the
budget will still cover, why jobs failed, how long renders take."""

from __future__ import annotations

import json
import re
from typing import Any

from sqlalchemy import text

from ..states import JobState
from .jobs import LedgerJobs
from .rows import Figures, Spend

_ID_OR_NUMBER = re.compile(r"\b(?:job_)?[0-9a-f]*\d[0-9a-f]*\b")


class LedgerFigures(LedgerJobs):
    def figures(self, batch: str, generation: int | None = None) -> Figures:
        """Everything status, a run's report and the gallery show about a batch."""
        held, held_cost = self.held_estimate(batch)
        videos, size = self.downloaded_bytes(batch)
        first, last = self.timings(batch)
        return Figures(self.batch(batch), self.counts(batch, generation), self.spend(batch), held, held_cost,
                       self.lost_jobs(batch) if held else 0, videos, size, self.average_render_seconds(batch),
                       self.committed(batch), self.jobs_with_event(batch, "cost-untrusted"), first, last)

    def timings(self, batch: str) -> tuple[float | None, float | None]:
        """(first submission, last update of a finished job) of a batch, epoch seconds."""
        with self.engine.connect() as conn:
            first, last = conn.execute(text(
                "SELECT MIN(submitted_at), MAX(CASE WHEN state IN ('completed', 'failed', 'expired') "
                "THEN updated_at END) FROM job WHERE batch = :b"), {"b": batch}).one()
        return first, last

    def counts(self, batch: str | None = None, generation: int | None = None) -> dict[str, int]:
        """Jobs per state (every state present, zeros included)."""
        sql = "SELECT state, COUNT(*) FROM job"
        where: list[str] = []
        args: dict[str, Any] = {}
        if batch is not None:
            where.append("batch = :b")
            args["b"] = batch
        if generation is not None:
            where.append("(generation = :g OR state != 'pending')")
            args["g"] = generation
        if where:
            sql += " WHERE " + " AND ".join(where)
        out = {s.value: 0 for s in JobState}
        with self.engine.connect() as conn:
            for state, n in conn.execute(text(sql + " GROUP BY state"), args):
                out[state] = n
        return out

    def counts_by_row(self, batch: str) -> list[tuple[str, str, str, dict[str, int]]]:
        """Per manifest row, in manifest order: (origin, label, the prompt of its first job, jobs per state)."""
        rows: dict[str, dict[str, int]] = {}
        with self.engine.connect() as conn:
            for origin, state, n in conn.execute(text(
                    "SELECT origin, state, COUNT(*) FROM job WHERE batch = :b GROUP BY origin, state "
                    "ORDER BY MIN(seq)"), {"b": batch}):
                rows.setdefault(origin, {})[state] = n
            first = {origin: (label, params) for origin, label, params in conn.execute(text(
                "SELECT origin, label, params FROM job WHERE batch = :b AND seq IN "
                "(SELECT MIN(seq) FROM job WHERE batch = :b GROUP BY origin)"), {"b": batch})}
        out = []
        for origin, counts in rows.items():
            label, params = first.get(origin, ("", "{}"))
            out.append((origin, label, str(json.loads(params).get("prompt", "")), counts))
        return out

    def spend(self, batch: str) -> Spend:
        with self.engine.connect() as conn:
            row = conn.execute(text(
                "SELECT "
                " COALESCE(SUM(CASE WHEN a.outcome = 'accepted' AND NOT a.refunded THEN a.credit_cost END), 0),"
                " COALESCE(SUM(CASE WHEN a.outcome IN ('submitting', 'unknown') THEN a.reserved END), 0),"
                " COALESCE(SUM(CASE WHEN a.outcome = 'accepted' AND a.refunded THEN a.credit_cost END), 0) "
                "FROM attempt a JOIN job j ON j.id = a.job_id WHERE j.batch = :b"), {"b": batch}).one()
        return Spend(float(row[0]), float(row[1]), float(row[2]))

    def _count_and_sum(self, batch: str, column: str, state: str) -> tuple[int, float]:
        with self.engine.connect() as conn:
            n, total = conn.execute(text(
                f"SELECT COUNT(*), COALESCE(SUM({column}), 0) FROM job WHERE batch = :b AND state = :s"),
                {"b": batch, "s": state}).one()
        return int(n), float(total)

    def downloaded_bytes(self, batch: str) -> tuple[int, int]:
        """How many videos are on disk, and their bytes."""
        n, size = self._count_and_sum(batch, "size", "completed")
        return n, int(size)

    def committed(self, batch: str) -> float:
        """The shared budget's running total for a batch (charged, plus reserved and held)."""
        with self.engine.connect() as conn:
            return float(conn.execute(text("SELECT committed FROM batch WHERE name = :b"), {"b": batch}).scalar() or 0)

    def held_estimate(self, batch: str) -> tuple[int, float]:
        """How many jobs are held as unknown, and what resubmitting them all may cost."""
        return self._count_and_sum(batch, "estimate", "unknown")

    def budget_outlook(self, batch: str, generation: int, remaining: float) -> tuple[int, int, float]:
        """(pending jobs, how many of them `remaining` credits cover in the order they are submitted,
        their total estimate), summed in the database: no list of a million estimates in memory."""
        with self.engine.connect() as conn:
            pending, total = conn.execute(text(
                "SELECT COUNT(*), COALESCE(SUM(estimate), 0) FROM job WHERE batch = :b AND state = 'pending' "
                "AND generation = :g"), {"b": batch, "g": generation}).one()
            covered = conn.execute(text(
                "SELECT COUNT(*) FROM (SELECT SUM(estimate) OVER (ORDER BY seq) AS running FROM job "
                "WHERE batch = :b AND state = 'pending' AND generation = :g) AS s WHERE running <= :r"),
                {"b": batch, "g": generation, "r": remaining + 1e-9}).scalar_one()
        return int(pending), int(covered), float(total)

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

    def jobs_with_event(self, batch: str, kind: str) -> int:
        """How many jobs of a batch have an event of this kind in their history."""
        with self.engine.connect() as conn:
            return int(conn.execute(text(
                "SELECT COUNT(DISTINCT e.job_id) FROM event e JOIN job j ON j.id = e.job_id "
                "WHERE j.batch = :b AND e.kind = :k"), {"b": batch, "k": kind}).scalar_one())

    def lost_jobs(self, batch: str) -> int:
        """Jobs held as unknown although the API accepted (and charged) them: it no longer knows them."""
        with self.engine.connect() as conn:
            return int(conn.execute(text(
                "SELECT COUNT(*) FROM job j WHERE j.batch = :b AND j.state = 'unknown' AND (SELECT a.outcome "
                "FROM attempt a WHERE a.job_id = j.id ORDER BY a.id DESC LIMIT 1) = 'accepted'"),
                {"b": batch}).scalar_one())

    def average_render_seconds(self, batch: str) -> float | None:
        with self.engine.connect() as conn:
            value = conn.execute(text("SELECT AVG(render_seconds) FROM job WHERE batch = :b AND "
                                      "render_seconds IS NOT NULL"), {"b": batch}).scalar()
        return float(value) if value is not None else None
