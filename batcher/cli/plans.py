"""Checking and planning a manifest: nothing is sent, nothing is written."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import click

from ..manifest import load_manifest
from ..money import json_safe
from ..plan import check
from . import checked_rates, cli, max_jobs_option, rate_option, reading_ledger, store_options, store_settings


def _store_options(f: Any) -> Any:
    for d in reversed(store_options):
        f = d(f)
    return f


@cli.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@max_jobs_option
@click.option("--online", is_flag=True,
              help="Also fetch every reference URL and check it as a run's preflight would (nothing is spent).")
@click.option("--simulate", is_flag=True, help="With --online: fetch through the built-in simulator (offline).")
def validate(manifest: str, max_jobs: int, online: bool, simulate: bool) -> None:
    """Check a manifest and report every problem as FILE:LINE: message."""
    import os

    from ..defaults import DEFAULT_LEDGER
    # Models batcher has no table for are described from the ledger's cache (nothing is sent).
    m = _described(load_manifest(manifest), os.environ.get("BATCHER_LEDGER", DEFAULT_LEDGER))
    if online:  # first: a refused local image and the refused reference URLs in one refusal
        from ..api import check_references
        from ..errors import PreflightFailed
        report = check_references(m, simulate=simulate, max_jobs=max_jobs)
    summary = check(m, max_jobs=max_jobs)
    if online:
        for line in report.warning_lines():
            click.echo(line, err=True)
        if report.errors:
            raise PreflightFailed(report.errors)
        local = f", {len(m.local_files)} local image(s) checked" if m.local_files else ""
        click.echo(f"{manifest}: {report.checked} reference URL(s){local} checked, {len(report.warnings)} "
                   "unreachable from this machine")
    images = {**m.set_files, **m.local_files}
    click.echo(f"{manifest}: ok, batch {m.batch!r}, {len(m.rows)} row(s), {summary.jobs} job(s)"
               + (f", {summary.duplicates} duplicate(s) merged" if summary.duplicates else "")
               + (f", {len(images)} local image(s) read (type, size, pixels)" if images and not online else ""))


@cli.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@reading_ledger
@rate_option
@click.option("--json", "as_json", is_flag=True, help="Print the plan as a JSON object.")
@click.option("--jobs", "list_jobs", is_flag=True,
              help="List every job: key, label, take, estimate, prompt after templating, parameters.")
@click.option("--concurrency", "-c", default=4, show_default=True, type=click.IntRange(1, 1000),
              help="Jobs in flight, for the wall-time estimate.")
@max_jobs_option
@_store_options
def plan(manifest: str, ledger_path: str, rates: tuple[str, ...], as_json: bool, list_jobs: bool,
         concurrency: int, max_jobs: int, **store: Any) -> None:
    """Show the jobs a manifest expands to, what they should cost and take; sends and writes nothing."""
    from ..plan import iter_jobs
    from ..views import ModelShares, plan_lines
    m = _described(load_manifest(manifest), ledger_path)
    overrides = checked_rates(m, rates)
    states = _read_states(ledger_path, m.batch)
    one_model = len({m.model_of(row).api_id for row in m.rows}) <= 1
    summary = check(m, overrides, max_jobs=max_jobs, keep=states is not None and not list_jobs and one_model)
    data = summary.to_json()
    mixed = len(summary.by_model) > 1
    shares = ModelShares(m) if mixed else None
    jobs = list(iter_jobs(m, overrides, max_jobs=max_jobs)) if list_jobs else []
    if list_jobs:
        data["job_list"] = [{"key": j.key, "label": j.label, "take": j.take, "origin": j.origin,
                             **({"model": j.model} if mixed else {}),
                             "prompt": j.params.get("prompt"), "parameters": j.params, "estimate": j.estimate}
                            for j in jobs]
    held = _held(m, overrides, max_jobs, summary, jobs, shares, states)
    if shares is not None:
        data["models"] = shares.to_json()
        of_row = {row.origin: m.model_of(row).api_id for row in m.rows}
        for row in data["rows"]:
            row["model"] = of_row.get(row["origin"], m.model.api_id)
    data["wall_time"] = wall_time_estimate(m, summary, concurrency)
    if states is not None:
        from ..ledger import display_location
        from ..money import from_hundredths
        from ..policy import estimate_wall_seconds
        to_run, hundredths = held.pop("to_run"), held.pop("to_run_hundredths")
        orphans = _orphans(ledger_path, m.batch, held.pop("orphan_keys"))
        data["ledger"] = {"path": display_location(ledger_path), **held, **orphans, "to_run": {
            "jobs": to_run, "credits": from_hundredths(hundredths),
            "seconds": estimate_wall_seconds(to_run, concurrency, data["wall_time"]["typical_render_seconds"])}}
    uploads = _uploads(m, ledger_path, store_settings(m, **store))
    if uploads is not None:
        data["local_images"] = {**data.get("local_images", {}), **uploads}
    if as_json:
        click.echo(json.dumps(json_safe(data), indent=2, allow_nan=False))
        return
    for line in plan_lines(m, summary, overrides, data, jobs):
        click.echo(line)
    if uploads is not None:
        click.echo(_uploads_line(uploads))


# What a rerun does with a job the ledger holds in each state (one it lacks is sent, as a pending one is).
_RERUN = {"pending": "to_run", "submitting": "in_flight", "submitted": "in_flight", "rendered": "in_flight",
          "unknown": "held", "failed": "held", "expired": "held", "cancelled": "held"}


def _held(m: Any, overrides: dict[str, float], max_jobs: int, summary: Any, jobs: list[Any], shares: Any,
          states: dict[str, str] | None) -> dict[str, Any]:
    """What the ledger holds of the plan's jobs, and what a rerun would still send: its jobs and
    their estimates (in hundredths), and the keys of its jobs the plan lacks (`orphan_keys`); a mixed
    batch's jobs are added to its model shares on the way."""
    held: dict[str, Any] = {"in_ledger": 0, "completed": 0, "in_flight": 0, "held": 0, "to_run": 0,
                            "to_run_hundredths": 0}
    if states is None and shares is None:
        return held
    left = set(states or ())  # the ledger's keys no job of this manifest has: orphans
    for key, estimate in _keys(m, overrides, max_jobs, summary, jobs, shares):
        state = states.get(key) if states is not None else None
        held["in_ledger"] += state is not None
        left.discard(key)
        outcome = "to_run" if state is None else _RERUN.get(state, state)
        held[outcome] = held.get(outcome, 0) + 1
        if outcome == "to_run":
            held["to_run_hundredths"] += estimate
    held["orphan_keys"] = left
    return held


