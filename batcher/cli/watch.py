"""`batcher watch`: a live screen of a batch and the runners working on it, read from the ledger
alone (no API call, no key). Redrawn in place on a terminal, plain lines (or JSON) otherwise;
Ctrl-C is how a watch ends, so it exits 0."""

from __future__ import annotations

import json
import shutil
import sys
import time
from typing import Any

import click

from ..errors import LedgerError
from ..money import json_safe
from . import batch_option, cli, named_batch, only_batch, reading_ledger

# The terminal's alternate screen with the cursor hidden (as `top` and `less` use), and back.
ENTER, LEAVE = "\x1b[?1049h\x1b[?25l", "\x1b[?25h\x1b[?1049l"
HOME, CLEAR_TO_END_OF_LINE, CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"
PLAIN_WIDTH = 120  # off a terminal, unless COLUMNS says otherwise


@cli.command()
@click.argument("manifest", required=False, type=click.Path(dir_okay=False))
@batch_option
@reading_ledger
@click.option("--interval", type=click.FloatRange(min=0.2), default=2.0, show_default=True,
              help="Seconds between refreshes.")
@click.option("--once", is_flag=True, help="Print one screen (or one JSON object) and exit.")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON object per refresh, one a line (with --once: one object).")
def watch(manifest: str | None, batch_name: str | None, ledger_path: str, interval: float, once: bool,
          as_json: bool) -> None:
    """Watch a batch live: jobs per state, credits of the budget, rate, ETA, control state and
    every runner (host, process, jobs it holds, heartbeat; stale ones marked)."""
    from .results import _open_existing
    name = named_batch(manifest, batch_name)
    with _open_existing(ledger_path, name) as ledger:
        name = name or only_batch(ledger)
        try:
            if once or as_json or not sys.stdout.isatty():
                _plain(ledger, name, interval, once, as_json)
            else:
                _live(ledger, name, interval)
        except KeyboardInterrupt:
            pass  # Ctrl-C (or SIGTERM, SIGHUP) ends a watch: nothing was interrupted, exit 0


def _read(ledger: Any, name: str) -> Any:
    fleet = ledger.fleet(name)
    if fleet is None:
        raise LedgerError(f"batch {name!r} is no longer in the ledger {ledger.display}")
    return fleet


def _plain(ledger: Any, name: str, interval: float, once: bool, as_json: bool) -> None:
    """A screen (or a JSON object) per refresh, as plain lines: for logs, pipes and scripts."""
    from ..views import screen, snapshot_json
    while True:
        fleet = _read(ledger, name)
        if as_json:
            click.echo(json.dumps(json_safe(snapshot_json(fleet)), indent=2 if once else None, allow_nan=False))
        else:
            for line in screen(fleet, shutil.get_terminal_size((PLAIN_WIDTH, 24)).columns):
                click.echo(line)
        if once:
            return
        if not as_json:
            click.echo("")
        sys.stdout.flush()
        time.sleep(interval)


def _live(ledger: Any, name: str, interval: float) -> None:
    """The screen redrawn in place on the terminal's alternate screen, fitted to its size at every
    refresh (resizing is fine); the last screen stays on the normal screen at the end. A ledger
    that cannot be read for a moment (a database restarting) is said on the screen, and tried again."""
    from ..views import screen
    out = sys.stdout
    lines: list[str] = []
    out.write(ENTER)
    try:
        while True:
            size = shutil.get_terminal_size((80, 24))
            try:
                lines = screen(_read(ledger, name), size.columns, size.lines)
            except LedgerError as e:
                note = f"{e}; trying again every {interval:g}s"[:max(10, size.columns - 1)]
                lines = [*lines[:max(0, size.lines - 2)], note]
            out.write(HOME + "\n".join(line + CLEAR_TO_END_OF_LINE for line in lines) + CLEAR_BELOW)
            out.flush()
            time.sleep(interval)
    finally:
        try:
            out.write(LEAVE + "".join(line + "\n" for line in lines))
            out.flush()
        except OSError:  # the terminal is gone (SIGHUP)
            pass
