"""Before the first submission: the output folder made ready (temporary files of dead downloaders
removed, completed videos verified against their size and sha256), every distinct request
of the batch held against the model's live schema, and every distinct reference URL checked
(preflight), so a mismatch or a bad image costs nothing."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from ..client.preflight import preflight, references_of
from ..errors import AuthError, BatcherError, PreflightFailed, SchemaMismatch
from ..ledger.jobs import CompletedFile, Request
from ..models import ModelSpec, check_against
from ..outputs import matches, sweep_temp_files
from ..outputs.bucket import is_bucket_address
from ..outputs.files import Found
from ..references import LOCAL_PREFIX, local_addresses, placeholder_url, with_urls
from ..states import JobState as S
from .context import RunContext

log = logging.getLogger("batcher.preflight")


async def prepare_outputs(ctx: RunContext) -> None:
    """Send every completed job whose clip is gone or no longer matches back to download. Quick
    (the default): a file's size and modification time against what the ledger recorded when it
    was verified (a file that changed, or was recorded without one, is hashed);
    an object's size in one listing of the bucket. `--verify full`: every file hashed, every
    object's recorded hash read (a HEAD each)."""
    store, full = ctx.options.saving.out_store, ctx.options.saving.verify_full
    completed = await ctx.threads.run(ctx.ledger.completed_files, ctx.batch)
    if store is not None:
        await store.clean(ctx.wall())
        checked = await store.check([(f, n, h) for _, f, n, h, _ in completed], full)
        for (job_id, *_), found in zip(completed, checked, strict=True):
            if found.found in (Found.GONE, Found.CHANGED):  # (a clip kept elsewhere is left where it is)
                await _download_again(ctx, job_id, found.location, found.why)
        return
    out = ctx.options.saving.out_dir
    await ctx.threads.run(partial(out.mkdir, parents=True, exist_ok=True))
    ctx.out_abs = out.resolve()
    # The files in a few shares, not a thread hop each: 60,000 hops cost seconds where the checks
    # of a quick rerun cost a fraction of one. Hashing releases the GIL, so a full check shares
    # them among the run's threads; a quick one is Python between stats, faster in one thread.
    # Temporary files are swept meanwhile (a listing of the folder: no clip's check reads one).
    shares = ctx.threads.size if full else 1
    parts = [completed[i::shares] for i in range(shares)]
    problems: list[list[tuple[int, str, str]]] = [[] for _ in parts]

    async def check(i: int) -> None:
        problems[i] = await ctx.threads.run(_local_problems, parts[i], full, ctx.ledger.shared)

    async with anyio.create_task_group() as tg:
        tg.start_soon(ctx.threads.run, sweep_temp_files, out)
        for i in range(len(parts)):
            tg.start_soon(check, i)
    for job_id, file_path, why in sorted(p for part in problems for p in part):
        await _download_again(ctx, job_id, file_path, why)


def _local_problems(completed: list[CompletedFile], full: bool, shared: bool) -> list[tuple[int, str, str]]:
    """(job id, file path, why) of each completed clip whose file no longer holds it. A clip kept
    in a bucket by an earlier --out s3://... is left where it is; on a shared ledger, so is a file
    this host lacks (other runners' files live on their own hosts)."""
    problems: list[tuple[int, str, str]] = []
    for job_id, file_path, size, sha256, mtime_ns in completed:
        if is_bucket_address(file_path):
            continue
        found = _file_found(file_path, size, sha256, None if full else mtime_ns)
        if found is Found.CHANGED or (found is Found.GONE and not shared):
            problems.append((job_id, file_path, found.value))
    return problems


def _file_found(path: str, size: int | None, sha256: str | None, mtime_ns: int | None) -> Found:
    """Whether a completed clip's file still holds it. `mtime_ns`: trust a file of the right size
    that still has this modification time (None: hash it whatever)."""
    try:
        found = os.stat(path)
    except OSError:
        return Found.GONE
    if size is not None and found.st_size != size:
        return Found.CHANGED
    if mtime_ns is not None and found.st_mtime_ns == mtime_ns:
        return Found.THERE
    return Found.THERE if matches(Path(path), size, sha256) else Found.CHANGED


async def _download_again(ctx: RunContext, job_id: int, location: str, why: str) -> None:
    await ctx.threads.run(ctx.ledger.write, ctx.ledger.move(job_id, S.COMPLETED, S.RENDERED, "file-mismatch",
                                                           f"{location} {why}; downloading again"))


async def pending_pages(ctx: RunContext, size: int = 2000, states: tuple[S, ...] = (S.PENDING,)
                        ) -> AsyncIterator[list[Request]]:
    """The batch's pending jobs (or jobs in `states`) of this generation as (seq, id, state,
    origin, params JSON, model), a page at a time (memory stays flat)."""
    after = -1
    while True:
        page = await ctx.threads.run(partial(ctx.ledger.requests_in, ctx.batch, list(states), after_seq=after,
                                             limit=size, generation=ctx.state.generation))
        if not page:
            return
        yield page
        after = page[-1][0]


