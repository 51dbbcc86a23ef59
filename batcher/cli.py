"""The command line: a thin click layer over the library. The only module that exits the process.

Exit codes: 0 every job completed (or the command succeeded); 1 some jobs failed or need
attention; 2 usage, manifest or configuration error; 3 stopped by the budget or the account's
credits; 130 interrupted.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import click

from . import __version__
from .errors import BatcherError, ManifestError
from .ledger import DEFAULT_LEDGER, read_states
from .manifest import load_manifest
from .models import format_credits
from .plan import MAX_JOBS, check

EXIT_OK, EXIT_ATTENTION, EXIT_USAGE, EXIT_BUDGET, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class BatcherGroup(click.Group):
    """Maps library errors to one-line messages and exit codes, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ManifestError as e:
            for d in e.diagnostics:
                click.echo(str(d), err=True)
            ctx.exit(EXIT_USAGE)
        except BatcherError as e:
            click.echo(f"batcher: {e}", err=True)
            ctx.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            # Ctrl-C or SIGTERM outside a run (while a manifest is expanded or added to the
            # ledger): every ledger write is one transaction, so nothing half-done is left.
            click.echo("batcher: interrupted; nothing was submitted, and the ledger is as it was before this "
                       "step. Run the same command again to go on", err=True)
            ctx.exit(EXIT_INTERRUPTED)


def ledger_option(f: Any) -> Any:
    return click.option("--ledger", "ledger_path", envvar="BATCHER_LEDGER", default=DEFAULT_LEDGER,
                        show_default=True, metavar="PATH|URL",
                        help="SQLite ledger file, or postgresql+psycopg://USER:PASS@HOST/DB for a ledger "
                             "shared by several runners (or set BATCHER_LEDGER).")(f)


def parse_rates(values: tuple[str, ...]) -> dict[str, float]:
    rates = {}
    for item in values:
        name, _, value = item.partition("=")
        try:
            rates[name.strip()] = float(value)
        except ValueError:
            raise click.BadParameter(f"{item!r}: write RESOLUTION=CREDITS_PER_SECOND, e.g. 1080p=7.2",
                                     param_hint="--rate") from None
    return rates


def checked_rates(model: Any, values: tuple[str, ...]) -> dict[str, float]:
    """--rate values for this manifest's model; an unknown resolution is a usage error."""
    from .errors import UsageError
    rates = parse_rates(values)
    problem = model.check_rates(rates)
    if problem:
        raise UsageError(problem)
    return rates


rate_option = click.option("--rate", "rates", multiple=True, metavar="RES=CREDITS",
                           help="Credits per second of video for a resolution, e.g. 1080p=7.2 "
                                "(replaces the built-in estimate).")


@click.group(cls=BatcherGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="batcher")
def cli() -> None:
    """Render batches of reference-to-video clips through PixelDojo's API, safely."""


max_jobs_option = click.option("--max-jobs", type=click.IntRange(1), default=MAX_JOBS,
                               help=f"Refuse a manifest that expands to more jobs than this, counted before "
                                    f"identical requests merge (default {MAX_JOBS:,}).")


@cli.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@max_jobs_option
def validate(manifest: str, max_jobs: int) -> None:
    """Check a manifest and report every problem as FILE:LINE: message."""
    m = load_manifest(manifest)
    summary = check(m, max_jobs=max_jobs)
    click.echo(f"{manifest}: ok, batch {m.batch!r}, {len(m.rows)} row(s), {summary.jobs} job(s)"
               + (f", {summary.duplicates} duplicate(s) merged" if summary.duplicates else ""))


@cli.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@ledger_option
@rate_option
@click.option("--json", "as_json", is_flag=True, help="Print the plan as a JSON object.")
@click.option("--jobs", "list_jobs", is_flag=True,
              help="List every job: key, label, take, estimate, prompt after templating, parameters.")
@click.option("--concurrency", "-c", default=4, show_default=True, type=click.IntRange(1, 1000),
              help="Jobs in flight, for the wall-time estimate.")
