"""Before the first submission: the output folder made ready (temporary files of dead downloaders
removed, completed videos verified against their size and sha256), every distinct request
of the batch held against the model's live schema, and every distinct reference URL checked
(preflight), so a mismatch or a bad image costs nothing."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import AuthError, BatcherError, PreflightFailed, SchemaMismatch
from ..files import matches, sweep_temp_files
from ..ledger import Job
from ..localrefs import local_addresses
from ..preflight import preflight, references_of
from ..refstore import placeholder_url, with_urls
from ..schemarules import check_against
from ..states import JobState as S
from .context import RunContext

log = logging.getLogger("batcher.preflight")


def prepare_outputs(ctx: RunContext) -> None:
    """Send every completed job whose file is gone or no longer matches back to download."""
    out = ctx.options.saving.out_dir
    out.mkdir(parents=True, exist_ok=True)
    ctx.out_abs = out.resolve()
    sweep_temp_files(out)
    for job_id, file_path, size, sha256 in ctx.ledger.completed_files(ctx.batch):
        path = Path(file_path)
        if ctx.ledger.shared and not path.exists():
            continue  # on a shared ledger, other runners' files live on their own hosts
        if matches(path, size, sha256):
            continue
        why = "is gone" if not path.exists() else "does not match its recorded size and sha256"
        ctx.ledger.write(ctx.ledger.move(job_id, S.COMPLETED, S.RENDERED, "file-mismatch",
                                         f"{file_path} {why}; downloading again"))


async def pending_pages(ctx: RunContext, size: int = 2000, states: tuple[S, ...] = (S.PENDING,)
                        ) -> AsyncIterator[list[Job]]:
    """The batch's pending jobs (or jobs in `states`) of this generation, a page at a time (memory
    stays flat)."""
    after = -1
    while True:
        page = await ctx.threads.run(partial(ctx.ledger.jobs_in, ctx.batch, list(states), after_seq=after, limit=size,
                                             generation=ctx.generation))
        if not page:
            return
        yield page
        after = page[-1].seq


async def _live_schema(ctx: RunContext, api_id: str) -> dict[str, Any] | None:
    try:
        return await ctx.client.schema(api_id)
    except AuthError:
        raise
    except BatcherError as e:
        ctx.note(f"could not fetch the schema of {api_id} ({e}); going on with its description")
        return None


class SchemaCheck:
    """Each request held against its model's live schema (fetched once per model), once per
    distinct shape: the first request with a given set of parameters is checked whole; after it,
    each distinct value of a parameter once, against that parameter's rule. A batch of a hundred
    thousand prompts costs a hundred thousand string checks, not as many whole-schema checks."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.schemas: dict[str, dict[str, Any] | None] = {}
        self.shapes: set[tuple[str, frozenset[str]]] = set()
        self.values: set[tuple[str, str, str]] = set()

    async def check(self, job: Job, params: dict[str, Any]) -> None:
        model = self.ctx.model_of(job)
        if model.api_id not in self.schemas:
            self.schemas[model.api_id] = await _live_schema(self.ctx, model.api_id)
        schema = self.schemas[model.api_id]
        if schema is None:
            return
        # A local image stands as the URL it will be when sent (made only at submission).
        wire = with_urls(model.to_wire(params), placeholder_url)
        shape = (model.api_id, frozenset(wire))
        if shape not in self.shapes:
            self.shapes.add(shape)
            self._raise_if(job, model.api_id, check_against(schema, wire))
            return
        props = schema.get("properties")
        for name, value in wire.items():
            seen = (model.api_id, name, json.dumps(value, sort_keys=True, default=str))
            if seen in self.values or not isinstance(props, dict):
                continue
            self.values.add(seen)
            rule: dict[str, Any] = {"type": "object", "properties": {name: props.get(name, {})}}
            rule.update({k: schema[k] for k in ("$defs", "definitions") if k in schema})
            self._raise_if(job, model.api_id, check_against(rule, {name: value}))

    @staticmethod
    def _raise_if(job: Job, api_id: str, found: list[Any]) -> None:
        if found:
            raise SchemaMismatch(f"{job.origin}: the live API schema of {api_id} rejects this batch before "
                                 f"anything was spent: {found[0]}")


@dataclass
class Survey:
    """What the start of a run learned in one pass over the jobs it may send."""

    references: dict[str, str] = field(default_factory=dict)  # reference URL -> FILE:LINE (pending jobs)
    local: dict[str, str] = field(default_factory=dict)  # local image -> FILE:LINE (pending or submitted jobs)


async def survey(ctx: RunContext) -> Survey:
    """One pass over the jobs this run may send: each pending request held against its model's
    live schema (SchemaMismatch, before anything is spent), the reference URLs preflight will
    check, and the local images to make ready (those of submitted jobs too: a refunded failure
    sends one again)."""
    found = Survey()
    schema = SchemaCheck(ctx) if ctx.options.check_schema else None
    async for page in pending_pages(ctx, states=(S.PENDING, S.SUBMITTED)):
        for job in page:
            params = job.parameters()
            for value in params.values():
                if isinstance(value, list):
                    for address in local_addresses(value):
                        found.local.setdefault(address, job.origin)
            if job.state != S.PENDING.value:
                continue
            if ctx.options.preflight:
                references_of(((job.origin, params),), into=found.references)
            if schema is not None:
                await schema.check(job, params)
    return found


async def check_references(ctx: RunContext, uses: dict[str, str]) -> None:
    """Preflight: every distinct reference URL of the batch's pending jobs (`uses`, URL -> where
    it is written) checked once (what the ledger vouches for is not fetched again). Raises
    PreflightFailed with every error at once; URLs this machine cannot reach are warnings
    (`options.on_warning`, else the log)."""
    if not uses:
        return
    known = await ctx.threads.run(ctx.ledger.references, list(uses))
    report = await preflight(ctx.client, uses, known, ctx.wall())
    await ctx.threads.run(ctx.ledger.remember_references, report.results)
    if report.errors:
        raise PreflightFailed(report.errors)
    warn = ctx.options.on_warning or log.warning
    for line in report.warning_lines():
        warn(line)
