"""Models the API described (info and request schema), cached with the time they were fetched."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import bindparam, text

from .rows import ModelInfo, from_mapping
from .store import LedgerStore


class LedgerModelInfo(LedgerStore):
    def model_infos(self, api_ids: Iterable[str] | None = None) -> dict[str, ModelInfo]:
        """The cached description of each of `api_ids` (default: every model) that has one."""
        query = "SELECT api_id, info, request_schema, fetched_at FROM model_info"
        with self.engine.connect() as conn:
            if api_ids is None:
                rows = conn.execute(text(query)).mappings().all()
            else:
                wanted = sorted(set(api_ids))
                rows = conn.execute(text(query + " WHERE api_id IN :ids").bindparams(
                    bindparam("ids", expanding=True)), {"ids": wanted}).mappings().all() if wanted else []
        return {row["api_id"]: from_mapping(ModelInfo, row) for row in rows}

    def remember_model_info(self, found: ModelInfo) -> None:
        """Store a model's description, replacing an older one."""
        row = {"a": found.api_id, "i": found.info, "s": found.request_schema, "t": found.fetched_at}

        self.write(lambda conn: self.x(
            conn, "INSERT INTO model_info (api_id, info, request_schema, fetched_at) VALUES (:a, :i, :s, :t) "
                  "ON CONFLICT (api_id) DO UPDATE SET info = excluded.info, request_schema = excluded.request_schema, "
                  "fetched_at = excluded.fetched_at", row))