@max_jobs_option
def plan(manifest: str, ledger_path: str, rates: tuple[str, ...], as_json: bool, list_jobs: bool,
         concurrency: int, max_jobs: int) -> None:
    """Show the jobs a manifest expands to, what they should cost and take; sends and writes nothing."""
    from .display import format_seconds
    from .plan import iter_jobs
    from .policy import estimate_wall_seconds
    m = load_manifest(manifest)
    overrides = checked_rates(m.model, rates)
    summary = check(m, overrides, max_jobs=max_jobs)
    states = read_states(ledger_path, m.batch)
    data = summary.to_json()
    wall = estimate_wall_seconds(summary.jobs, concurrency, m.model.expected_render_seconds)
    data["wall_time"] = {"seconds": wall, "concurrency": concurrency,
                         "typical_render_seconds": m.model.expected_render_seconds}
    jobs = list(iter_jobs(m, overrides, max_jobs=max_jobs)) if list_jobs else []
    if list_jobs:
        data["job_list"] = [{"key": j.key, "label": j.label, "take": j.take, "origin": j.origin,
                             "prompt": j.params.get("prompt"), "parameters": j.params, "estimate": j.estimate}
                            for j in jobs]
    if states is not None:
        held = {"completed": 0, "in_ledger": 0}
        for job in iter_jobs(m, overrides, max_jobs=max_jobs):
            state = states.get(job.key)
            if state is not None:
                held["in_ledger"] += 1
                held["completed"] += state == "completed"
        from .ledger import display_location
        data["ledger"] = {"path": display_location(ledger_path), **held}
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    guess = ""
    if summary.credits_are_guess:
        guessed = sorted(r for r in m.model.guessed_rates if r in summary.by_resolution and r not in overrides)
        guess = " (an upper estimate: " + ", ".join(
            f"{r} at {m.model.credits_per_second[r]:g} credits/s is unpublished" for r in guessed) + \
            "; set --rate to change it)"
    click.echo(f"batch {m.batch!r}: {summary.jobs} job(s), {summary.seconds_of_video} s of video, "
               f"estimated {format_credits(summary.credits)} credits{guess}")
    if summary.duplicates:
        click.echo(f"{summary.duplicates} duplicate job(s) merged: identical requests are rendered once")
    click.echo(f"wall time at --concurrency {concurrency}: about {format_seconds(wall)} "
               f"(renders of {m.model.api_id} typically take {m.model.expected_render_seconds:g} s)")
    if list_jobs:
        for j in jobs:
            extra = {k: v for k, v in j.params.items() if k not in ("prompt", "references")}
            prompt = " ".join(str(j.params.get("prompt", "")).split())
            click.echo(f"  {j.key}  {j.label} t{j.take}  {format_credits(j.estimate):>7}  {prompt!r}  "
                       f"{json.dumps(extra, ensure_ascii=False)}  refs: {len(j.params.get('references', []))}")
    width = max([len(r.origin) for r in summary.rows] + [6])
    click.echo(f"  {'row':<{width}}  {'label':<12} {'jobs':>7} {'credits':>10}")
    shown = summary.rows[:50]
    for r in shown:
        click.echo(f"  {r.origin:<{width}}  {r.label:<12} {r.jobs:>7} {format_credits(r.credits):>10}")
    if len(summary.rows) > len(shown):
        click.echo(f"  ... and {len(summary.rows) - len(shown)} more row(s) (--json lists them all)")
    if states is not None:
        led = data["ledger"]
        click.echo(f"ledger {led['path']}: holds {led['in_ledger']} of these jobs, {led['completed']} completed")


# --- running ----------------------------------------------------------------------------------