# States of jobs that have (or may have) cost credits.
_PAID_STATES = {"submitting", "submitted", "rendered", "completed", "unknown", "expired"}


def _orphans(location: str, batch: str, keys: set[str]) -> dict[str, Any]:
    """The ledger's jobs of the batch that this manifest does not produce, by the rows the ledger
    recorded for them (`orphans` for plan's JSON; nothing when there are none)."""
    if not keys:
        return {}
    from ..ledger import read_origins
    counts: dict[str, int] = {}
    rows: dict[tuple[str, str], dict[str, int]] = {}
    for state, origin, label in read_origins(location, batch, keys).values():
        counts[state] = counts.get(state, 0) + 1
        row = rows.setdefault((origin, label), {})
        row[state] = row.get(state, 0) + 1
    paid = sum(n for s, n in counts.items() if s in _PAID_STATES)
    return {"orphans": {"jobs": len(keys), "counts": counts, "paid": paid,
                        "rows": [{"origin": o, "label": lb, "counts": c} for (o, lb), c in rows.items()]}}


def _keys(m: Any, overrides: dict[str, float], max_jobs: int, summary: Any, jobs: list[Any],
          shares: Any) -> Iterator[tuple[str, int]]:
    """Every distinct job's key and estimate (in hundredths, as the ledger holds it), for counting
    what the ledger holds; a mixed batch's jobs are added to its model shares on the way. With
    neither shares nor a job list, they come from the rows `check` compiled (a 100,000-job
    manifest as a command: 2.75 s -> 1.8-2.0 s), not whole jobs."""
    if shares is None and not jobs:
        from ..plan import job_rows
        yield from ((r.key, r.estimate) for r in job_rows(m, overrides, max_jobs=max_jobs, compiled=summary.compiled))
        return
    from ..money import estimate_hundredths
    from ..plan import iter_jobs
    for job in jobs or iter_jobs(m, overrides, max_jobs=max_jobs):
        if shares is not None:
            shares.add(job)
        yield job.key, estimate_hundredths(job.estimate)


