"""Rendering a batch: `run`, and `retry` of held, failed or expired jobs."""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import Field, asdict, fields, replace
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin, get_type_hints

import click

from ..errors import ExitCode
from ..manifest import Manifest, load_manifest
from ..money import json_safe
from ..run.options import Flag, RunSettings, flag_of
from . import (
    cli,
    finite,
    handle_signals,
    ledger_for,
    ledger_option,
    max_jobs_option,
    modules_loading,
    parse_rates,
    rate_option,
    store_options,
    store_settings,
)

if TYPE_CHECKING:  # named only: the command line loads no ledger or HTTP client before it runs
    from ..launch import Ready, Target
    from ..ledger import Ledger

# --- running ----------------------------------------------------------------------------------

class Credits(click.ParamType):  # type: ignore[type-arg]  # click 8.2 made ParamType generic; 8.1 is not
    """--budget: exact credits, 0 or more; `nan`, `inf` or a negative budget is a one-line usage
    error (exit 2), never a run without limit."""

    name = "credits"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from ..money import budget
        return budget(value, "--budget")


def _click_option(f: Field[Any], flag: Flag, kind: Any) -> Any:
    """The click option a declared run option makes: its field's name, type and default, the
    flag's names, help and bounds."""
    base = kind if get_origin(kind) is Literal else next(k for k in get_args(kind) or (kind,) if k is not type(None))
    click_type: Any = None
    if base is Decimal:
        click_type = Credits()
    elif get_origin(base) is Literal:
        click_type = click.Choice(get_args(base))
    elif flag.path is not None:
        click_type = click.Path(file_okay=flag.path == "file", dir_okay=flag.path == "folder")
    elif base in (int, float) and (flag.least is not None or flag.most is not None):
        click_type = (click.IntRange(_whole(flag.least), _whole(flag.most)) if base is int else
                      click.FloatRange(flag.least, flag.most, min_open=flag.least_open))
    return click.option(*flag.names, f.name, type=click_type, default=f.default, is_flag=base is bool,
                        show_default=True if flag.show_default else None, help=flag.help, metavar=flag.metavar,
                        envvar=flag.envvar, callback=finite if flag.finite else None)


def _whole(bound: float | None) -> int | None:
    return None if bound is None else int(bound)


def _shared_options() -> dict[str, Any]:
    """The options every command that reads a manifest shares, each by the name of its value."""
    named = {}
    for option in (ledger_option, rate_option, max_jobs_option, *store_options):
        probe = option(lambda: None)
        named[probe.__click_params__[0].name] = option
    return named


def run_options(command: str) -> Callable[[Any], Any]:
    """The options of `run` or `retry`: every field of RunSettings, in its order."""
    kinds, shared = get_type_hints(RunSettings), _shared_options()
    decorators = []
    for f in fields(RunSettings):
        flag = flag_of(f)
        if flag is not None and flag.only in (None, command):
            decorators.append(_click_option(f, flag, kinds[f.name]))
        elif f.name in shared:
            decorators.append(shared[f.name])

    def decorate(function: Any) -> Any:
        for d in reversed(decorators):
            function = d(function)
        return function
    return decorate