def run_options(f: Any) -> Any:
    """The options shared by `run` and `retry`."""
    decorators = [
        ledger_option,
        click.option("--out", "out_dir", type=click.Path(file_okay=False),
                     help="Folder for the videos (default: ./outputs/<batch>/)."),
        click.option("--concurrency", "-c", default=4, show_default=True, type=click.IntRange(1, 1000),
                     help="Most jobs in flight at the API at once."),
        click.option("--budget", type=click.FloatRange(0), default=None,
                     help="Most credits this batch may spend, counted across reruns."),
        click.option("--api-base", envvar="PIXELDOJO_API_BASE", default=None,
                     help="API base URL (or PIXELDOJO_API_BASE); default https://pixeldojo.ai."),
        click.option("--simulate", is_flag=True, help="Run against the built-in simulator: no network, no key."),
        click.option("--sim-render-seconds", type=click.FloatRange(0), default=0.5, show_default=True,
                     help="With --simulate: mean render time."),
        click.option("--sim-fail-rate", type=click.FloatRange(0, 1), default=0.0,
                     help="With --simulate: share of renders that fail (refunded)."),
        click.option("--max-attempts", type=click.IntRange(1), default=2, show_default=True,
                     help="Submissions per job when renders fail remotely (failures are refunded)."),
        click.option("--job-timeout", type=click.FloatRange(0), default=None,
                     help="Seconds after which a job stops being polled in this run (the next run polls it)."),
        click.option("--expected-render", type=click.FloatRange(0.01), default=60.0, show_default=True,
                     help="Render time to assume before any has been observed (first polls)."),
        click.option("--max-download-mb", type=click.IntRange(1), default=2048, show_default=True,
                     help="Refuse a video larger than this."),
        rate_option,
        click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
                     help="Write the HTML gallery here at the end, and print its path."),
        click.option("--rpm", type=click.FloatRange(1), default=None,
                     help="Most API requests per minute, all calls together (adapts to 429s)."),
        max_jobs_option,
        click.option("--max-retry-after", type=click.FloatRange(0), default=300.0, show_default=True,
                     help="Longest pause a 429's Retry-After may impose, in seconds (a longer one is capped)."),
        click.option("--lease-seconds", type=click.FloatRange(1), default=60.0, show_default=True,
                     help="How long a claimed job stays this runner's without a renewal (several runners)."),
        click.option("--json", "as_json", is_flag=True,
                     help="Print the end summary as a JSON object on stdout (progress stays on stderr)."),
        click.option("-v", "--verbose", is_flag=True, help="Log each request and state change to stderr."),
        click.option("--log-json", type=click.Path(dir_okay=False), default=None,
                     help="Write the same log as JSON lines to this file."),
    ]
    for d in reversed(decorators):
        f = d(f)
    return f


