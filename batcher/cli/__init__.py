"""The command line: a thin click layer over the library; the only package that imports click or
exits the process.

Exit codes: 0 every job completed (or the command succeeded); 1 some jobs failed or need
attention; 2 usage, manifest or configuration error; 3 stopped by the budget or the account's
credits; 4 the batch was cancelled (`batcher cancel`); 130 interrupted.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from typing import Any

import click

from .. import __version__

# Light imports only: `--version`, `--help`, `validate` and `plan` without a ledger never load
# SQLAlchemy (commands import what they need when they run).
from ..defaults import DEFAULT_LEDGER, SIMULATED_LEDGER
from ..errors import BatcherError, ExitCode, ManifestError, PreflightFailed, UsageError
from ..plan import MAX_JOBS


class BatcherGroup(click.Group):
    """Maps library errors to one-line messages and exit codes, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ManifestError as e:
            for d in e.diagnostics:
                click.echo(str(d), err=True)
            ctx.exit(ExitCode.USAGE)
        except PreflightFailed as e:
            for line in e.lines:
                click.echo(line, err=True)
            click.echo(f"batcher: {len(e.lines)} reference(s) refused before anything was spent; nothing was "
                       "submitted", err=True)
            ctx.exit(ExitCode.USAGE)
        except BatcherError as e:
            click.echo(f"batcher: {e}", err=True)
            ctx.exit(ExitCode.USAGE)
        except KeyboardInterrupt:
            # Ctrl-C or SIGTERM outside a run (while a manifest is expanded or added to the
            # ledger): every ledger write is one transaction, so nothing half-done is left.
            click.echo("batcher: interrupted; nothing was submitted, and the ledger is as it was before this "
                       "step. Run the same command again to go on", err=True)
            ctx.exit(ExitCode.INTERRUPTED)


def finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """A float option's value, refused when NaN or infinite (a FloatRange lets them through)."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number")
    return value


def ledger_option(f: Any) -> Any:
    return click.option("--ledger", "ledger_path", envvar="BATCHER_LEDGER", default=DEFAULT_LEDGER,
                        show_default=True, metavar="PATH|URL",
                        help="SQLite ledger file, or postgresql+psycopg://USER:PASS@HOST/DB for a ledger "
                             "shared by several runners (or set BATCHER_LEDGER).")(f)


def ledger_for(ledger_path: str, simulate: bool) -> str:
    """The ledger a command uses: with --simulate, the simulated one (batcher-sim.db), unless
    --ledger is given on the command line (BATCHER_LEDGER names the real ledger: it does not count)."""
    source = click.get_current_context().get_parameter_source("ledger_path")
    return SIMULATED_LEDGER if simulate and source != click.core.ParameterSource.COMMANDLINE else ledger_path


def reading_ledger(f: Any) -> Any:
    """--ledger, and --simulate to read the simulated ledger (batcher-sim.db) instead."""
    @functools.wraps(f)
    def with_ledger(*args: Any, simulate: bool, ledger_path: str, **kwargs: Any) -> Any:
        return f(*args, ledger_path=ledger_for(ledger_path, simulate), **kwargs)
    with_ledger = click.option("--simulate", is_flag=True,
                               help=f"Read the simulated ledger ({SIMULATED_LEDGER}), where --simulate runs keep "
                                    f"their batches (unless --ledger is given).")(with_ledger)
    return ledger_option(with_ledger)


batch_option = click.option("--batch", "batch_name", default=None, metavar="NAME",
                            help="The batch by its name, instead of a MANIFEST (`batcher batches` lists them).")


def named_batch(manifest: str | None, batch_name: str | None) -> str | None:
    """The batch named by the MANIFEST or --batch NAME (both: they must agree); None if neither."""
    if manifest is None:
        return batch_name
    from ..manifest import load_manifest
    batch = load_manifest(manifest).batch
    if batch_name is not None and batch_name != batch:
        raise UsageError(f"{manifest} is batch {batch!r}, not {batch_name!r}: give MANIFEST or --batch, not both")
    return batch


def only_batch(ledger: Any) -> str:
    """The one batch of a ledger, for a command given neither MANIFEST nor --batch; a ledger holding
    several is refused with their names."""
    from ..errors import LedgerError
    names = [b.name for b in ledger.batches()]
    if len(names) == 1:
        return str(names[0])
    if not names:
        raise LedgerError(f"the ledger {ledger.display} holds no batch yet")
    listed = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
    raise UsageError(f"the ledger holds {len(names)} batches ({listed}); name one: MANIFEST or --batch NAME")


def parse_rates(values: tuple[str, ...]) -> dict[str, float]:
    rates = {}
    for item in values:
        name, _, value = item.partition("=")
        try:
            rates[name.strip()] = float(value)
        except ValueError:
            raise click.BadParameter(f"{item!r}: write [MODEL:]RESOLUTION=CREDITS_PER_SECOND, e.g. 1080p=7.2",
                                     param_hint="--rate") from None
    return rates


def checked_rates(manifest: Any, values: tuple[str, ...]) -> dict[str, float]:
    """--rate values for this manifest's models; a name no model has is a usage error."""
    from ..models import check_rates
    rates = parse_rates(values)
    problem = check_rates(list(manifest.models.values()) or [manifest.model], rates)
    if problem:
        raise UsageError(problem)
    return rates


