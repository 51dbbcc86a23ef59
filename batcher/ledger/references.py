"""What preflight found at each reference URL, kept so a rerun asks again cheaply (or not at all)."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, bindparam, text

from .rows import Reference, from_mapping
from .store import LedgerStore


class LedgerReferences(LedgerStore):
    def references(self, urls: Iterable[str]) -> dict[str, Reference]:
        """The stored result of each of `urls` that has one."""
        wanted = sorted(set(urls))
        found: dict[str, Reference] = {}
        query = text("SELECT url, outcome, detail, etag, last_modified, checked_at FROM reference_check "
                     "WHERE url IN :urls").bindparams(bindparam("urls", expanding=True))
        with self.engine.connect() as conn:
            for i in range(0, len(wanted), 500):
                for row in conn.execute(query, {"urls": wanted[i:i + 500]}).mappings():
                    found[row["url"]] = from_mapping(Reference, row)
        return found

    def remember_references(self, results: Iterable[Reference]) -> None:
        """Store each result, replacing what was there for its URL."""
        rows = [{"u": r.url, "o": r.outcome, "d": r.detail, "e": r.etag, "l": r.last_modified, "t": r.checked_at}
                for r in results]
        if not rows:
            return

        def write(conn: Connection) -> None:
            for row in rows:
                self.x(conn, "DELETE FROM reference_check WHERE url = :u", row)
                self.x(conn, "INSERT INTO reference_check (url, outcome, detail, etag, last_modified, checked_at) "
                             "VALUES (:u, :o, :d, :e, :l, :t)", row)
        self.write(write)