def _run(manifest: str, *, ledger_path: str, out_dir: str | None, concurrency: int, budget: float | None,
         api_base: str | None, simulate: bool, sim_render_seconds: float, sim_fail_rate: float,
         max_attempts: int, job_timeout: float | None, expected_render: float, max_download_mb: int,
         rates: tuple[str, ...], verbose: bool, log_json: str | None, resubmit_unknown: bool = False,
         requeue: tuple[str, ...] = (), report_path: str | None = None, rpm: float | None = None,
         lease_seconds: float = 60.0, as_json: bool = False, max_retry_after: float = 300.0,
         max_jobs: int = MAX_JOBS, **_: Any) -> None:
    import anyio

    from . import api
    from .display import ProgressPrinter, setup_logging, summary, summary_json
    from .ledger import display_location
    from .ledger import Ledger
    from .run import RunOptions
    from .simulator import SimConfig
    from .states import JobState

    m = load_manifest(manifest)
    overrides = checked_rates(m.model, rates)
    check(m, overrides, max_jobs=max_jobs)
    if simulate:
        # Simulated clips must never pass for real ones: unless --ledger is given on the command
        # line (BATCHER_LEDGER names the real ledger: it does not count), a simulated run keeps
        # its own ledger and folder, so a later real run of the batch renders everything.
        source = click.get_current_context().get_parameter_source("ledger_path")
        if source != click.core.ParameterSource.COMMANDLINE:
            ledger_path = api.SIMULATED_LEDGER
        expected_render = sim_render_seconds
    to = api.target(simulate=SimConfig(render_seconds=sim_render_seconds, fail_rate=sim_fail_rate)
                    if simulate else False, api_base=api_base,
                    simulator_state=api.simulator_state_for(ledger_path) if simulate else None)
    setup_logging(verbose, log_json, None if simulate else to.api_key)
    out = Path(out_dir) if out_dir else api.default_out_dir(m.batch, simulate)
    options = RunOptions(concurrency=concurrency, budget=budget, out_dir=out, max_attempts=max_attempts,
                         job_timeout=job_timeout, resubmit_unknown=resubmit_unknown,
                         expected_render=expected_render, max_download_bytes=max_download_mb * 1024 * 1024,
                         handle_signals=True, rpm=rpm, lease_seconds=lease_seconds, max_retry_after=max_retry_after)
    live = sys.stderr.isatty()
    # Redraw twice a second on a terminal; otherwise a line every 30 s, and no counting in between.
    options.progress_interval = 0.5 if live else 30.0
    printer = ProgressPrinter(sys.stderr, live=live, interval=30.0)
    with Ledger(ledger_path) as ledger:
        from .api import stage
        added, known = stage(ledger, m, overrides, checked=True, simulated=simulate,  # checked above
                             max_jobs=max_jobs)
        if requeue:
            n = ledger.requeue(m.batch, [JobState(s) for s in requeue], "requeued by `batcher retry`")
            click.echo(f"requeued {n} job(s) ({', '.join(requeue)})", err=True)
        click.echo(f"batch {m.batch!r}: {added} new job(s), {known} already in {ledger.display}", err=True)
        if budget is not None:
            outlook = api.budget_outlook(ledger, m.batch, budget).message()
            if outlook:
                click.echo(outlook, err=True)  # before anything is spent
        report = anyio.run(lambda: api.run_async(
            m, ledger=ledger, options=options, to=to, rate_overrides=overrides, on_progress=printer,
            on_force_exit=lambda: os._exit(EXIT_INTERRUPTED), stage_jobs=False))
        printer.end()
        _handle_signals()
        if report_path:
            from .report import build_report
            build_report(ledger, m.batch, Path(report_path))
    ledger_given = click.get_current_context().get_parameter_source("ledger_path") in (
        click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT) and not simulate

    def retry_command(state: str) -> str:
        words = ["batcher", "retry", f"--{state}", manifest]
        if ledger_given or (simulate and ledger_path != api.SIMULATED_LEDGER):
            words += ["--ledger", display_location(ledger_path)]
        if simulate:
            words.append("--simulate")
        return " ".join(shlex.quote(w) for w in words)
    # Progress and logs went to stderr; the summary is the command's result: stdout.
    if as_json:
        data = summary_json(report, str(out), retry_command)
        data["ledger"], data["simulated"] = display_location(ledger_path), simulate
        if report_path:
            data["report"] = str(Path(report_path).resolve())
        click.echo(json.dumps(data, indent=2))
    else:
        for line in summary(report, str(out), retry_command):
            click.echo(line)
        if report_path:
            click.echo(f"report: {Path(report_path).resolve()}")
    sys.exit(report.exit_code)


@cli.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@run_options
@click.option("--resubmit-unknown", is_flag=True,
              help="Resubmit jobs whose earlier submission had an unknown outcome (may pay twice).")
def run(manifest: str, **kwargs: Any) -> None:
    """Render a manifest: submit, poll and download every job, resuming where the last run stopped."""
    _run(manifest, **kwargs)


@cli.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--unknown", is_flag=True, help="Resubmit jobs held because a submission's outcome was unknown.")
@click.option("--failed", is_flag=True, help="Requeue jobs that failed (remote failures or rejected).")
@click.option("--expired", is_flag=True, help="Re-render jobs whose video expired before it was downloaded.")
@run_options
def retry(manifest: str, unknown: bool, failed: bool, expired: bool, **kwargs: Any) -> None:
    """Requeue held, failed or expired jobs by your decision, then run the manifest."""
    states = tuple(name for name, on in (("unknown", unknown), ("failed", failed), ("expired", expired)) if on)
    if not states:
        raise click.UsageError("say what to retry: --unknown, --failed and/or --expired")
    _run(manifest, requeue=states, **kwargs)


def _batch_for(manifest: str | None) -> str | None:
    if manifest is None:
        return None
    return load_manifest(manifest).batch


