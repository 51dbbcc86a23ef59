"""Tools beside the batches: the API simulator and the benchmark."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ..errors import ExitCode
from . import cli, finite


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
@click.option("--webhook-loss", default=0.0, type=click.FloatRange(0, 1), metavar="P", callback=finite,
              help="Share of jobs whose webhook is never sent.")
@click.option("--webhook-duplicate", default=0.0, type=click.FloatRange(0, 1), metavar="P", callback=finite,
              help="Share of jobs whose webhook is sent twice.")
@click.option("--webhook-delay", default=0.0, type=click.FloatRange(min=0), metavar="SECONDS", callback=finite,
              help="Mean seconds from a render's end to its webhook (+/-20%).")
@click.option("--no-webhooks", is_flag=True,
              help="Refuse a submission's webhook_url as an unknown parameter (422), as an API without webhooks.")
@click.option("--clip-lie", default="none", show_default=True,
              type=click.Choice(["none", "short", "size", "truncated"]),
              help="Serve clips unlike their request: half as long, another frame size, or cut off.")
def simulator(host: str, port: int, api_key: str, credit_balance: float, render_seconds: float,
              render_jitter: float, fail_rate: float, error_rate: float, drop_rate: float, lost_answer_rate: float,
              malformed_rate: float, rpm: float | None, url_ttl: float, seed: int, echo_key_in_errors: bool,
              webhook_loss: float, webhook_duplicate: float, webhook_delay: float, no_webhooks: bool,
              clip_lie: str) -> None:
    """Serve the built-in PixelDojo API simulator over HTTP (GET /_sim/record shows what it charged).

    A submission's webhook_url gets the job's webhook when its render ends (a JSON POST; replayed on
    POST /api/v1/jobs/JOBID/replay-webhook, a guessed path)."""
    from ..simulator import SimConfig, Simulator, make_server
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(f"warning: serving on {host}, not loopback", err=True)
    sim = Simulator(SimConfig(api_key=api_key, credits=credit_balance, render_seconds=render_seconds,
                              render_jitter=render_jitter, fail_rate=fail_rate, error_rate=error_rate,
                              drop_rate=drop_rate, lost_answer_rate=lost_answer_rate, malformed_rate=malformed_rate,
                              rpm=rpm, url_ttl=url_ttl, seed=seed, echo_key_in_errors=echo_key_in_errors,
                              webhooks=not no_webhooks, webhook_loss=webhook_loss,
                              webhook_duplicate=webhook_duplicate, webhook_delay=webhook_delay,
                              clip_lie=clip_lie))
    server = make_server(sim, host, port)
    click.echo(f"simulator serving on http://{host}:{server.server_address[1]} (key {api_key!r})", err=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    sys.exit(ExitCode.OK)


@cli.command()
@click.argument("sections", nargs=-1, type=click.Choice(["efficiency", "efficiency-long", "priors", "inprocess",
                                                          "ratelimit", "spare", "overhead", "shared", "memory",
                                                          "stage", "rerun", "webhooks", "all"]))
@click.option("--jobs", default=800, show_default=True, help="Jobs in the efficiency run.")
@click.option("--concurrency", default=40, show_default=True, help="Jobs in flight.")
@click.option("--render", default=1.0, show_default=True, help="Mean simulated render seconds.")
@click.option("--jitter", default=0.2, show_default=True, help="Render time spread (fraction of the mean).")
@click.option("--long-jobs", default=240, show_default=True, help="Jobs in the efficiency-long run.")
@click.option("--long-render", default=8.0, show_default=True, help="Mean render seconds in the efficiency-long run.")
@click.option("--max-polls", default=2.5, show_default=True, type=click.FloatRange(1),
              help="Status polls per job the oracle's schedule may spend on average.")
@click.option("--rate-jobs", default=400, show_default=True, help="Jobs in the rate-limited run.")
@click.option("--sim-rpm", default=1200.0, show_default=True, help="The simulator's request limit per minute.")
@click.option("--rpm", "client_rpm", default=1100.0, show_default=True, help="batcher's --rpm in that run.")
@click.option("--overhead-jobs", default=10_000, show_default=True, help="Jobs in the zero-render run.")
@click.option("--stage-jobs", default=100_000, show_default=True, help="Jobs planned and added to a ledger.")
@click.option("--rerun-jobs", default=60_000, show_default=True,
              help="Completed jobs (a small file each) in the rerun section.")
@click.option("--s3-url", envvar="BATCHER_BENCH_S3", default=None, metavar="URL",
              help="S3-compatible endpoint for the rerun section's run on a bucket (or set BATCHER_BENCH_S3): a "
                   "bucket is made and removed; without it that run is left out.")
@click.option("--rerun-objects", default=5000, show_default=True, help="Objects in the rerun section's bucket run.")
@click.option("--memory-jobs", default=3000, show_default=True, help="Jobs in the memory run (over loopback).")
@click.option("--pg-url", envvar="BATCHER_BENCH_PG", default=None, metavar="URL",
              help="PostgreSQL database for the shared section (or set BATCHER_BENCH_PG): "
                   "postgresql+psycopg://USER:PASS@HOST/DB; a schema is made and dropped per measurement.")
@click.option("--shared-jobs", default=2000, show_default=True, help="Jobs in each run of the shared section.")
@click.option("--shared-runners", default=4, show_default=True, type=click.IntRange(1),
              help="Runner processes at once on one PostgreSQL ledger in the shared section.")
@click.option("--webhook-loss", default=0.3, show_default=True, type=click.FloatRange(0, 1),
              help="Share of webhooks the simulator loses in the webhooks section's lossy runs.")
@click.option("--webhook-delay", default=0.02, show_default=True, type=click.FloatRange(0),
              help="Seconds from a render's end to its webhook in the webhooks section.")
@click.option("--prior-timeout", default=2.0, show_default=True, type=click.FloatRange(1),
              help="A run told a wrong render time (priors, webhooks) is stopped after this many times the "
                   "oracle's wall time.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON too.")
def bench(sections: tuple[str, ...], as_json: bool, **options: Any) -> None:
    """Benchmark batcher against the built-in simulator and print a table of figures.

    With no SECTIONS: every section but efficiency-long (8 s renders: about two minutes more; priors
    prints its run told the true mean) and the inprocess diagnostic; `all`: every section."""
    from ..bench import DEFAULT_SECTIONS, SECTIONS, BenchSettings, run_all
    chosen = SECTIONS if "all" in sections else list(sections) or DEFAULT_SECTIONS
    results = run_all(chosen, BenchSettings(**options), echo=click.echo)
    if as_json:
        from ..money import json_safe
        click.echo(json.dumps(json_safe(results), indent=2, allow_nan=False))  # strict JSON, as every output