def wall_time_estimate(m: Any, summary: Any, concurrency: int) -> dict[str, Any]:
    """How long the batch should take at `concurrency` jobs in flight: waves of the model's typical
    render time; for a batch that mixes models, of the mean of each model's, weighted by its jobs."""
    from ..policy import estimate_wall_seconds
    typical = m.model.expected_render_seconds
    by_model: dict[str, float] = {}
    if len(summary.by_model) > 1:
        by_model = {api_id: m.models.get(api_id, m.model).expected_render_seconds for api_id in summary.by_model}
        typical = round(sum(n * by_model[a] for a, n in summary.by_model.items()) / max(1, summary.jobs), 2)
    wall = {"seconds": estimate_wall_seconds(summary.jobs, concurrency, typical), "concurrency": concurrency,
            "typical_render_seconds": typical}
    if by_model:
        wall["typical_render_seconds_by_model"] = by_model
        wall["typical_render_seconds_is"] = "the mean of each model's, weighted by its jobs"
    return wall


def _uploads(m: Any, ledger_path: str, settings: Any) -> dict[str, Any] | None:
    """What uploading the manifest's local images would take: how many the ledger knows are in
    the store already, how many bytes are left (nothing is uploaded, nothing asked of the store)."""
    images = {**m.set_files, **m.local_files}
    if not images:
        return None
    if settings is None:
        return {"store": None, "count": len(images), "stored": 0,
                "bytes_to_upload": sum(f.size for f in images.values())}
    import os
    identity = settings.identity(os.environ)
    from ..ledger import read_stored
    stored = (read_stored(ledger_path, identity, list(images)) if _ledger_exists(ledger_path) else None) or set()
    return {"store": identity, "count": len(images), "stored": len(stored),
            "bytes_to_upload": sum(f.size for a, f in images.items() if a not in stored)}


def _uploads_line(u: dict[str, Any]) -> str:
    size = f"{u['bytes_to_upload'] / 1e6:.1f} MB"
    if u["store"] is None:
        return (f"local images: {u['count']}, {size} to upload; a run needs a reference store "
                "(--reference-store s3://BUCKET/PREFIX or reference_store: in the manifest; --simulate needs none)")
    return (f"local images: {u['count']}, {u['stored']} already uploaded to {u['store']}, {size} left to upload "
            "(plan uploads nothing)")


# --- the ledger, opened only when there is one (SQLAlchemy is not imported otherwise) -------------

def _ledger_exists(location: str) -> bool:
    from pathlib import Path

    from ..defaults import is_database_url
    return is_database_url(location) or Path(location).exists()


def _read_states(location: str, batch: str) -> dict[str, str] | None:
    if not _ledger_exists(location):
        return None
    from ..ledger import read_states
    return read_states(location, batch)


def _described(m: Any, location: str) -> Any:
    """The manifest with the models it names that batcher has no table for described from the
    ledger's cache (nothing is sent)."""
    from ..models import wanted_descriptions
    if not wanted_descriptions(m):
        return m
    from ..api import describe_offline
    return describe_offline(m, location)