def _open_existing(ledger_path: str, batch: str | None = None) -> Any:
    """The ledger to read; when it lacks the batch but the simulated ledger has it, say so."""
    from .api import SIMULATED_LEDGER
    from .errors import LedgerError
    from .ledger import Ledger, is_database_url, read_states
    simulated = Path(SIMULATED_LEDGER)
    hint = ""
    if ledger_path != SIMULATED_LEDGER and simulated.exists() and (
            batch is None or read_states(simulated, batch)):
        what = f"batch {batch!r}" if batch else "simulated batches"
        hint = f"; {SIMULATED_LEDGER} holds {what} from --simulate runs: add --ledger {SIMULATED_LEDGER}"
    if not is_database_url(ledger_path) and not Path(ledger_path).exists():
        raise LedgerError(f"no ledger at {ledger_path}{hint or ' (run a manifest first, or pass --ledger)'}")
    ledger = Ledger(ledger_path)
    if batch is not None and ledger.batch(batch) is None:
        ledger.close()
        raise LedgerError(f"batch {batch!r} is not in the ledger {ledger.display}{hint}")
    return ledger


@cli.command()
@click.argument("manifest", required=False, type=click.Path(dir_okay=False))
@ledger_option
@click.option("--json", "as_json", is_flag=True, help="Print an object with counts, credits_spent and more.")
@click.option("--job", "job_key", default=None, help="Show one job's history (a key or its first characters).")
@click.option("--rows", "by_row", is_flag=True, help="Jobs per state for each manifest row.")
def status(manifest: str | None, ledger_path: str, as_json: bool, job_key: str | None, by_row: bool) -> None:
    """Show jobs per state, credits spent and held, and videos downloaded."""
    from . import api
    from .display import state_counts
    from .export import iso, job_record
    batch = _batch_for(manifest)
    with _open_existing(ledger_path, batch) as ledger:
        if job_key:
            jobs = ledger.find(job_key, batch)
            if not jobs:
                raise BatcherError(f"no job whose key starts with {job_key!r}")
            if len(jobs) > 1:
                raise BatcherError(f"{len(jobs)} jobs start with {job_key!r}; give more characters")
            job = jobs[0]
            events = ledger.events(job.id)  # type: ignore[arg-type]
            if as_json:
                click.echo(json.dumps({**job_record(job), "events": [
                    {"at": iso(e.at), "kind": e.kind, "from": e.from_state, "to": e.to_state, "detail": e.detail}
                    for e in events]}, indent=2))
                return
            click.echo(f"job {job.key} ({job.origin}, take {job.take}): {job.state}")
            if job.error:
                click.echo(f"  error: {job.error}")
            click.echo(f"  created {iso(job.created_at)}")
            for e in events:
                move = f"{e.from_state} -> {e.to_state}" if e.to_state else ""
                click.echo(f"  {iso(e.at)}  {e.kind:<18} {move:<24} {e.detail or ''}".rstrip())
            return
        if by_row:
            if batch is None:
                raise click.UsageError("--rows needs the MANIFEST")
            rows = ledger.counts_by_row(batch)
            if as_json:
                click.echo(json.dumps([{"origin": o, "label": label, "prompt": prompt, "counts": c}
                                       for o, label, prompt, c in rows], indent=2))
                return
            for origin, label, prompt, counts in rows:
                start = " ".join(prompt.split())
                start = start if len(start) <= 40 else start[:39] + "…"
                click.echo(f"{origin} {label} \"{start}\": {state_counts(counts)}")
            return
        data = api.status(ledger, batch)
        if as_json:
            click.echo(json.dumps(data, indent=2))
            return
        for name, info in ([(batch, data)] if batch else data["batches"].items()):
            sim = " (SIMULATED: clips from --simulate, not real renders)" if info["simulated"] else ""
            click.echo(f"batch {name!r}{sim}: {info['jobs']} job(s): {state_counts(info['counts']) or 'none'}")
            budget = (f" of a budget of {format_credits(info['budget'])} (the latest run's --budget)"
                      if info["budget"] is not None else " (no budget set)")
            click.echo(f"  credits: {format_credits(info['credits_spent'])} spent, "
                       f"{format_credits(info['credits_held'])} held for unknown outcomes, "
                       f"{format_credits(info['credits_refunded'])} refunded; "
                       f"{format_credits(info['credits_committed'])} committed{budget}")
            click.echo(f"  videos: {info['videos']} downloaded, {info['bytes']:,} bytes")
            if info["untrusted_costs"]:
                click.echo(f"  warning: {info['untrusted_costs']} job(s) were answered with a creditCost that "
                           f"cannot be believed (negative or not a number); their estimates are counted "
                           f"instead. `batcher status --job KEY` shows the answer")
            if info["held_unknown"]:
                lost = info["lost_after_payment"]
                lost_text = (f" ({lost} of them paid, then no longer known to the API: their cost is counted as "
                             f"spent)" if lost else "")
                click.echo(f"  {info['held_unknown']} job(s) held as unknown{lost_text}; `batcher status --job KEY` "
                           f"shows why; `batcher retry --unknown MANIFEST` resubmits them (up to "
                           f"{format_credits(info['resubmit_cost'])} credits, maybe paid twice)")


