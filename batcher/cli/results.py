"""Reading a batch back: status, exports, the gallery."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ..errors import BatcherError
from ..money import json_safe
from . import batch_option, cli, named_batch, only_batch, reading_ledger


def _open_existing(ledger_path: str, batch: str | None = None) -> Any:
    """The ledger to read; when it lacks the batch but the simulated ledger has it, say so."""
    from ..defaults import SIMULATED_LEDGER
    from ..errors import LedgerError
    from ..ledger import Ledger, is_database_url, read_states
    simulated = Path(SIMULATED_LEDGER)
    hint = ""
    if ledger_path != SIMULATED_LEDGER and simulated.exists() and (
            batch is None or read_states(simulated, batch)):
        what = f"batch {batch!r}" if batch else "simulated batches"
        hint = (f"; {SIMULATED_LEDGER} holds {what} from --simulate runs: add --simulate "
                f"(or --ledger {SIMULATED_LEDGER})")
    if not is_database_url(ledger_path) and not Path(ledger_path).exists():
        raise LedgerError(f"no ledger at {ledger_path}{hint or ' (run a manifest first, or pass --ledger)'}")
    ledger = Ledger(ledger_path)
    if batch is not None and ledger.batch(batch) is None:
        ledger.close()
        raise LedgerError(f"batch {batch!r} is not in the ledger {ledger.display}{hint}")
    return ledger


model_option = click.option("--model", "model", default=None, metavar="APIID",
                            help="Only the jobs of this model (a batch may mix models).")
orphans_option = click.option("--include-orphans", is_flag=True,
                              help="Also the jobs no row of the current manifest produces (left out by default).")


@cli.command()
@click.argument("manifest", required=False, type=click.Path(dir_okay=False))
@batch_option
@reading_ledger
@click.option("--json", "as_json", is_flag=True, help="Print an object with counts, credits_spent and more.")
@click.option("--job", "job_key", default=None, help="Show one job's history (a key or its first characters).")
@click.option("--rows", "by_row", is_flag=True, help="Jobs per state for each manifest row.")
@model_option
def status(manifest: str | None, batch_name: str | None, ledger_path: str, as_json: bool, job_key: str | None,
           by_row: bool, model: str | None) -> None:
    """Show jobs per state, credits spent and held, and videos downloaded; jobs no row of the
    current manifest produces (orphans) apart."""
    from ..text import iso
    from ..views import history_lines, row_lines, status_lines
    from ..views.commands import orphan_lines, orphans_info
    from ..views.exports import check_model, job_record, render_timing
    batch = named_batch(manifest, batch_name)
    with _open_existing(ledger_path, batch) as ledger:
        check_model(ledger, batch, model)
        if job_key:
            jobs = [j for j in ledger.find(job_key, batch) if model is None or _model_of(ledger, j) == model]
            if not jobs:
                raise BatcherError(f"no job whose key starts with {job_key!r}")
            if len(jobs) > 1:
                raise BatcherError(f"{len(jobs)} jobs start with {job_key!r}; give more characters")
            job = jobs[0]
            events = ledger.events(job.id)
            if as_json:
                record = job_record(job, timing=render_timing(ledger, job))
                click.echo(json.dumps(json_safe({**record, "events": [
                    {"at": iso(e.at), "kind": e.kind, "from": e.from_state, "to": e.to_state, "detail": e.detail}
                    for e in events]}), indent=2, allow_nan=False))
                return
            for line in history_lines(job, events):
                click.echo(line)
            return
        if by_row:
            if batch is None:
                raise click.UsageError("--rows needs the MANIFEST (or --batch NAME)")
            rows = ledger.counts_by_row_and_model(batch, model)
            if as_json:
                click.echo(json.dumps([{"origin": o, "label": label, "prompt": prompt, "model": m, "counts": c}
                                       for o, label, prompt, m, c in rows], indent=2, allow_nan=False))
                return
            for line in row_lines(rows, show_model=len({r[3] for r in rows}) > 1) + orphan_lines(
                    orphans_info(ledger.orphans(batch))):
                click.echo(line)
            return
        data = _status_data(ledger, batch, model)
        if as_json:
            click.echo(json.dumps(json_safe(data), indent=2, allow_nan=False))
            return
        for name, info in ([(batch, data)] if batch else data["batches"].items()):
            for line in status_lines(name, info):
                click.echo(line)


def _model_of(ledger: Any, job: Any) -> str | None:
    """The model a job renders with (its batch's, for a job an older ledger wrote without one)."""
    if job.model:
        return str(job.model)
    info = ledger.batch(job.batch)
    return info.model if info else None


def _status_data(ledger: Any, batch: str | None, model: str | None) -> dict[str, Any]:
    """`status`'s figures: `api.status`, with jobs and credits per model for a batch that mixes
    models; with `model`, the same figures of that model's jobs only (batches without it left out)."""
    from .. import api
    from ..views import by_model_info, figures_info
    from ..views.commands import orphans_info
    if model is None:
        data = api.status(ledger, batch)
        for name, info in ([(batch, data)] if batch else data["batches"].items()):
            per = ledger.counts_by_model(name)
            if len(per) > 1:
                info["by_model"] = by_model_info(per)
            info.update(_control_of(ledger, name))
            if info["orphans"]:
                info["orphan_jobs"] = orphans_info(ledger.orphans(name))
        return data
    infos = {name: {"model": model, **figures_info(ledger.figures(name, model=model)),
                    "batch_credits_committed": round(ledger.committed(name), 2), **_control_of(ledger, name)}
             for name in ([batch] if batch else [b.name for b in ledger.batches()])
             if model in ledger.models_of(name)}
    if batch:
        return {"batch": batch, **infos[batch]}
    totals: dict[str, int] = {}
    for info in infos.values():
        for state, n in info["counts"].items():
            totals[state] = totals.get(state, 0) + n
    return {"batches": infos, "model": model, "counts": totals,
            "credits_spent": round(sum(i["credits_spent"] for i in infos.values()), 2)}


def _control_of(ledger: Any, name: str) -> dict[str, Any]:
    """The batch's control word (running, paused, cancelled: `batcher pause / resume / cancel`)."""
    from ..text import iso
    found = ledger.control_word(name)
    word, at = found if found is not None else ("running", None)
    return {"control": str(word), "control_at": iso(at)}


@cli.command()
@click.argument("manifest", required=False, type=click.Path(dir_okay=False))
@reading_ledger
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "videofolder"]), default="jsonl",
              show_default=True, help="jsonl or csv records, or a videofolder dataset.")
