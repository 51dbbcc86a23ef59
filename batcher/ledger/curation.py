"""Curation: clips rejected from the dataset (`batcher reject`), and new takes of a request queued
to render again (`batcher reroll`). A rejected clip stays on disk and in the batch, with an
event; exports leave it out. A reroll is a pending job of its own (take + 1, its own key), sent
only by a run under a budget."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from sqlalchemy import Connection, text

from ..errors import LedgerError
from ..money import to_hundredths
from .rows import Job, from_mapping
from .store import LedgerStore, Operation


class Reroll(NamedTuple):
    """A new take of a job's request, as `plan.rerolled` made it."""

    source: Job
    key: str
    take: int
    params: str  # JSON, manifest names (a new seed, with --new-seed)


class LedgerCuration(LedgerStore):
    def reject(self, jobs: Iterable[Job], detail: str) -> Operation[int]:
        """Mark `jobs` rejected (those not yet), each with a `rejected` event; returns how many."""
        ids = [job.id for job in jobs]

        def op(conn: Connection) -> int:
            now = self.clock()
            fresh = [i for i in ids if conn.execute(text(
                "SELECT rejected_at FROM job WHERE id = :i"), {"i": i}).scalar() is None]
            for job_id in fresh:
                conn.execute(text("UPDATE job SET rejected_at = :t, updated_at = :t WHERE id = :i"),
                             {"t": now, "i": job_id})
            if fresh:
                self._events(conn, fresh, "rejected", None, None, detail, now)
            return len(fresh)
        return Operation(op)

    def reroll(self, rerolls: Iterable[Reroll]) -> Operation[list[Job]]:
        """Add each reroll as a pending job of its source's batch (current generation, after every
        other job), with a `rerolled` event on the source; returns the new jobs."""
        wanted = list(rerolls)

        def op(conn: Connection) -> list[Job]:
            now, added = self.clock(), []
            for r in wanted:
                src = r.source
                if conn.execute(text("SELECT 1 FROM job WHERE batch = :b AND key = :k"),
                                {"b": src.batch, "k": r.key}).first() is not None:
                    raise LedgerError(f"batch {src.batch!r} already has a job {r.key} (take {r.take})")
                seq, generation = conn.execute(text(
                    "SELECT (SELECT COALESCE(MAX(seq), -1) + 1 FROM job WHERE batch = :b), generation "
                    "FROM batch WHERE name = :b"), {"b": src.batch}).one()
                conn.execute(text(
                    "INSERT INTO job (batch, key, seq, generation, row, take, origin, label, params, estimate, state, "
                    "attempts, lease_token, created_at, updated_at, model, row_data, reroll_of) VALUES (:b, :k, :s, "
                    ":g, :row, :take, :o, :l, :p, :e, 'pending', 0, 0, :t, :t, :m, :d, :src)"),
                    {"b": src.batch, "k": r.key, "s": seq, "g": generation, "row": src.row, "take": r.take,
                     "o": src.origin, "l": src.label, "p": r.params, "e": to_hundredths(src.estimate), "t": now,
                     "m": src.model, "d": src.row_data, "src": src.key})
                self._event(conn, src.id, "rerolled", None, None, f"a new take {r.take} queued: job {r.key}", now)
                added.append(r.key)
            return [from_mapping(Job, conn.execute(text("SELECT * FROM job WHERE batch = :b AND key = :k"),
                                                   {"b": r.source.batch, "k": key}).mappings().one())
                    for r, key in zip(wanted, added, strict=True)]
        return Operation(op)
