"""What is known of references: what preflight found at each URL (so a rerun asks again cheaply, or
not at all), where each local image was found, and which store holds it."""

from __future__ import annotations

import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, bindparam, text

from .dialect import read_only
from .rows import LocalImage, Reference, StoredImage, from_mapping
from .store import LedgerStore, Operation, Unchanged

R = TypeVar("R", LocalImage, StoredImage)


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

    def remember_references(self, results: Iterable[Reference]) -> Operation[None]:
        """Store each result, replacing what was there for its URL."""
        rows = [{"u": r.url, "o": r.outcome, "d": r.detail, "e": r.etag, "l": r.last_modified, "t": r.checked_at}
                for r in results]
        return self._upsert("INSERT INTO reference_check (url, outcome, detail, etag, last_modified, checked_at) "
                            "VALUES (:u, :o, :d, :e, :l, :t) ON CONFLICT (url) DO UPDATE SET "
                            "outcome = excluded.outcome, detail = excluded.detail, etag = excluded.etag, "
                            "last_modified = excluded.last_modified, checked_at = excluded.checked_at", rows)

    # --- local reference images -------------------------------------------------------------

    def remember_local_images(self, images: Iterable[tuple[str, str, int, str]], now: float) -> Operation[None]:
        """Record where each local image (address, path, size, FILE:LINE) was found on this host,
        replacing an older place for the same content here (other hosts keep theirs)."""
        host = socket.gethostname()
        rows = [{"a": a, "h": host, "p": p, "s": s, "o": o, "t": now} for a, p, s, o in images]
        sql = ("INSERT INTO local_image (address, host, path, size, origin, seen_at) VALUES (:a, :h, :p, :s, :o, :t) "
               "ON CONFLICT (address, host) DO UPDATE SET path = excluded.path, size = excluded.size, "
               "origin = excluded.origin, seen_at = excluded.seen_at")
        return self._upsert(sql, rows)

    def local_images(self, addresses: Iterable[str] | None = None, *, any_host: bool = False
                     ) -> dict[str, LocalImage]:
        """Where each of `addresses` (default: every local image) was last found on this host
        (`any_host`: on this host if it was, else where another host last found it)."""
        where = "" if addresses is None else " WHERE address IN :a"
        found = self._by_address("SELECT address, host, path, size, origin, seen_at FROM local_image" + where,
                                 LocalImage, addresses)
        host = socket.gethostname()
        out: dict[str, LocalImage] = {}
        for row in sorted(found, key=lambda r: (r.host == host, r.seen_at)):
            if row.host == host or any_host:
                out[row.address] = row  # this host's row, sorted last, wins
        return out

    def stored_images(self, store: str, addresses: Iterable[str]) -> dict[str, StoredImage]:
        """The objects `store` is known to hold for `addresses`."""
        return {row.address: row for row in self._by_address(
            "SELECT store, address, object_key, size, uploaded, stored_at FROM stored_image "
            "WHERE store = :store AND address IN :a", StoredImage, addresses, store=store)}

    def remember_stored(self, images: Iterable[StoredImage]) -> Operation[None]:
        """Record that a store holds each image, keeping the fact that this ledger's runs uploaded
        it (one statement per row: runners on other hosts may record the same pair at once)."""
        rows = [{"st": i.store, "a": i.address, "k": i.object_key, "s": i.size, "u": bool(i.uploaded),
                 "t": i.stored_at} for i in images]
        sql = ("INSERT INTO stored_image (store, address, object_key, size, uploaded, stored_at) "
               "VALUES (:st, :a, :k, :s, :u, :t) ON CONFLICT (store, address) DO UPDATE SET "
               "object_key = excluded.object_key, size = excluded.size, stored_at = excluded.stored_at, "
               "uploaded = (stored_image.uploaded OR excluded.uploaded)")
        return self._upsert(sql, rows)

    def _upsert(self, sql: str, rows: list[dict[str, Any]]) -> Operation[None]:
        """One upsert per row, in one transaction: never a delete then an insert, which two
        runners doing at once turn into a duplicate key."""
        if not rows:
            return Unchanged(None)

        def op(conn: Connection) -> None:
            for row in rows:
                self.x(conn, sql, row)
        return Operation(op)

    def _by_address(self, sql: str, kind: type[R], addresses: Iterable[str] | None, **params: Any) -> list[R]:
        if addresses is None:
            with self.engine.connect() as conn:
                return [from_mapping(kind, row) for row in conn.execute(text(sql), params).mappings()]
        wanted = sorted(set(addresses))
        query = text(sql).bindparams(bindparam("a", expanding=True))
        found: list[R] = []
        with self.engine.connect() as conn:
            for i in range(0, len(wanted), 500):
                found.extend(from_mapping(kind, row) for row in conn.execute(query, {**params, "a": wanted[i:i + 500]})
                             .mappings())
        return found


def read_stored(path: str | Path, store: str, addresses: list[str]) -> set[str] | None:
    """Which of `addresses` the ledger knows `store` holds, read without writing anything."""
    wanted = set(addresses)
    return read_only(path, "stored_image", lambda conn: {a for (a,) in conn.execute(
        text("SELECT address FROM stored_image WHERE store = :s"), {"s": store}) if a in wanted})
