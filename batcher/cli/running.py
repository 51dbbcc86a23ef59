"""Rendering a batch: `run`, and `retry` of held, failed or expired jobs."""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import click

from ..manifest import load_manifest
from ..money import json_safe
from ..plan import MAX_JOBS, check
from . import (
    ExitCode,
    checked_rates,
    cli,
    finite,
    handle_signals,
    ledger_option,
    max_jobs_option,
    rate_option,
    store_options,
    store_settings,
)

# --- running ----------------------------------------------------------------------------------

class Credits(click.ParamType):
    """--budget: exact credits, 0 or more; `nan`, `inf` or a negative budget is a one-line usage
    error (exit 2), never a run without limit."""

    name = "credits"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from ..money import budget
        return budget(value, "--budget")


# How long a run waits for others (the API, its output hosts, other runners, the ledger).
waiting_options = [
    click.option("--max-retry-after", type=click.FloatRange(0), default=300.0, show_default=True,
                 help="Longest pause a 429's Retry-After may impose, in seconds (a longer one is capped)."),
    click.option("--request-deadline", type=click.FloatRange(0, min_open=True), default=90.0, show_default=True,
                 help="Seconds a whole API answer (status, submission) may take, however it trickles in; a "
                      "submission past it is held as unknown, a poll is retried. Also a download's least."),
    click.option("--min-download-rate", type=click.FloatRange(0, min_open=True), default=50.0,
                 show_default=True, help="KB/s: past --request-deadline, a download must keep up this rate on "
                                         "the bytes that have arrived; a slower one is cut and retried."),
    click.option("--lease-seconds", type=click.FloatRange(1), default=60.0, show_default=True,
                 help="How long a claimed job stays this runner's without a renewal (several runners)."),
    click.option("--ledger-patience", type=click.FloatRange(0, 86_400), default=300.0, show_default=True,
                 metavar="SECONDS", callback=finite,
                 help="How long a failing ledger (locked, unreachable) is waited for before what the API did "
                      "is kept in the answer journal beside it and the run stops."),
]


