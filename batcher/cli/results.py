"""Reading a batch back: status, exports, the gallery."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ..errors import BatcherError
from ..money import json_safe
from . import batch_option, cli, modules_loading, named_batch, only_batch, reading_ledger


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
    batch = named_batch(manifest, batch_name)
    with modules_loading():
        from ..views import history_lines, row_lines, status_lines
        from ..views.commands import orphan_lines, orphans_info
        opened = _open_existing(ledger_path, batch)  # (it loads the ledger's modules)
    with opened as ledger:
        if model is not None:  # (an export's module: the counts need none of it)
            from ..views.record import check_model
            check_model(ledger, batch, model)
        if job_key:
            from ..text import iso
            from ..views.record import job_record, render_timing
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
    from ..views import by_model_info, figures_info
    from ..views.commands import orphans_info, status_info
    if model is None:
        data = status_info(ledger, batch)
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


FOLDER_FORMATS = ("videofolder", "webdataset")


@cli.command()
@click.argument("manifest", required=False, type=click.Path(dir_okay=False))
@reading_ledger
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "videofolder", "webdataset", "parquet"]),
              default="jsonl", show_default=True,
              help="jsonl or csv records, a videofolder dataset, webdataset tar shards, or a parquet index.")
@click.option("-o", "--output", type=click.Path(), default=None, metavar="PATH",
              help="Where the export goes: the file for jsonl, csv and parquet (jsonl and csv default to standard "
                   "output, also -), the folder for videofolder and webdataset.")
# The folder's option before -o/--output took folders too; kept so scripts using it still work.
@click.option("--out", "old_out", type=click.Path(), default=None, hidden=True,
              help="The former spelling of -o for videofolder (says so on stderr when used).")
@click.option("--include-failed", is_flag=True, help="videofolder: list jobs without a video in not_completed.jsonl.")
@click.option("--split", "split_spec", default=None, metavar="NAME=SHARE,...",
              help="Assign each clip to a split by a hash of its key (train=0.9,validation=0.1): a split field, "
                   "a folder per split (videofolder), shards per split (webdataset).")
@click.option("--include-rejected", is_flag=True, help="Export the clips `batcher reject` left out, too.")
@click.option("--shard-size", default="1GB", show_default=True, metavar="SIZE",
              help="webdataset: the most a shard holds (a larger clip gets a shard of its own).")
@click.option("--link", is_flag=True,
              help="videofolder: write no video files; metadata.jsonl names each clip by its location (an s3:// "
                   "URI of the output store, or a path) and, with --presign, a presigned HTTPS URL.")
@click.option("--presign", "presign", default=None, metavar="DURATION",
              help="Give each clip in an output store (s3://) an HTTPS URL that fetches it for DURATION (90m, 1h, "
                   "7d at most), in `url`. The URL names the access key id it is signed with, never a secret.")
@model_option
@orphans_option
@batch_option
def export(manifest: str | None, ledger_path: str, fmt: str, output: str | None, old_out: str | None,
           include_failed: bool, split_spec: str | None, include_rejected: bool, shard_size: str, link: bool,
           presign: str | None, model: str | None, include_orphans: bool, batch_name: str | None) -> None:
    """Export jobs with their provenance and dataset columns: JSONL, CSV or Parquet records, a
    VideoFolder dataset or WebDataset shards.

    Clips a run wrote to an output store (s3://BUCKET/PREFIX) are read from the bucket with the
    environment's credentials (AWS_*), from any host that reaches the ledger and the bucket."""
    from ..views import Selection, check_model, export_videofolder, parse_splits
    from ..views import export as write_export
    from ..views.exports import presign_lifetime
    output = _export_output(output, old_out, fmt)
    if link and fmt != "videofolder":
        raise click.UsageError("--link is for --format videofolder (records always carry each clip's location)")
    if presign is not None and fmt == "videofolder" and not link:
        raise click.UsageError("--presign with --format videofolder needs --link (otherwise the clips are downloaded)")
    if presign is not None and fmt in ("webdataset", "parquet"):
        raise click.UsageError(f"--presign is for jsonl, csv and videofolder --link, not --format {fmt}")
    lifetime = presign_lifetime(presign) if presign is not None else None
    selection = Selection(model, parse_splits(split_spec) if split_spec else None, include_rejected,
                          orphans=include_orphans)
    shard_bytes = _shard_bytes(shard_size)
    batch = named_batch(manifest, batch_name)
    with _open_existing(ledger_path, batch) as ledger:
        check_model(ledger, batch, model)
        if fmt == "videofolder":
            _folder_lines(output, export_videofolder(ledger, batch, Path(output), include_failed, model, selection,
                                                     link, lifetime))
            return
        if fmt in ("webdataset", "parquet"):
            _export_records_file(ledger, batch, fmt, Path(output), selection, shard_bytes)
            return
        if output == "-":
            n = write_export(ledger, batch, fmt, sys.stdout, model, selection, lifetime)
        else:
            with open(output, "w", encoding="utf-8", newline="") as f:
                n = write_export(ledger, batch, fmt, f, model, selection, lifetime)
            click.echo(f"wrote {n} record(s) to {output}", err=True)


def _folder_lines(output: str, r: Any) -> None:
    """What a videofolder export did (on stderr), each clip this host could not reach named."""
    if r.listed:
        what = f"{r.videos} clip(s) listed by location in metadata.jsonl (no video files written)"
    else:
        fetched = f", {r.downloaded} downloaded" if r.downloaded else ""
        what = (f"{r.videos} video(s) ({r.linked} linked, {r.copied} copied{fetched}, {r.unchanged} already there) "
                "and metadata.jsonl")
    click.echo(f"{output}: {what}; {r.others} job(s) without a video" + _unverified(r.unverified), err=True)
    for line in r.missing[:20]:
        click.echo(f"  missing: {line}", err=True)
    if len(r.missing) > 20:
        click.echo(f"  ... and {len(r.missing) - 20} more", err=True)


def _unverified(keys: list[str]) -> str:
    return f"; {len(keys)} skipped: file missing or not matching its sha256" if keys else ""


def _shard_bytes(text: str) -> int:
    from ..views import parse_size
    return parse_size(text)


def _export_records_file(ledger: Any, batch: str | None, fmt: str, output: Path, selection: Any,
                         shard_bytes: int) -> None:
    """webdataset shards into a folder, or the parquet index into a file."""
    from ..views import export_parquet, export_webdataset
    if fmt == "parquet":
        n = export_parquet(ledger, batch, output, selection)
        click.echo(f"wrote {n} record(s) to {output}", err=True)
        return
    r = export_webdataset(ledger, batch, output, selection, shard_bytes)
    click.echo(f"{output}: {r.videos} clip(s) in {len(r.shards)} new shard(s) ({r.already} already in finished "
               f"shards); {r.others} job(s) without a video" + _unverified(r.unverified), err=True)


def _export_output(output: str | None, old_out: str | None, fmt: str) -> str:
    """Where the export goes: -o/--output (or the deprecated --out, said once on stderr), checked
    against the format: a folder for videofolder, a file (or - for standard output) otherwise."""
    if old_out is not None:
        if output is not None:
            raise click.UsageError("give -o/--output only (--out is its old name)")
        click.echo("batcher: export --out is deprecated: use -o/--output (the same meaning)", err=True)
        output = old_out
    if fmt in FOLDER_FORMATS:
        if output in (None, "-"):
            raise click.UsageError(f"--format {fmt} needs -o/--output FOLDER")
        if Path(output).exists() and not Path(output).is_dir():
            raise click.UsageError(f"-o/--output {output} is a file: --format {fmt} writes a folder")
        return output
    if fmt == "parquet" and output in (None, "-"):
        raise click.UsageError("--format parquet needs -o/--output FILE")
    if output not in (None, "-") and Path(output).is_dir():
        raise click.UsageError(f"-o/--output {output} is a folder: --format {fmt} writes a file")
    return output or "-"


@cli.command()
@click.argument("manifest", required=False, type=click.Path(dir_okay=False))
@reading_ledger
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="report.html", show_default=True,
              help="The HTML file to write.")
@click.option("--presign", "presign", default="7d", show_default=True, metavar="DURATION",
              help="How long the page plays clips in an output store (s3://): it links them by presigned HTTPS "
                   "URLs, signed now, that work this long (at most 7d) and name the access key id they are signed "
                   "with, never a secret.")
@model_option
@orphans_option
@batch_option
def report(manifest: str | None, ledger_path: str, output: str, presign: str, model: str | None,
           include_orphans: bool, batch_name: str | None) -> None:
    """Write a self-contained HTML gallery of a batch: clips, prompts, references, costs, reasons."""
    from ..views import build_report, check_model
    from ..views.exports import presign_lifetime
    lifetime = presign_lifetime(presign)
    batch = named_batch(manifest, batch_name)
    with _open_existing(ledger_path, batch) as ledger:
        batch = batch or only_batch(ledger)
        check_model(ledger, batch, model)
        n = build_report(ledger, batch, Path(output), model=model, presign=lifetime, orphans=include_orphans)
    click.echo(f"wrote {output} ({n} job(s))", err=True)
