"""Curating the dataset: `reject` leaves clips out of exports (they stay on disk and in the batch),
`reroll` queues a new take of a clip's request, which a run sends under its budget."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from ..errors import UsageError
from ..money import show
from . import cli, ledger_option


def _keys(keys: tuple[str, ...], from_file: str | None) -> list[str]:
    """The keys given, then those of `--from FILE` (one a line; blank lines and `#` comments skipped)."""
    found = list(keys)
    if from_file is not None:
        try:
            lines = sys.stdin.read() if from_file == "-" else Path(from_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise click.UsageError(f"--from {from_file}: {getattr(e, 'strerror', None) or 'not UTF-8 text'}") from None
        found += [line.split("#", 1)[0].strip() for line in lines.splitlines()]
    found = list(dict.fromkeys(k for k in found if k))
    if not found:
        raise click.UsageError("name the clips: KEY... or --from FILE")
    return found


def _jobs(ledger: Any, keys: list[str], batch: str | None) -> list[Any]:
    """The job each key (or its first characters) names; an unknown or ambiguous key stops it all."""
    jobs = []
    for key in keys:
        found = ledger.find(key, batch)
        if not found:
            raise UsageError(f"{key}: no job of {f'batch {batch!r}' if batch else 'the ledger'} has this key")
        if len(found) > 1:
            raise UsageError(f"{key}: {len(found)} jobs start with it; give more characters")
        jobs.append(found[0])
    return jobs


def _model_spec(ledger: Any, api_id: str) -> Any:
    """The rules of a job's model: batcher's table, else the description the ledger cached."""
    from ..client.catalog import spec_of
    from ..models import get_model
    found = get_model(api_id)
    if found is not None:
        return found
    cached = ledger.model_infos([api_id]).get(api_id)
    if cached is None:
        raise UsageError(f"{api_id}: no description of this model in the ledger (`batcher models {api_id}`)")
    return spec_of(cached)


def curation_options(f: Any) -> Any:
    f = click.option("--batch", "batch", default=None, metavar="NAME", help="Look the keys up in this batch only.")(f)
    f = click.option("--from", "from_file", default=None, metavar="FILE",
                     help="Keys one a line (- for standard input), beside or instead of KEY...")(f)
    f = ledger_option(f)
    return click.argument("keys", nargs=-1)(f)


@cli.command()
@curation_options
def reject(keys: tuple[str, ...], from_file: str | None, batch: str | None, ledger_path: str) -> None:
    """Leave clips out of exports (`export --include-rejected` puts them back); they stay on disk."""
    from .results import _open_existing
    wanted = _keys(keys, from_file)
    with _open_existing(ledger_path, batch) as ledger:
        jobs = _jobs(ledger, wanted, batch)
        n = ledger.write(ledger.reject(jobs, "`batcher reject`"))
    click.echo(f"rejected {n} clip(s)" + (f" ({len(jobs) - n} already were)" if n < len(jobs) else "")
               + ": exports leave them out; their files stay")


def _latest_takes(ledger: Any, batches: set[str]) -> dict[tuple[str, str], int]:
    """(batch, key) -> the latest take rerolled from that job: a second reroll is take + 2."""
    latest: dict[tuple[str, str], int] = {}
    for name in batches:
        for job in ledger.iter_batch(name):
            if job.reroll_of is not None:
                where = (name, job.reroll_of)
                latest[where] = max(latest.get(where, 0), job.take)
    return latest


@cli.command()
@curation_options
@click.option("--new-seed", is_flag=True, help="Render the new take with a seed of its own (derived from its take).")
def reroll(keys: tuple[str, ...], from_file: str | None, batch: str | None, ledger_path: str, new_seed: bool) -> None:
    """Queue a new take of each clip's request (take + 1, a job of its own) and show what it costs;
    `batcher run MANIFEST --budget N` sends it."""
    from ..ledger import Reroll
    from ..plan import new_take
    from .results import _open_existing
    wanted = _keys(keys, from_file)
    with _open_existing(ledger_path, batch) as ledger:
        jobs = _jobs(ledger, wanted, batch)
        planned: list[Any] = []
        known: set[tuple[str, str]] = set()
        latest = _latest_takes(ledger, {job.batch for job in jobs})
        for job in jobs:
            model = _model_spec(ledger, job.model or ledger.batch(job.batch).model)

            def taken(key: str, batch_name: str = job.batch) -> bool:
                return (batch_name, key) in known or bool(ledger.find(key, batch_name))
            key, take, params = new_take(model, job.parameters(), latest.get((job.batch, job.key), job.take),
                                         new_seed, taken)
            latest[job.batch, job.key] = take
            planned.append(Reroll(job, key, take, params))
            known.add((job.batch, key))
        added = ledger.write(ledger.reroll(planned))
    for job, r in zip(added, planned, strict=True):
        click.echo(f"{job.key}  take {job.take} of {r.source.key} ({job.origin})  estimate {show(job.estimate)}")
    total = sum(job.estimate for job in added)
    click.echo(f"{len(added)} new take(s) queued, pending: {show(total)} credits estimated; nothing is sent until "
               f"`batcher run MANIFEST --budget N` (the budget must cover them)")