@cli.command()
@click.argument("manifest", required=False, type=click.Path(dir_okay=False))
@ledger_option
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "videofolder"]), default="jsonl",
              show_default=True, help="jsonl or csv records, or a videofolder dataset.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="-", show_default=True,
              help="File to write (- for standard output); jsonl and csv.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for --format videofolder.")
@click.option("--include-failed", is_flag=True, help="videofolder: list jobs without a video in not_completed.jsonl.")
def export(manifest: str | None, ledger_path: str, fmt: str, output: str, out_dir: str | None,
           include_failed: bool) -> None:
    """Export jobs with their provenance: JSONL or CSV records, or a VideoFolder dataset."""
    from .export import export as write_export
    from .export import export_videofolder
    batch = _batch_for(manifest)
    with _open_existing(ledger_path, batch) as ledger:
        if fmt == "videofolder":
            if not out_dir:
                raise click.UsageError("--format videofolder needs --out DIR")
            r = export_videofolder(ledger, batch, Path(out_dir), include_failed)
            click.echo(f"{out_dir}: {r.videos} video(s) ({r.linked} linked, {r.copied} copied, {r.unchanged} "
                       f"already there) and metadata.jsonl; {r.others} job(s) without a video"
                       + (f"; {len(r.unverified)} skipped: file missing or not matching its sha256"
                          if r.unverified else ""), err=True)
            return
        if output == "-":
            n = write_export(ledger, batch, fmt, sys.stdout)
        else:
            with open(output, "w", encoding="utf-8", newline="") as f:
                n = write_export(ledger, batch, fmt, f)
            click.echo(f"wrote {n} record(s) to {output}", err=True)


@cli.command()
@click.argument("manifest", required=False, type=click.Path(dir_okay=False))
@ledger_option
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="report.html", show_default=True,
              help="The HTML file to write.")
def report(manifest: str | None, ledger_path: str, output: str) -> None:
    """Write a self-contained HTML gallery of a batch: clips, prompts, references, costs, reasons."""
    from .report import build_report
    batch = _batch_for(manifest)
    with _open_existing(ledger_path, batch) as ledger:
        if batch is None:
            names = [b.name for b in ledger.batches()]
            if len(names) != 1:
                raise click.UsageError(f"the ledger holds {len(names)} batches; name the MANIFEST")
            batch = names[0]
        n = build_report(ledger, batch, Path(output))
    click.echo(f"wrote {output} ({n} job(s))", err=True)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="Port (0: any free).")
@click.option("--api-key", default="sim-key", show_default=True, help="The key the simulator accepts.")
@click.option("--credits", "credit_balance", default=1_000_000.0, show_default=True, help="Starting credit balance.")
@click.option("--render-seconds", default=0.5, show_default=True, help="Mean render time.")
@click.option("--render-jitter", default=0.2, show_default=True, help="Render time spread, as a fraction.")
@click.option("--fail-rate", default=0.0, help="Share of renders that fail (refunded).")
@click.option("--error-rate", default=0.0, help="Share of requests answered 503.")
@click.option("--drop-rate", default=0.0, help="Share of requests whose connection is dropped unanswered.")
@click.option("--lost-answer-rate", default=0.0, help="Share of submissions charged whose answer is lost.")
@click.option("--malformed-rate", default=0.0, help="Share of requests answered with an HTML page.")
@click.option("--rpm", default=None, type=float, help="Request-rate limit per minute (429 over it).")
@click.option("--url-ttl", default=3600.0, show_default=True, help="Seconds an output URL stays valid.")
@click.option("--seed", default=0, help="Random seed for faults and render times.")
@click.option("--echo-key-in-errors", is_flag=True,
              help="Act as a careless API: repeat the Authorization header in every error text.")
