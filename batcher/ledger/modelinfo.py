"""Models the API described (info and request schema), cached with the time they were fetched."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import Connection, bindparam, text

from .dialect import read_only
from .rows import ModelInfo, from_mapping
from .store import LedgerStore, Operation

_SELECT = "SELECT api_id, info, request_schema, fetched_at FROM model_info"


class LedgerModelInfo(LedgerStore):
    def model_infos(self, api_ids: Iterable[str] | None = None) -> dict[str, ModelInfo]:
        """The cached description of each of `api_ids` (default: every model) that has one."""
        query = _SELECT
        with self.engine.connect() as conn:
            if api_ids is None:
                rows = conn.execute(text(query)).mappings().all()
            else:
                wanted = sorted(set(api_ids))
                rows = conn.execute(text(query + " WHERE api_id IN :ids").bindparams(
                    bindparam("ids", expanding=True)), {"ids": wanted}).mappings().all() if wanted else []
        return {row["api_id"]: from_mapping(ModelInfo, row) for row in rows}

    def remember_model_info(self, found: ModelInfo) -> Operation[None]:
        """Store a model's description, replacing an older one."""
        row = {"a": found.api_id, "i": found.info, "s": found.request_schema, "t": found.fetched_at}

        def op(conn: Connection) -> None:
            self.x(conn, "INSERT INTO model_info (api_id, info, request_schema, fetched_at) VALUES (:a, :i, :s, :t) "
                         "ON CONFLICT (api_id) DO UPDATE SET info = excluded.info, "
                         "request_schema = excluded.request_schema, fetched_at = excluded.fetched_at", row)
        return Operation(op)


def read_model_infos(path: str | Path, api_ids: list[str]) -> dict[str, ModelInfo]:
    """The cached descriptions of `api_ids`, read without writing anything."""
    wanted = set(api_ids)
    found = read_only(path, "model_info", lambda conn: [from_mapping(ModelInfo, row) for row in conn.execute(
        text(_SELECT)).mappings() if row["api_id"] in wanted])
    return {m.api_id: m for m in found or []}