def _say(line: str) -> None:
    """Every line of a run but its summary: on stderr, at once, so that it comes before the summary
    on stdout even when both streams go into one pipe (progress and logs write to this stream too)."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _ready(m: Manifest, settings: RunSettings) -> tuple[Ready, RunSettings]:
    """The steps before the run, and the settings it runs with: a simulated run (--simulate, or an
    API that says it is batcher's simulator served) keeps to the simulated ledger unless --ledger
    is given on the command line."""
    from .. import api
    from ..ledger import display_location
    rates = parse_rates(settings.rates)
    # A simulated run keeps to the simulator's store unless the command line names a bucket: the
    # manifest's is for real runs.
    explicit = settings.reference_store or not settings.simulate
    store = store_settings(m, **asdict(settings)) if explicit else None
    to = api.run_target(settings, ledger_for(settings.ledger_path, settings.simulate))
    settings = replace(settings, ledger_path=ledger_for(settings.ledger_path, to.simulated))
    ready = api.start_run(m, settings, rates, store, to, handle_signals=True, on_warning=_say)
    if to.served_simulator:
        _say(f"the API at {to.base_url} is batcher's simulator (`batcher simulator`): a simulated run, kept apart "
             f"in {display_location(settings.ledger_path)} and {ready.options.saving.out_dir}")
    return ready, settings


def _staged(ledger: Ledger, ready: Ready, settings: RunSettings) -> None:
    """Stage the batch's jobs and say what the run found and what it does with it."""
    from .. import api
    from ..views.commands import rerun_line
    staged, requeued = api.stage_ready(ledger, ready, settings.requeue)
    if settings.requeue:
        _say(f"requeued {requeued} job(s) ({', '.join(settings.requeue)})")
    _say(f"batch {ready.manifest.batch!r}: {staged.added} new job(s), {staged.known} already in {ledger.display}")
    if staged.known:
        _say(rerun_line(ledger.counts(ready.manifest.batch, orphans=False), settings.resubmit_unknown))
    if staged.orphans:
        _say(f"{staged.orphans} job(s) of the ledger no row of the manifest produces any more (orphans): never sent, "
             f"left out of status, watch and exports; `batcher status` names their rows, `batcher prune` cancels them")


def _run(manifest: str, settings: RunSettings) -> None:
    with modules_loading():
        import anyio

        from .. import api
        from ..views import ProgressPrinter, setup_logging
    m = load_manifest(manifest)
    ready, settings = _ready(m, settings)
    setup_logging(settings.verbose, settings.log_json, None if settings.simulate else ready.to.api_key)
    if settings.no_preflight:
        _say("warning: --no-preflight: reference URLs are not checked; a bad one is found only after its job was "
             "submitted")
    live = sys.stderr.isatty()
    # Redraw twice a second on a terminal; otherwise a line every 30 s, and no counting in between.
    ready.options.progress_interval = 0.5 if live else 30.0
    printer = ProgressPrinter(sys.stderr, live=live, interval=30.0)
    with api.run_ledger(settings.ledger_path, ready.options) as ledger:
        _staged(ledger, ready, settings)
        report = anyio.run(lambda: api.run_ready(ledger, ready, on_progress=printer,
                                                 on_force_exit=lambda: os._exit(ExitCode.INTERRUPTED)))
        printer.end()
        handle_signals()
        if settings.report_path:
            from ..views import build_report
            build_report(ledger, m.batch, Path(settings.report_path))
    _print_summary(report, ready, manifest, settings)
    sys.exit(report.exit_code)


def _retry_command(manifest: str, ledger_path: str, to: Target) -> Callable[[str], str]:
    """The exact command that retries jobs in a state, for this manifest, ledger and API (the
    in-process simulator, or a served one, whose runs find the simulated ledger themselves)."""
    from ..defaults import SIMULATED_LEDGER
    from ..ledger import display_location
    ledger_given = click.get_current_context().get_parameter_source("ledger_path") in (
        click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT) and not to.simulated

    def command(state: str) -> str:
        words = ["batcher", "retry", f"--{state}", manifest]
        if ledger_given or (to.simulated and ledger_path != SIMULATED_LEDGER):
            words += ["--ledger", display_location(ledger_path)]
        if to.simulator is not None:
            words.append("--simulate")
        elif to.served_simulator:
            words += ["--api-base", to.base_url]
        return " ".join(shlex.quote(w) for w in words)
    return command


def _print_summary(report: Any, ready: Ready, manifest: str, settings: RunSettings) -> None:
    """Progress and logs went to stderr (flushed first: they come before it in one pipe); the
    summary is the command's result: stdout."""
    from ..ledger import display_location
    from ..views import summary, summary_json
    sys.stderr.flush()
    out = ready.options.saving.out_dir
    retry_command = _retry_command(manifest, settings.ledger_path, ready.to)
    if settings.as_json:
        data = summary_json(report, str(out), retry_command)
        data["ledger"], data["simulated"] = display_location(settings.ledger_path), ready.simulated
        if settings.report_path:
            data["report"] = str(Path(settings.report_path).resolve())
        click.echo(json.dumps(json_safe(data), indent=2, allow_nan=False))
        return
    for line in summary(report, str(out), retry_command):
        click.echo(line)
    if settings.report_path:
        click.echo(f"report: {Path(settings.report_path).resolve()}")


@cli.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@run_options("run")
def run(manifest: str, **given: Any) -> None:
    """Render a manifest: submit, poll and download every job, resuming where the last run stopped."""
    _run(manifest, RunSettings(**given))


@cli.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--unknown", is_flag=True, help="Resubmit jobs held because a submission's outcome was unknown.")
@click.option("--failed", is_flag=True, help="Requeue jobs that failed (remote failures or rejected).")
@click.option("--expired", is_flag=True, help="Re-render jobs whose video expired before it was downloaded.")
@run_options("retry")
def retry(manifest: str, unknown: bool, failed: bool, expired: bool, **given: Any) -> None:
    """Requeue held, failed or expired jobs by your decision, then run the manifest."""
    states = tuple(name for name, on in (("unknown", unknown), ("failed", failed), ("expired", expired)) if on)
    if not states:
        raise click.UsageError("say what to retry: --unknown, --failed and/or --expired")
    _run(manifest, RunSettings(**given, requeue=states))