@click.option("-o", "--output", type=click.Path(), default=None, metavar="PATH",
              help="Where the export goes: the file for jsonl and csv (default: standard output, also -), "
                   "the folder for videofolder.")
# The folder's option before -o/--output took folders too; kept so scripts using it still work.
@click.option("--out", "old_out", type=click.Path(), default=None, hidden=True,
              help="The former spelling of -o for videofolder (says so on stderr when used).")
@click.option("--include-failed", is_flag=True, help="videofolder: list jobs without a video in not_completed.jsonl.")
@model_option
@orphans_option
@batch_option
def export(manifest: str | None, ledger_path: str, fmt: str, output: str | None, old_out: str | None,
           include_failed: bool, model: str | None, include_orphans: bool, batch_name: str | None) -> None:
    """Export jobs with their provenance: JSONL or CSV records, or a VideoFolder dataset."""
    from ..views import check_model, export_videofolder
    from ..views import export as write_export
    output = _export_output(output, old_out, fmt)
    batch = named_batch(manifest, batch_name)
    with _open_existing(ledger_path, batch) as ledger:
        check_model(ledger, batch, model)
        if fmt == "videofolder":
            r = export_videofolder(ledger, batch, Path(output), include_failed, model, orphans=include_orphans)
            click.echo(f"{output}: {r.videos} video(s) ({r.linked} linked, {r.copied} copied, {r.unchanged} "
                       f"already there) and metadata.jsonl; {r.others} job(s) without a video"
                       + (f"; {len(r.unverified)} skipped: file missing or not matching its sha256"
                          if r.unverified else ""), err=True)
            return
        if output == "-":
            n = write_export(ledger, batch, fmt, sys.stdout, model, orphans=include_orphans)
        else:
            with open(output, "w", encoding="utf-8", newline="") as f:
                n = write_export(ledger, batch, fmt, f, model, orphans=include_orphans)
            click.echo(f"wrote {n} record(s) to {output}", err=True)


def _export_output(output: str | None, old_out: str | None, fmt: str) -> str:
    """Where the export goes: -o/--output (or the deprecated --out, said once on stderr), checked
    against the format: a folder for videofolder, a file (or - for standard output) otherwise."""
    if old_out is not None:
        if output is not None:
            raise click.UsageError("give -o/--output only (--out is its old name)")
        click.echo("batcher: export --out is deprecated: use -o/--output (the same meaning)", err=True)
        output = old_out
    if fmt == "videofolder":
        if output in (None, "-"):
            raise click.UsageError("--format videofolder needs -o/--output FOLDER")
        if Path(output).exists() and not Path(output).is_dir():
            raise click.UsageError(f"-o/--output {output} is a file: --format videofolder writes a folder")
        return output
    if output not in (None, "-") and Path(output).is_dir():
        raise click.UsageError(f"-o/--output {output} is a folder: --format {fmt} writes a file")
    return output or "-"


@cli.command()
@click.argument("manifest", required=False, type=click.Path(dir_okay=False))
@reading_ledger
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="report.html", show_default=True,
              help="The HTML file to write.")
@model_option
@orphans_option
@batch_option
def report(manifest: str | None, ledger_path: str, output: str, model: str | None, include_orphans: bool,
           batch_name: str | None) -> None:
    """Write a self-contained HTML gallery of a batch: clips, prompts, references, costs, reasons."""
    from ..views import build_report, check_model
    batch = named_batch(manifest, batch_name)
    with _open_existing(ledger_path, batch) as ledger:
        batch = batch or only_batch(ledger)
        check_model(ledger, batch, model)
        n = build_report(ledger, batch, Path(output), model=model, orphans=include_orphans)
    click.echo(f"wrote {output} ({n} job(s))", err=True)
