"""Before the first submission: the output folder made ready (temporary files of dead downloaders
removed, completed videos verified against their size and sha256), every distinct request
of the batch held against the model's live schema, and every distinct reference URL checked
(preflight), so a mismatch or a bad image costs nothing."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import AuthError, BatcherError, PreflightFailed, SchemaMismatch
from ..files import matches, sweep_temp_files
from ..ledger import Job
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


async def check_live_schema(ctx: RunContext) -> None:
    """Hold the batch's requests against each model's live schema before spending anything (each
    model's schema fetched once, each distinct request checked once)."""
    schemas: dict[str, dict[str, Any] | None] = {}
    seen: set[int] = set()  # hashes of requests checked: small, whatever the batch size
    async for page in pending_pages(ctx):
        for job in page:
            model = ctx.model_of(job)
            if model.api_id not in schemas:
                schemas[model.api_id] = await _live_schema(ctx, model.api_id)
            schema = schemas[model.api_id]
            digest = hash((model.api_id, job.params))
            if schema is None or digest in seen:
                continue
            seen.add(digest)
            # A local image stands as the URL it will be when sent (made only at submission).
            found = check_against(schema, with_urls(model.to_wire(job.parameters()), placeholder_url))
            if found:
                raise SchemaMismatch(f"{job.origin}: the live API schema of {model.api_id} rejects this batch before "
                                     f"anything was spent: {found[0]}")


async def check_references(ctx: RunContext) -> None:
    """Preflight: every distinct reference URL of the batch's pending jobs checked once (what the
    ledger vouches for is not fetched again). Raises PreflightFailed with every error at once;
    URLs this machine cannot reach are warnings (`options.on_warning`, else the log)."""
    uses: dict[str, str] = {}
    async for page in pending_pages(ctx):
        references_of(((job.origin, job.parameters()) for job in page), into=uses)
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
