"""What the ledger holds: `batches` lists every batch; `prune` takes out of a batch the jobs no row
of its current manifest produces (orphans), never one that was paid for."""

from __future__ import annotations

import json
from typing import Any

import click

from ..money import json_safe
from . import batch_option, cli, reading_ledger


@cli.command()
@reading_ledger
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, an object per batch.")
def batches(ledger_path: str, as_json: bool) -> None:
    """List the ledger's batches: name, model, jobs per state, credits, last activity, control word."""
    from ..text import format_credits, iso, state_counts
    from .results import _open_existing
    with _open_existing(ledger_path) as ledger:
        listed = [_batch_info(ledger, b) for b in ledger.batches()]
    if as_json:
        click.echo(json.dumps(json_safe(listed), indent=2, allow_nan=False))
        return
    if not listed:
        click.echo(f"the ledger {ledger_path} holds no batch yet")
    for b in listed:
        orphans = f"; {b['orphans']} orphan(s)" if b["orphans"] else ""
        click.echo(f"{b['name']}  {b['model']}  {b['jobs']} job(s): {state_counts(b['counts']) or 'none'}{orphans}; "
                   f"{format_credits(b['credits_spent'])} credits spent; last activity {iso(b['last_activity'])}; "
                   f"{b['control']}{' (simulated)' if b['simulated'] else ''}")


def _batch_info(ledger: Any, batch: Any) -> dict[str, Any]:
    """One batch as `batches` lists it (jobs per state are the current manifest's; orphans apart)."""
    counts = {s: n for s, n in ledger.counts(batch.name, orphans=False).items() if n}
    return {"name": batch.name, "model": batch.model, "jobs": sum(counts.values()), "counts": counts,
            "orphans": ledger.orphan_jobs(batch.name), "credits_spent": round(ledger.spend(batch.name).spent, 2),
            "credits_committed": round(batch.committed, 2), "last_activity": ledger.last_activity(batch.name),
            "control": batch.control, "simulated": bool(batch.simulated), "manifest": batch.manifest}


@cli.command()
@click.argument("manifest", required=False, type=click.Path(dir_okay=False))
@batch_option
@reading_ledger
@click.option("--forget", is_flag=True,
              help="Remove the unpaid orphans from the batch (jobs, events, attempts) instead of cancelling them.")
@click.option("--json", "as_json", is_flag=True, help="Print what was done as a JSON object.")
def prune(manifest: str | None, batch_name: str | None, ledger_path: str, forget: bool, as_json: bool) -> None:
    """Cancel the jobs no row of MANIFEST produces any more (orphans: a prompt, seed list, row or
    reference changed), unless paid for. The MANIFEST is staged first (nothing is sent); with
    --batch NAME, the orphans its latest run or retry left."""
    from .control import _batch_name
    from .results import _open_existing
    name = _batch_name(manifest, batch_name)
    with _open_existing(ledger_path, name) as ledger:
        if manifest is not None:
            _stage(ledger, manifest)
        detail = "`batcher prune --forget`" if forget else "`batcher prune`"
        pruned = ledger.write(ledger.prune(name, forget=forget, detail=detail))
    if as_json:
        click.echo(json.dumps({"batch": name, "cancelled": pruned.cancelled, "forgotten": pruned.forgotten,
                               "kept_paid": pruned.kept_paid, "kept": pruned.kept}, indent=2))
        return
    from ..text import state_counts
    done = (f"{pruned.forgotten} unpaid orphan(s) removed" if forget
            else f"{pruned.cancelled} pending orphan(s) cancelled")
    kept = (f"; {pruned.kept_paid} paid orphan(s) kept ({state_counts(pruned.kept)}): they cost credits, their "
            "clips and records stay, marked orphaned (`export --include-orphans` includes them)") if pruned.kept else ""
    click.echo(f"batch {name!r}: {done}{kept}")


def _stage(ledger: Any, manifest: str) -> None:
    """Stage the manifest (its jobs marked as the batch's current ones; nothing is sent), so the
    orphans pruned are those of this manifest."""
    from ..launch import stage
    from ..manifest import load_manifest
    from .plans import _described
    m = _described(load_manifest(manifest), ledger.location)
    stage(ledger, m, simulated=ledger.is_simulated(m.batch))
