"""The command line: a thin click layer over the library. The only module that exits the process.

Exit codes: 0 every job completed (or the command succeeded); 1 some jobs failed or need
attention; 2 usage, manifest or configuration error; 3 stopped by the budget or the account's
credits; 130 interrupted.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from . import __version__
from .errors import BatcherError, ManifestError
from .ledger import DEFAULT_LEDGER, read_states
from .manifest import load_manifest
from .plan import check

def fmt_credits(value: float) -> str:
    """1234.5 -> '1,234.5'; whole numbers without decimals."""
    text = f"{value:,.2f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


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


def ledger_option(f: Any) -> Any:
    return click.option("--ledger", "ledger_path", envvar="BATCHER_LEDGER", default=DEFAULT_LEDGER,
                        show_default=True, type=click.Path(dir_okay=False),
                        help="Ledger file (or set BATCHER_LEDGER).")(f)


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


rate_option = click.option("--rate", "rates", multiple=True, metavar="RES=CREDITS",
                           help="Credits per second of video for a resolution, e.g. 1080p=7.2 "
                                "(replaces the built-in estimate).")


@click.group(cls=BatcherGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="batcher")
def cli() -> None:
    """Render batches of reference-to-video clips through PixelDojo's API, safely."""


@cli.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
def validate(manifest: str) -> None:
    """Check a manifest and report every problem as FILE:LINE: message."""
    m = load_manifest(manifest)
    summary = check(m)
    click.echo(f"{manifest}: ok, batch {m.batch!r}, {len(m.rows)} row(s), {summary.jobs} job(s)"
               + (f", {summary.duplicates} duplicate(s) merged" if summary.duplicates else ""))


@cli.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@ledger_option
@rate_option
@click.option("--json", "as_json", is_flag=True, help="Print the plan as a JSON object.")
def plan(manifest: str, ledger_path: str, rates: tuple[str, ...], as_json: bool) -> None:
    """Show the jobs a manifest expands to and what they should cost; sends and writes nothing."""
    m = load_manifest(manifest)
    overrides = parse_rates(rates)
    summary = check(m, overrides)
    states = read_states(ledger_path, m.batch)
    data = summary.to_json()
    if states is not None:
        from .plan import iter_jobs
        held = {"completed": 0, "in_ledger": 0}
        for job in iter_jobs(m, overrides):
            state = states.get(job.key)
            if state is not None:
                held["in_ledger"] += 1
                held["completed"] += state == "completed"
        data["ledger"] = {"path": ledger_path, **held}
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
               f"estimated {fmt_credits(summary.credits)} credits{guess}")
    if summary.duplicates:
        click.echo(f"{summary.duplicates} duplicate job(s) merged: identical requests are rendered once")
    width = max([len(r.origin) for r in summary.rows] + [6])
    click.echo(f"  {'row':<{width}}  {'label':<12} {'jobs':>7} {'credits':>10}")
    shown = summary.rows[:50]
    for r in shown:
        click.echo(f"  {r.origin:<{width}}  {r.label:<12} {r.jobs:>7} {fmt_credits(r.credits):>10}")
    if len(summary.rows) > len(shown):
        click.echo(f"  ... and {len(summary.rows) - len(shown)} more row(s) (--json lists them all)")
    if states is not None:
        led = data["ledger"]
        click.echo(f"ledger {ledger_path}: holds {led['in_ledger']} of these jobs, {led['completed']} completed")


def main() -> None:
    """Entry point of the `batcher` console script."""
    cli(prog_name="batcher")


if __name__ == "__main__":  # pragma: no cover
    main()