async def _live_schema(ctx: RunContext, api_id: str) -> dict[str, Any] | None:
    try:
        return await ctx.client.schema(api_id)
    except AuthError:
        raise
    except BatcherError as e:
        ctx.state.note(f"could not fetch the schema of {api_id} ({e}); going on with its description")
        return None


# A rule of only these keywords, for text, is checked here in a few operations (most prompts).
_PLAIN_TEXT_RULE = frozenset({"type", "minLength", "maxLength", "title", "description", "default", "examples"})


def _plainly_fits(rule: Any, value: Any) -> bool:
    """Whether text surely fits a rule of a string type and lengths alone: then the full check
    could only agree. False sends the value to the full check (which says why, if it breaks it)."""
    if type(value) is not str or not isinstance(rule, dict) or not rule.keys() <= _PLAIN_TEXT_RULE:
        return False
    kinds = rule.get("type", "string")
    if kinds != "string" and not (isinstance(kinds, list) and "string" in kinds):
        return False
    least, most = rule.get("minLength", 0), rule.get("maxLength", len(value))
    return type(least) is int and type(most) is int and least <= len(value) <= most


def _value_key(value: Any) -> Any:
    """What tells a value from another as the API receives it (1, 1.0 and true apart)."""
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return kind, value
    if kind is list and all(type(item) is str for item in value):
        return kind, tuple(value)
    return json.dumps(value, sort_keys=True, default=str)


class SchemaCheck:
    """Each request held against its model's live schema (fetched once per model), once per
    distinct shape: the first request with a given set of parameters is checked whole; after it,
    each distinct value of a parameter once, against that parameter's rule (text that plainly
    fits a rule of type and length alone, without the full check). A batch of a hundred thousand
    prompts costs a hundred thousand length checks, not as many whole-schema checks."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.schemas: dict[str, dict[str, Any] | None] = {}
        self.shapes: set[tuple[str, frozenset[str]]] = set()
        self.values: dict[str, dict[str, set[Any]]] = {}  # model -> parameter -> values seen
        self.wire_names: dict[str, dict[str, str]] = {}

    async def fetch(self, model: ModelSpec) -> None:
        """The model's live schema, once (None when it cannot be had: its requests go unchecked)."""
        if model.api_id not in self.schemas:
            self.schemas[model.api_id] = await _live_schema(self.ctx, model.api_id)
            self.wire_names[model.api_id] = {p.name: p.wire for p in model.params}
            self.values[model.api_id] = {p.name: set() for p in model.params}

    def check(self, model: ModelSpec, origin: str, params: dict[str, Any]) -> None:
        """Hold one request (manifest names) against the schema `fetch` got; SchemaMismatch if it breaks it."""
        api_id = model.api_id
        schema = self.schemas[api_id]
        if schema is None:
            return
        shape = (api_id, frozenset(params))  # manifest names: one per wire name
        if shape not in self.shapes:
            # A local image stands as the URL it will be when sent (made only at submission).
            wire = with_urls(model.to_wire(params), placeholder_url)
            self.shapes.add(shape)
            self._raise_if(origin, api_id, check_against(schema, wire))
            return
        props = schema.get("properties")
        if not isinstance(props, dict):
            return
        names, values = self.wire_names[api_id], self.values[api_id]
        for name, value in params.items():
            seen, key = values[name], _value_key(value)
            if key in seen:
                continue
            seen.add(key)
            wire_name, wire_value = names[name], with_urls(value, placeholder_url)
            if _plainly_fits(props.get(wire_name), wire_value):
                continue
            rule: dict[str, Any] = {"type": "object", "properties": {wire_name: props.get(wire_name, {})}}
            rule.update({k: schema[k] for k in ("$defs", "definitions") if k in schema})
            self._raise_if(origin, api_id, check_against(rule, {wire_name: wire_value}))

    @staticmethod
    def _raise_if(origin: str, api_id: str, found: list[Any]) -> None:
        if found:
            raise SchemaMismatch(f"{origin}: the live API schema of {api_id} rejects this batch before "
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
    models: dict[str | None, ModelSpec] = {}
    pending = S.PENDING.value
    async for page in pending_pages(ctx, states=(S.PENDING, S.SUBMITTED)):
        for _, job_id, state, origin, text, model_name in page:
            params = json.loads(text)
            if LOCAL_PREFIX in text:  # (JSON writes the prefix as it is)
                for value in params.values():
                    if isinstance(value, list):
                        for address in local_addresses(value):
                            found.local.setdefault(address, origin)
            if state != pending:
                continue
            if ctx.options.preflight:
                references_of(((origin, params),), into=found.references)
            if schema is not None:
                model = models.get(model_name)
                if model is None:  # the first job of each model (one that cannot be sent is refused)
                    job = await ctx.threads.run(ctx.ledger.get, job_id)
                    model = models[model_name] = ctx.model_of(job)
                    await schema.fetch(model)
                schema.check(model, origin, params)
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
    await ctx.threads.run(ctx.ledger.write, ctx.ledger.remember_references(report.results))
    if report.errors:
        raise PreflightFailed(report.errors)
    warn = ctx.options.on_warning or log.warning
    for line in report.warning_lines():
        warn(line)
