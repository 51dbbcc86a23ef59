"""What is known of references: what preflight found at each URL (so a rerun asks again cheaply, or
not at all), where each local image was found, and which store holds it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from sqlalchemy import Connection, bindparam, text

from .rows import LocalImage, Reference, StoredImage, from_mapping
from .store import LedgerStore

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

    # --- local reference images -------------------------------------------------------------

    def remember_local_images(self, images: Iterable[tuple[str, str, int, str]], now: float) -> None:
        """Record where each local image (address, path, size, FILE:LINE) was found, replacing
        an older place for the same content."""
        rows = [{"a": a, "p": p, "s": s, "o": o, "t": now} for a, p, s, o in images]
        if not rows:
            return

        def write(conn: Connection) -> None:
            for row in rows:
                self.x(conn, "DELETE FROM local_image WHERE address = :a", row)
                self.x(conn, "INSERT INTO local_image (address, path, size, origin, seen_at) "
                             "VALUES (:a, :p, :s, :o, :t)", row)
        self.write(write)

    def local_images(self, addresses: Iterable[str] | None = None) -> dict[str, LocalImage]:
        """Where each of `addresses` (default: every local image) was last found, for those the
        ledger knows."""
        if addresses is None:
            with self.engine.connect() as conn:
                return {row["address"]: from_mapping(LocalImage, row) for row in conn.execute(
                    text("SELECT address, path, size, origin, seen_at FROM local_image")).mappings()}
        return {row.address: row for row in self._by_address(
            "SELECT address, path, size, origin, seen_at FROM local_image WHERE address IN :a", LocalImage,
            addresses)}

    def stored_images(self, store: str, addresses: Iterable[str]) -> dict[str, StoredImage]:
        """The objects `store` is known to hold for `addresses`."""
        return {row.address: row for row in self._by_address(
            "SELECT store, address, object_key, size, uploaded, stored_at FROM stored_image "
            "WHERE store = :store AND address IN :a", StoredImage, addresses, store=store)}

    def remember_stored(self, images: Iterable[StoredImage]) -> None:
        """Record that a store holds each image (replacing an older record for the same pair,
        but not the fact that this ledger's runs uploaded it)."""
        rows = [{"st": i.store, "a": i.address, "k": i.object_key, "s": i.size, "u": i.uploaded, "t": i.stored_at}
                for i in images]
        if not rows:
            return

        def write(conn: Connection) -> None:
            for row in rows:
                before = self.x(conn, "SELECT uploaded FROM stored_image WHERE store = :st AND address = :a",
                                row).scalar()
                row["u"] = bool(row["u"] or before)
                self.x(conn, "DELETE FROM stored_image WHERE store = :st AND address = :a", row)
                self.x(conn, "INSERT INTO stored_image (store, address, object_key, size, uploaded, stored_at) "
                             "VALUES (:st, :a, :k, :s, :u, :t)", row)
        self.write(write)

    def _by_address(self, sql: str, kind: type[R], addresses: Iterable[str], **params: Any) -> list[R]:
        wanted = sorted(set(addresses))
        query = text(sql).bindparams(bindparam("a", expanding=True))
        found: list[R] = []
        with self.engine.connect() as conn:
            for i in range(0, len(wanted), 500):
                found.extend(from_mapping(kind, row) for row in conn.execute(query, {**params, "a": wanted[i:i + 500]})
                             .mappings())
        return found