def run_options(f: Any) -> Any:
    """The options shared by `run` and `retry`."""
    decorators = [
        ledger_option,
        click.option("--out", "out_dir", type=click.Path(file_okay=False),
                     help="Folder for the videos (default: ./outputs/<batch>/)."),
        click.option("--concurrency", "-c", default=4, show_default=True, type=click.IntRange(1, 1000),
                     help="Most jobs in flight at the API at once."),
        click.option("--budget", type=Credits(), default=None,
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
        click.option("--expected-render", type=click.FloatRange(0.01), default=None,
                     help="Render time to assume before any has been observed (first polls); default: each "
                          "model's typical render time, or what earlier batches measured."),
        click.option("--max-download-mb", type=click.IntRange(1), default=2048, show_default=True,
                     help="A video larger than this is not downloaded: its job stays rendered, and a rerun "
                          "with a higher cap downloads it."),
        rate_option,
        click.option("--report", "report_path", type=click.Path(dir_okay=False), default=None,
                     help="Write the HTML gallery here at the end, and print its path."),
        click.option("--rpm", type=click.FloatRange(1), default=None,
                     help="Most API requests per minute, all calls together (adapts to 429s)."),
        max_jobs_option,
        *store_options,
        *waiting_options,
        click.option("--webhook-listen", metavar="HOST:PORT", default=None,
                     help="Listen here for the API's webhooks: each job's end pokes its runner, which then asks "
                          "the API at once (polls go on, sparser, as a safety net). Port 0 picks a free one."),
        click.option("--webhook-url", metavar="URL", default=None,
                     help="The public base URL that reaches --webhook-listen (a reverse proxy or tunnel); each "
                          "job's URL adds its key and a secret token. Default: the listen address itself."),
        click.option("--no-preflight", "no_preflight", is_flag=True,
                     help="Skip checking every reference URL before spending (not advised)."),
        click.option("--json", "as_json", is_flag=True,
                     help="Print the end summary as a JSON object on stdout (progress stays on stderr)."),
        click.option("-v", "--verbose", is_flag=True, help="Log each request and state change to stderr."),
        click.option("--log-json", type=click.Path(dir_okay=False), default=None,
                     help="Write the same log as JSON lines to this file."),
    ]
    for d in reversed(decorators):
        f = d(f)
    return f


def _webhooks(listen: str | None, public_url: str | None, api_base: str | None) -> Any:
    """--webhook-listen and --webhook-url, checked (a usage error, exit 2, names what is wrong).
    `api_base`: where requests go (None: the simulator)."""
    from ..errors import UsageError
    if listen is None:
        if public_url is not None:
            raise UsageError("--webhook-url needs --webhook-listen: where batcher hears the pokes")
        return None
    from ..run.webhooks import parse_listen, webhooks_for
    try:
        host, port = parse_listen(listen)
    except UsageError as e:
        raise UsageError(f"--webhook-listen: {e}") from None
    return webhooks_for(host, port, public_url, api_base)


def _ledger_of(ledger_path: str, simulate: bool) -> str:
    """Simulated clips must never pass for real ones: unless --ledger is given on the command line
    (BATCHER_LEDGER names the real ledger: it does not count), a simulated run keeps its own
    ledger and folder, so a later real run of the batch renders everything."""
    from ..api import SIMULATED_LEDGER
    source = click.get_current_context().get_parameter_source("ledger_path")
    return SIMULATED_LEDGER if simulate and source != click.core.ParameterSource.COMMANDLINE else ledger_path


def _run(manifest: str, *, ledger_path: str, out_dir: str | None, concurrency: int, budget: Decimal | None,
         api_base: str | None, simulate: bool, sim_render_seconds: float, sim_fail_rate: float,
         max_attempts: int, job_timeout: float | None, expected_render: float | None, max_download_mb: int,
         rates: tuple[str, ...], verbose: bool, log_json: str | None, resubmit_unknown: bool = False,
         requeue: tuple[str, ...] = (), report_path: str | None = None, rpm: float | None = None,
         lease_seconds: float = 60.0, as_json: bool = False, max_retry_after: float = 300.0,
         max_jobs: int = MAX_JOBS, no_preflight: bool = False, webhook_listen: str | None = None,
         webhook_url: str | None = None, request_deadline: float = 90.0, min_download_rate: float = 50.0,
         ledger_patience: float = 300.0, **store_options: Any) -> None:
    import anyio

    from .. import api
    from ..ledger import Ledger
    from ..run import RunOptions
    from ..simulator import SimConfig
    from ..views import ProgressPrinter, setup_logging

    m = load_manifest(manifest)
    ledger_path = _ledger_of(ledger_path, simulate)
    to = api.target(simulate=SimConfig(render_seconds=sim_render_seconds, fail_rate=sim_fail_rate)
                    if simulate else False, api_base=api_base,
                    simulator_state=api.simulator_state_for(ledger_path) if simulate else None)
    hooks = _webhooks(webhook_listen, webhook_url, None if simulate else to.base_url)  # before any request
    m, overrides, checked = _checked(m, ledger_path, to, rates, max_jobs, budget)
    expected_render = api.expected_render_for(to, expected_render)
    # Before any ledger or request. A simulated run keeps to the simulator's store unless the
    # command line names a bucket: the manifest's is for real runs.
    explicit = store_options.get("reference_store") or not simulate
    store = api.reference_store(m, to, store_settings(m, **store_options) if explicit else None)
    setup_logging(verbose, log_json, None if simulate else to.api_key)
    out = Path(out_dir) if out_dir else api.default_out_dir(m.batch, simulate)
    options = RunOptions.of(concurrency=concurrency, budget=budget, out_dir=out, max_attempts=max_attempts,
                         job_timeout=job_timeout, resubmit_unknown=resubmit_unknown,
                         expected_render=expected_render, max_download_bytes=max_download_mb * 1024 * 1024,
                         handle_signals=True, rpm=rpm, lease_seconds=lease_seconds, max_retry_after=max_retry_after,
                         preflight=not no_preflight, on_warning=lambda line: click.echo(line, err=True),
                         reference_store=store, webhooks=hooks, request_deadline=request_deadline,
                         min_download_rate=min_download_rate, ledger_patience=ledger_patience)
    if no_preflight:
        click.echo("warning: --no-preflight: reference URLs are not checked; a bad one is found only after "
                   "its job was submitted", err=True)
    live = sys.stderr.isatty()
    # Redraw twice a second on a terminal; otherwise a line every 30 s, and no counting in between.
    options.progress_interval = 0.5 if live else 30.0
    printer = ProgressPrinter(sys.stderr, live=live, interval=30.0)
    # An SQLite write waits for another's lock no longer than the run's patience in all.
    with Ledger(ledger_path, busy_timeout=min(60.0, max(0.1, ledger_patience))) as ledger:
        _stage(ledger, m, overrides, simulate, max_jobs, requeue, checked)
        report = anyio.run(lambda: api.run_async(
            m, ledger=ledger, options=options, to=to, rate_overrides=overrides, on_progress=printer,
            on_force_exit=lambda: os._exit(ExitCode.INTERRUPTED), stage_jobs=False))
        printer.end()
        handle_signals()
        if report_path:
            from ..views import build_report
            build_report(ledger, m.batch, Path(report_path))
    _print_summary(report, out, manifest, ledger_path, simulate, report_path, as_json)
    sys.exit(report.exit_code)


def _checked(m: Any, ledger_path: str, to: Any, rates: tuple[str, ...], max_jobs: int, budget: Decimal | None
             ) -> tuple[Any, dict[str, float], Any]:
    """The manifest with its models described (those batcher has no table for: from the ledger's
    cache or the API), checked, with its --rate values and its plan (its rows compiled, for
    staging); a model without a price is refused under a budget."""
    import anyio

    from .. import api
    from ..ledger import Ledger
    if api.wanted_descriptions(m):
        with Ledger(ledger_path) as ledger:
            m = anyio.run(lambda: api.describe_models(m, ledger, to))
    overrides = checked_rates(m, rates)
    checked = check(m, overrides, max_jobs=max_jobs, keep=True)
    if budget is not None:
        api.refuse_unpriced(m, overrides)
    return m, overrides, checked


def _stage(ledger: Any, m: Any, overrides: dict[str, float], simulate: bool, max_jobs: int,
           requeue: tuple[str, ...], checked: Any) -> None:
    """Add the manifest's jobs, and requeue what `retry` asks for."""
    from .. import api
    from ..states import JobState
    added, known = api.stage(ledger, m, overrides, checked=checked, simulated=simulate, max_jobs=max_jobs)
    if requeue:
        n = ledger.write(ledger.requeue(m.batch, [JobState(s) for s in requeue], "requeued by `batcher retry`"))
        click.echo(f"requeued {n} job(s) ({', '.join(requeue)})", err=True)
    click.echo(f"batch {m.batch!r}: {added} new job(s), {known} already in {ledger.display}", err=True)


def _retry_command(manifest: str, ledger_path: str, simulate: bool) -> Callable[[str], str]:
    """The exact command that retries jobs in a state, for this manifest, ledger and mode."""
    from ..api import SIMULATED_LEDGER
    from ..ledger import display_location
    ledger_given = click.get_current_context().get_parameter_source("ledger_path") in (
        click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT) and not simulate

    def command(state: str) -> str:
        words = ["batcher", "retry", f"--{state}", manifest]
        if ledger_given or (simulate and ledger_path != SIMULATED_LEDGER):
            words += ["--ledger", display_location(ledger_path)]
        if simulate:
            words.append("--simulate")
        return " ".join(shlex.quote(w) for w in words)
    return command


def _print_summary(report: Any, out: Path, manifest: str, ledger_path: str, simulate: bool,
                   report_path: str | None, as_json: bool) -> None:
    """Progress and logs went to stderr; the summary is the command's result: stdout."""
    from ..ledger import display_location
    from ..views import summary, summary_json
    retry_command = _retry_command(manifest, ledger_path, simulate)
    if as_json:
        data = summary_json(report, str(out), retry_command)
        data["ledger"], data["simulated"] = display_location(ledger_path), simulate
        if report_path:
            data["report"] = str(Path(report_path).resolve())
        click.echo(json.dumps(json_safe(data), indent=2, allow_nan=False))
        return
    for line in summary(report, str(out), retry_command):
        click.echo(line)
    if report_path:
        click.echo(f"report: {Path(report_path).resolve()}")


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
