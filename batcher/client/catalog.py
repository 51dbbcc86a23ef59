"""Which models a batch may name: the built-in tables, and any other PixelDojo model described by
the API (its info and request schema), fetched once and cached in the ledger with the time it was
fetched, so plans and reruns work offline and a run does not ask again for a day."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

import anyio

from ..errors import ApiError, AuthError, MalformedAnswer, RejectedError
from ..ledger import Ledger, ModelInfo
from ..models import ModelSpec, described
from .http import PixelDojoClient

CACHE_SECONDS = 24 * 3600.0  # a run asks again for a description older than this
MAX_SCHEMA_BYTES = 1 << 20  # a description larger than this is not a model request schema


class UnusableDescription(ValueError):
    """A model description (fetched or cached) no ModelSpec can be made of."""


def spec_of(found: ModelInfo) -> ModelSpec:
    """The ModelSpec a description makes. Raises UnusableDescription for one that lies about
    itself (whatever the way: a hostile answer must not crash a command)."""
    try:
        when = datetime.fromtimestamp(found.fetched_at, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        return described(found.api_id, json.loads(found.request_schema), json.loads(found.info), f"fetched {when}")
    except Exception as e:  # TypeError, OverflowError, RecursionError, JSON errors, ...
        raise UnusableDescription(f"its description cannot be used ({type(e).__name__}); `batcher models "
                                  f"{found.api_id} --refresh` asks the API again") from None


async def list_models(client: PixelDojoClient) -> list[dict[str, Any]]:
    """The models the API lists, with their prices (`?detailed=true`)."""
    data = await client.read("models", "/api/v1/models?detailed=true")
    models = data.get("models")
    if not isinstance(models, list):
        raise MalformedAnswer("the model list is not {models: [...]}")
    return [m for m in models if isinstance(m, dict) and isinstance(m.get("apiId"), str)]


async def fetch_description(client: PixelDojoClient, api_id: str, now: float) -> ModelInfo:
    """A model's info and request schema, as the API gives them now. Raises RejectedError for a
    model the API does not know, MalformedAnswer for a description that is not one."""
    data = await client.read("model", f"/api/v1/models/{quote(api_id, safe='')}")
    schema = data.get("requestSchema")
    if not isinstance(schema, dict):
        schema = await client.schema(api_id)  # older answers keep it behind /schema
    if not isinstance(schema.get("properties"), dict):
        raise MalformedAnswer(f"the API's schema of {api_id} has no properties")
    info = {k: v for k, v in data.items() if k != "requestSchema"}
    schema_text, info_text = json.dumps(schema), json.dumps(info)
    if len(schema_text) + len(info_text) > MAX_SCHEMA_BYTES:
        raise MalformedAnswer(f"the API's description of {api_id} is over {MAX_SCHEMA_BYTES // 1024} KB")
    return ModelInfo(api_id, info_text, schema_text, now)


@dataclass
class Descriptions:
    """What describing a batch's models found: specs by API id, and why the others are missing."""

    specs: dict[str, ModelSpec] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    fetched: list[str] = field(default_factory=list)


class ModelCatalog:
    """Descriptions of models, from the ledger's cache or the API (then cached)."""

    def __init__(self, ledger: Ledger | None, client: PixelDojoClient | None,
                 clock: Callable[[], float] = time.time):
        self.ledger, self.client, self.clock = ledger, client, clock

    def cached(self, api_ids: Iterable[str]) -> dict[str, ModelSpec]:
        """What the ledger knows of `api_ids` (no network)."""
        if self.ledger is None:
            return {}
        return {api_id: spec_of(found) for api_id, found in self.ledger.model_infos(api_ids).items()}

    async def describe(self, api_ids: Iterable[str], *, refresh: bool = False,
                       max_age: float = CACHE_SECONDS) -> Descriptions:
        """Each model described: the cache when it is younger than `max_age` (and not `refresh`),
        else the API (cached again). A model the API cannot describe keeps its cached
        description if there is one, else is `missing` with the reason."""
        out = Descriptions()
        wanted = list(dict.fromkeys(api_ids))
        known = await anyio.to_thread.run_sync(self.ledger.model_infos, wanted) if self.ledger else {}
        now = self.clock()
        for api_id in wanted:
            found = known.get(api_id)
            if found is not None and not refresh and 0 <= now - found.fetched_at < max_age:
                try:
                    out.specs[api_id] = spec_of(found)
                    continue
                except UnusableDescription:
                    found = None  # asked again below
            if self.client is None:
                out.missing[api_id] = "not described yet, and no API to ask"
                continue
            try:
                fresh = await fetch_description(self.client, api_id, now)
            except AuthError:
                raise
            except RejectedError as e:
                out.missing[api_id] = f"the API does not know it ({e})"
                continue
            except (ApiError, ValueError, RecursionError) as e:
                if found is not None:
                    with contextlib.suppress(UnusableDescription):
                        out.specs[api_id] = spec_of(found)  # an old description beats none
                if api_id not in out.specs:
                    out.missing[api_id] = f"the API could not describe it ({type(e).__name__}: {str(e)[:200]})"
                continue
            try:
                out.specs[api_id] = spec_of(fresh)  # made before it is cached: a lie is never kept
            except UnusableDescription as e:
                out.missing[api_id] = f"the API's {e}"
                continue
            if self.ledger is not None:
                await anyio.to_thread.run_sync(self.ledger.write, self.ledger.remember_model_info(fresh))
            out.fetched.append(api_id)
        return out