rate_option = click.option("--rate", "rates", multiple=True, metavar="[MODEL:]RES=CREDITS",
                           help="Credits per second of video for a resolution (1080p=7.2), a model "
                                "(wan-2.5-t2v=3) or both (wan-2.5-t2v:1080p=6); replaces the estimate.")


@click.group(cls=BatcherGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="batcher")
def cli() -> None:
    """Render batches of reference-to-video clips through PixelDojo's API, safely.

    \b
    Examples:
      batcher run manifests/demo.yaml --simulate     the demo on the built-in simulator
                                                     (no key; its ledger is ./batcher-sim.db)
      batcher status --simulate                      where that simulated batch stands
      batcher plan manifests/demo.yaml               what a real run will cost, before it spends
      batcher run manifests/demo.yaml --budget 300   render for real (PIXELDOJO_API_KEY set);
                                                     run the same command again to resume
      batcher export manifests/demo.yaml --format videofolder -o dataset/
                                                     the clips as a dataset folder
      batcher report manifests/demo.yaml             an HTML gallery of every clip"""


max_jobs_option = click.option("--max-jobs", type=click.IntRange(1), default=MAX_JOBS,
                               help=f"Refuse a manifest that expands to more jobs than this, counted before "
                                    f"identical requests merge (default {MAX_JOBS:,}).")


store_options = [
    click.option("--reference-store", metavar="s3://BUCKET/PREFIX", default=None,
                 help="Where local reference images are uploaded (overrides the manifest's reference_store:)."),
    click.option("--reference-endpoint", metavar="URL", default=None,
                 help="S3-compatible endpoint (R2, B2, MinIO, GCS); default AWS_ENDPOINT_URL, else AWS S3."),
    click.option("--reference-public-url", metavar="URL", default=None,
                 help="Base URL of a public bucket: references are sent unsigned as URL/NAME."),
    click.option("--reference-url-lifetime", metavar="DURATION", default=None,
                 help="How long a presigned reference URL lives, made when its job is sent (default 6h)."),
]


def store_settings(manifest: Any, reference_store: str | None = None, reference_endpoint: str | None = None,
                   reference_public_url: str | None = None, reference_url_lifetime: str | None = None,
                   **_: Any) -> Any:
    """The command line's reference store settings, each falling back to the manifest's; None
    when neither names one."""
    from ..references import StoreSettings
    given = manifest.reference_store
    url = reference_store or (given.url if given else None)
    if url is None:
        if reference_endpoint or reference_public_url or reference_url_lifetime:
            raise UsageError("--reference-endpoint, --reference-public-url and --reference-url-lifetime need "
                             "--reference-store s3://BUCKET/PREFIX (or reference_store: in the manifest)")
        return None
    return StoreSettings.of(url, reference_endpoint or (given.endpoint if given else None),
                            reference_public_url or (given.public_url if given else None),
                            reference_url_lifetime or (given.url_lifetime if given else None))


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def handle_signals() -> None:
    """SIGTERM and SIGHUP (a closed terminal) stop batcher as Ctrl-C does, at any step. A run
    installs its own handling while it works and puts back the default after: so again after."""
    import signal
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _terminate)


# Whether the process is the command's own (`main`), not one that invokes commands in turn (tests).
_own_process: list[bool] = []


@contextlib.contextmanager
def modules_loading() -> Iterator[None]:
    """Around a command's imports, in a process of its own: what the imports make lives as long as
    the process, so the collector neither walks it while they run nor after (gc.freeze). The full
    collections while a large manifest is read, and those of the interpreter's exit, then walk only
    what the command made (a run staging 104,000 jobs: some 0.4 s less). A process that invokes
    commands in turn (tests) keeps its collections as they were: what one command left would stay."""
    if not _own_process:
        yield
        return
    import gc
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if collecting:
            gc.enable()


def main() -> None:
    """Entry point of the `batcher` console script."""
    _own_process.append(True)
    handle_signals()
    cli(prog_name="batcher")


if __name__ == "__main__":  # pragma: no cover
    main()


# The commands, registered on `cli` as their modules load.
from . import batches, catalog, control, curation, plans, results, running, tools, watch  # noqa: E402,F401 - import for the commands they define