def simulator(host: str, port: int, api_key: str, credit_balance: float, render_seconds: float,
              render_jitter: float, fail_rate: float, error_rate: float, drop_rate: float, lost_answer_rate: float,
              malformed_rate: float, rpm: float | None, url_ttl: float, seed: int, echo_key_in_errors: bool) -> None:
    """Serve the built-in PixelDojo API simulator over HTTP (GET /_sim/record shows what it charged)."""
    from .simulator import SimConfig, Simulator, make_server
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: serving on {host}, not loopback", err=True)
    sim = Simulator(SimConfig(api_key=api_key, credits=credit_balance, render_seconds=render_seconds,
                              render_jitter=render_jitter, fail_rate=fail_rate, error_rate=error_rate,
                              drop_rate=drop_rate, lost_answer_rate=lost_answer_rate, malformed_rate=malformed_rate,
                              rpm=rpm, url_ttl=url_ttl, seed=seed, echo_key_in_errors=echo_key_in_errors))
    server = make_server(sim, host, port)
    click.echo(f"simulator serving on http://{host}:{server.server_address[1]} (key {api_key!r})", err=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    sys.exit(EXIT_OK)


@cli.command()
@click.argument("sections", nargs=-1, type=click.Choice(["efficiency", "ratelimit", "spare", "overhead", "memory",
                                                          "stage", "all"]))
@click.option("--jobs", default=800, show_default=True, help="Jobs in the efficiency run.")
@click.option("--concurrency", default=40, show_default=True, help="Jobs in flight.")
@click.option("--render", default=1.0, show_default=True, help="Mean simulated render seconds.")
@click.option("--jitter", default=0.2, show_default=True, help="Render time spread (fraction of the mean).")
@click.option("--rate-jobs", default=400, show_default=True, help="Jobs in the rate-limited run.")
@click.option("--sim-rpm", default=1200.0, show_default=True, help="The simulator's request limit per minute.")
@click.option("--rpm", "client_rpm", default=1100.0, show_default=True, help="batcher's --rpm in that run.")
@click.option("--overhead-jobs", default=10_000, show_default=True, help="Jobs in the zero-render run.")
@click.option("--stage-jobs", default=100_000, show_default=True, help="Jobs planned and added to a ledger.")
@click.option("--memory-jobs", default=3000, show_default=True, help="Jobs in the memory run (over loopback).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON too.")
def bench(sections: tuple[str, ...], jobs: int, concurrency: int, render: float, jitter: float, rate_jobs: int,
          sim_rpm: float, client_rpm: float, overhead_jobs: int, stage_jobs: int, memory_jobs: int,
          as_json: bool) -> None:
    """Benchmark batcher against the built-in simulator and print a table of figures."""
    from .bench import SECTIONS, run_all
    chosen = SECTIONS if not sections or "all" in sections else list(sections)
    results = run_all(chosen, jobs=jobs, concurrency=concurrency, render=render, jitter=jitter,
                      overhead_jobs=overhead_jobs, stage_jobs=stage_jobs, sim_rpm=sim_rpm, client_rpm=client_rpm,
                      rate_jobs=rate_jobs, memory_jobs=memory_jobs, echo=click.echo)
    if as_json:
        click.echo(json.dumps(results, indent=2))


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _handle_signals() -> None:
    """SIGTERM and SIGHUP (a closed terminal) stop batcher as Ctrl-C does, at any step. A run
    installs its own handling while it works and puts back the default after: so again after."""
    import signal
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _terminate)


def main() -> None:
    """Entry point of the `batcher` console script."""
    _handle_signals()
    cli(prog_name="batcher")


if __name__ == "__main__":  # pragma: no cover
    main()
