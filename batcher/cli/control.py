"""Operating a fleet: `pause`, `resume` and `cancel` set a batch's control word in the ledger, and
every runner of the batch obeys within two seconds (`batcher/run/control.py`)."""

from __future__ import annotations

from typing import Any

import click

from ..errors import UsageError
from . import cli, named_batch, reading_ledger

RUN_WORD = {"pause": "paused", "resume": "running", "cancel": "cancelled"}


def _batch_name(manifest: str | None, batch: str | None) -> str:
    """The batch a command means: the manifest's, or `--batch NAME` (the same one if both)."""
    if manifest is None and batch is None:
        raise click.UsageError("name the batch: MANIFEST, or --batch NAME")
    return str(named_batch(manifest, batch))


def _line(command: str, change: Any) -> str:
    """One line: what the command did, and what every runner of the batch will do."""
    from ..errors import ExitCode
    from ..run.control import CONTROL_INTERVAL
    name, within = f"batch {change.batch!r}", f"within {CONTROL_INTERVAL * 4:g} s"
    n = change.in_flight
    if not change.changed:
        return f"{name} is already {change.after}: nothing changed"
    if command == "pause":
        paid = f"the {n} paid job(s) in flight are still polled and downloaded" if n else "no job is in flight"
        return f"{name} paused: every runner stops sending new jobs {within} and waits for `batcher resume`; {paid}"
    if command == "cancel":
        paid = f"{n} job(s) in flight now" if n else "none in flight now"
        return (f"{name} cancelled: {change.moved} pending job(s) cancelled; every runner stops sending {within}, "
                f"polls and downloads what was paid for ({paid}), then exits {int(ExitCode.CANCELLED)}; "
                f"`batcher resume` puts the cancelled jobs back")
    if change.moved:
        return (f"{name} resumed: {change.moved} cancelled job(s) are pending again; runners that exited after the "
                f"cancel do not come back by themselves: start `batcher run` again")
    return f"{name} resumed: every runner sends jobs again {within}"


def _control(command: str, manifest: str | None, batch: str | None, ledger_path: str) -> None:
    from ..states import Control
    from .results import _open_existing
    name = _batch_name(manifest, batch)
    word = Control(RUN_WORD[command])
    with _open_existing(ledger_path, name) as ledger:
        change = ledger.write(ledger.set_control(name, word, f"`batcher {command}`"))
    if not change.allowed:
        raise UsageError(f"batch {name!r} is {change.before}: `batcher resume` puts its cancelled jobs back to "
                         f"pending first (then `batcher pause`, if you want it paused)")
    click.echo(_line(command, change))


def control_command(command: str, doc: str) -> None:
    """Register `batcher COMMAND [MANIFEST] [--batch NAME] [--ledger PATH|URL]`."""
    @click.argument("manifest", required=False, type=click.Path(dir_okay=False))
    @click.option("--batch", "batch", default=None, metavar="NAME",
                  help="The batch by its name, instead of a MANIFEST.")
    @reading_ledger
    def command_fn(manifest: str | None, batch: str | None, ledger_path: str) -> None:
        _control(command, manifest, batch, ledger_path)
    command_fn.__doc__ = doc
    cli.command(name=command)(command_fn)


control_command("pause", "Pause a batch on every runner: no new submissions; jobs in flight are still polled and "
                         "downloaded; runners wait for `batcher resume`.")
control_command("resume", "Resume a paused or cancelled batch on every runner (cancelled jobs become pending "
                          "again).")
control_command("cancel", "Cancel a batch on every runner: its pending jobs are cancelled, nothing more is "
                          "submitted, paid jobs are still polled and downloaded, then runners exit 4.")
