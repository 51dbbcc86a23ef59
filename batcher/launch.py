"""The steps before a run, in one place for the command line and `api.run_async` alike: where
requests go (`target`; a simulator served over HTTP known as one: `identified`, so its runs are
simulated), the run's own webhooks checked, the manifest's models described, its
--rate values and plan checked, a price required under a budget, the reference store chosen
(`prepare`), and its jobs staged (`stage_ready`). `start_run` takes them from `batcher run`'s
settings (RunSettings); the CLI adds only the parsing, printing and exit codes."""

from __future__ import annotations

import gc
import os
import re
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx

from .client import DEFAULT_BASE, ModelCatalog, PixelDojoClient
from .client.preflight import preflight, with_url_refusals
from .errors import ApiError, ManifestError, MissingKeyError, ServerError, TooSlow, UsageError
from .ledger import Ledger, Staged, display_location, is_database_url
from .manifest import Manifest, load_manifest
from .models import check_rates, unpriced, wanted_descriptions
from .outputs import default_out_dir
from .outputs.bucket import BucketOutputs, is_bucket_address
from .plan import MAX_JOBS, PlanSummary, check, job_rows
from .references import ReferenceStore, S3Store, SimulatedStore, StoreSettings, refuse_without_store
from .run import RunOptions
from .run.options import RunSettings
from .run.webhooks import Webhooks, parse_listen, webhooks_for
from .states import JobState

if TYPE_CHECKING:  # (a run against the API never imports the simulator)
    from .simulator import SimConfig, Simulator


@dataclass
class Target:
    """Where requests go: the real API (key and base URL) or a simulator: the in-process one
    (`simulator`), or one served over HTTP that said what it is when asked (`served_simulator`,
    see `identified`)."""

    api_key: str
    base_url: str
    transport: httpx.AsyncBaseTransport | None = None
    simulator: Simulator | None = None
    served_simulator: bool = False

    @property
    def simulated(self) -> bool:
        """Whether what this target renders is simulated: kept apart from real results."""
        return self.simulator is not None or self.served_simulator

    def close(self) -> None:
        if self.simulator is not None:
            self.simulator.close()  # its webhook senders (they start again if it is used again)
            if self.simulator.journal is not None:
                self.simulator.journal.close()


def simulator_state_for(ledger: str | Path) -> Path:
    """The file where the built-in simulator keeps its jobs: beside an SQLite ledger, or (for a
    PostgreSQL ledger) in the working folder, named after the database."""
    if is_database_url(ledger):
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", display_location(ledger).rsplit("/", 1)[-1]) or "ledger"
        return Path(f"batcher-sim-{name}.simulator.jsonl")
    path = Path(ledger)
    return path.with_name(path.name + ".simulator.jsonl")


def expected_render_for(to: Target, given: float | None) -> float | None:
    """The render time to assume before any is learned: what was given; else, simulating, the
    simulator's own (None: each model's typical render time)."""
    if given is not None or to.simulator is None:
        return given
    return to.simulator.config.render_seconds


def target(*, simulate: bool | SimConfig | Simulator = False, api_base: str | None = None,
           api_key: str | None = None, transport: httpx.AsyncBaseTransport | None = None,
           simulator_state: Path | None = None) -> Target:
    """Resolve where to send requests. A real run needs PIXELDOJO_API_KEY. A simulator given a
    `simulator_state` file starts from what it holds and records there what it charges."""
    if simulate:
        from .simulator import Journal, SimConfig, Simulator, SimulatorTransport
        sim = simulate if isinstance(simulate, Simulator) else Simulator(
            simulate if isinstance(simulate, SimConfig) else SimConfig())
        if simulator_state is not None:
            journal = Journal(simulator_state)
            journal.replay(sim)
            sim.journal = journal
        return Target(sim.config.api_key, "https://pixeldojo.ai", SimulatorTransport(sim), sim)
    key = api_key if api_key is not None else os.environ.get("PIXELDOJO_API_KEY", "")
    if not key.strip():
        raise MissingKeyError("PIXELDOJO_API_KEY is not set: export your PixelDojo API key, or use --simulate")
    base = api_base or os.environ.get("PIXELDOJO_API_BASE") or DEFAULT_BASE
    if not base.startswith(("http://", "https://")):
        raise UsageError(f"--api-base must be an http(s) URL, got {base!r}")
    return Target(key.strip(), base, transport)


async def identified(to: Target, attempts: int = 3) -> Target:
    """`to`, asked (unless it is the in-process simulator) whether the API behind it is batcher's
    simulator served over HTTP (`batcher simulator`, which marks every answer: SIMULATOR_HEADER):
    its runs are then simulated, kept apart from real ones as --simulate runs are. One GET of the
    model list, before anything is staged or spent; any answer tells (a 401 or a 503 too), a
    connection that fails is tried again (`attempts` in all), and an API that never answers is
    taken for a real one, whose failures the run then meets as before."""
    if to.simulator is not None:
        return to
    async with PixelDojoClient(to.api_key, to.base_url, transport=to.transport) as client:
        for _ in range(attempts):
            try:
                await client.read("identify", "/api/v1/models")
                break
            except ServerError as e:  # no answer, or a 5xx: worth asking again, unless it was too slow
                if client.served_by_simulator or isinstance(e, TooSlow):
                    break
            except ApiError:
                break
    return replace(to, served_simulator=client.served_by_simulator)


def run_target(settings: RunSettings, ledger_path: str | Path) -> Target:
    """Where `batcher run` and `retry` send requests, from their settings: the in-process simulator
    (--simulate, its state kept beside `ledger_path`), else the API at --api-base, `identified`
    once the options that need no request (the key, the webhooks) are known to be right."""
    if settings.simulate:
        from .simulator import SimConfig
        sim = SimConfig(render_seconds=settings.sim_render_seconds, fail_rate=settings.sim_fail_rate)
        return target(simulate=sim, simulator_state=simulator_state_for(ledger_path))
    to = target(api_base=settings.api_base)
    webhooks(settings.webhook_listen, settings.webhook_url, to.base_url)
    return anyio.run(identified, to)


def stage(ledger: Ledger, manifest: Manifest, rate_overrides: dict[str, float] | None = None, *,
          checked: PlanSummary | None = None, simulated: bool = False, max_jobs: int = MAX_JOBS) -> Staged:
    """Check a manifest (unless the caller just did: `checked`, what `check(..., keep=True)`
    returned for it, whose compiled rows are then filled in rather than expanded again, and let
    go) and add its jobs to the ledger: what it found (added, already known, orphans). `simulated`
    marks the batch as rendered by the simulator; a batch with results of the other kind is
    refused (SimulationMismatch)."""
    if checked is None:
        checked = check(manifest, rate_overrides, max_jobs=max_jobs, keep=True)
    # a run keeps its plan: the rows' keys must not stay with it
    compiled, checked.compiled = checked.compiled, None
    ledger.check_mode(manifest.batch, simulated)  # before the expansion, which can take a while
    # The rows are tuples of text and numbers, made and let go by the hundred thousand: no cycle
    # for the collector to find, its passes over them only lost time.
    collecting = gc.isenabled()
    gc.disable()
    try:
        staged = ledger.write(ledger.add_rows(manifest.batch, manifest.model.api_id, str(manifest.path),
                                              lambda: job_rows(manifest, rate_overrides, max_jobs=max_jobs,
                                                               compiled=compiled),
                                              simulated=simulated, whole=True))
    finally:
        if collecting:
            gc.enable()
    images = {**manifest.set_files, **manifest.local_files}
    ledger.write(ledger.remember_local_images(((a, str(f.path), f.size, f.origin) for a, f in images.items()),
                                              time.time()))
    return staged


def refuse_unpriced(m: Manifest, overrides: dict[str, float]) -> None:
    """A run under a budget refuses models whose price is unknown until `--rate` gives one."""
    unknown = unpriced(list(m.models.values()), overrides)
    if unknown:
        raise UsageError(f"{unknown[0]} has no known price (none published, none listed by the API): a run under "
                         f"--budget needs one: --rate {unknown[0]}=CREDITS_PER_SECOND")


async def describe_models(m: Manifest, ledger: Ledger, to: Target) -> Manifest:
    """The manifest with every model it names described: built-in tables, the ledger's cache, else
    the API (its description then cached). A model the API does not know stays a FILE:LINE
    problem of the manifest, reported before anything is spent."""
    wanted = wanted_descriptions(m)
    if not wanted:
        return m
    async with PixelDojoClient(to.api_key, to.base_url, transport=to.transport) as client:
        found = await ModelCatalog(ledger, client).describe(wanted)
    return load_manifest(m.path, models=found.specs, missing=found.missing)


def reference_store(manifest: Manifest, to: Target, settings: StoreSettings | None = None) -> ReferenceStore | None:
    """Where this batch's local images go. A simulated run uses the simulator's own store (never
    the user's bucket, unless `settings` names it explicitly); a real run the bucket `settings`
    (the command line's) or the manifest's `reference_store:` names. None when nothing needs one."""
    if to.simulator is not None and settings is None:
        return SimulatedStore(to.simulator, to.base_url)
    settings = settings or manifest.reference_store
    if settings is not None:
        return S3Store(settings)
    if not (manifest.local_files or manifest.set_files):
        return None
    first = next(iter({**manifest.set_files, **manifest.local_files}.values()))
    refuse_without_store(first.origin, first.shown, len({**manifest.set_files, **manifest.local_files}))
    return None


def webhooks(listen: str | None, public_url: str | None, api_base: str | None) -> Webhooks | None:
    """--webhook-listen and --webhook-url, checked (a UsageError names what is wrong), before any
    request. `api_base`: where requests go (None: the simulator)."""
    if listen is None:
        if public_url is not None:
            raise UsageError("--webhook-url needs --webhook-listen: where batcher hears the pokes")
        return None
    try:
        host, port = parse_listen(listen)
    except UsageError as e:
        raise UsageError(f"--webhook-listen: {e}") from None
    return webhooks_for(host, port, public_url, api_base)


@dataclass
class Ready:
    """A run whose steps before it are done: the manifest with its models described, where its
    requests go, its --rate values, its checked plan (None when the caller staged its jobs) and
    its options, the reference store among them."""

    manifest: Manifest
    to: Target
    rate_overrides: dict[str, float]
    checked: PlanSummary | None
    options: RunOptions
    max_jobs: int = MAX_JOBS

    @property
    def simulated(self) -> bool:
        return self.to.simulated


def prepare(m: Manifest, ledger: Ledger | str | Path, to: Target, options: RunOptions,
            rate_overrides: dict[str, float] | None = None, *, check_plan: bool = True, max_jobs: int = MAX_JOBS,
            store_settings: StoreSettings | None = None,
            wait: Callable[[Callable[[], Coroutine[Any, Any, Any]]], Any] = anyio.run) -> Ready:
    """The checks before a run, in their order: the models described (built-in tables, the
    ledger's cache, else the API), the --rate values and the plan checked (`check_plan`: the
    manifest's local images are found there), a price required under a budget, the reference store
    chosen (refused here, before staging, when the batch needs one and there is none). Blocking:
    `wait` runs the one step that asks the API (anyio.run; from a worker thread,
    anyio.from_thread.run), so a long expansion is never on an event loop."""
    overrides = dict(rate_overrides or {})
    checked = None
    if check_plan:
        if wanted_descriptions(m):
            m = wait(lambda: _described(m, ledger, to))
        if problem := check_rates(list(m.models.values()) or [m.model], overrides):
            raise UsageError(problem)
        try:
            checked = check(m, overrides, max_jobs=max_jobs, keep=True)
        except ManifestError as e:
            if not options.preflight:
                raise
            raise with_url_refusals(e, m, lambda uses: wait(lambda: refused_urls(to, uses))) from None
    if options.limits.budget is not None:
        refuse_unpriced(m, overrides)
    store = options.reference_store or reference_store(m, to, store_settings)
    return Ready(m, to, overrides, checked, replace(options, reference_store=store), max_jobs)


async def refused_urls(to: Target, uses: dict[str, str]) -> list[str]:
    """What a run's preflight refuses among `uses` (URL -> origin), fetched through `to`, nothing
    remembered: `FILE:LINE: reference URL: why` lines."""
    async with PixelDojoClient(to.api_key, to.base_url, transport=to.transport) as client:
        return (await preflight(client, uses, {}, time.time())).errors


async def _described(m: Manifest, ledger: Ledger | str | Path, to: Target) -> Manifest:
    if isinstance(ledger, Ledger):
        return await describe_models(m, ledger, to)
    with Ledger(ledger) as led:
        return await describe_models(m, led, to)


def start_run(m: Manifest, settings: RunSettings, rate_overrides: dict[str, float],
              store_settings: StoreSettings | None, to: Target | None = None, **services: Any) -> Ready:
    """`batcher run` and `retry`: where requests go (`to`, else `run_target`) and the run's
    webhooks from their settings (before any other request), its options, then `prepare`. A
    simulated run's videos go to outputs/simulated/ unless --out is given (`output_place`). `services`: RunOptions'
    own (on_warning...)."""
    to = to or run_target(settings, settings.ledger_path)
    hooks = webhooks(settings.webhook_listen, settings.webhook_url, None if to.simulator is not None else to.base_url)
    out, store = output_place(m, settings.out_dir, to.simulated)
    options = settings.run_options(out_dir=out, expected_render=expected_render_for(to, settings.expected_render),
                                   webhooks=hooks, out_store=store, verify_full=settings.verify == "full",
                                   **services)
    return prepare(m, settings.ledger_path, to, options, rate_overrides, max_jobs=settings.max_jobs,
                   store_settings=store_settings)


def output_place(m: Manifest, out_dir: str | Path | None, simulated: bool) -> tuple[Path, BucketOutputs | None]:
    """Where a run's clips go: `--out` (a folder or s3://BUCKET/PREFIX), else the manifest's
    `outputs:` store, else the default folder. A simulated run's stand-in clips go to
    `outputs:`/simulated/ (as to outputs/simulated/ locally), apart from the real dataset."""
    chosen = out_dir or (f"{str(m.outputs).rstrip('/')}/simulated" if simulated and m.outputs else m.outputs)
    if chosen and is_bucket_address(chosen):
        return default_out_dir(m.batch, simulated), BucketOutputs(str(chosen))
    return (Path(chosen) if chosen else default_out_dir(m.batch, simulated)), None


def run_ledger(path: str | Path, options: RunOptions) -> Ledger:
    """The ledger a run writes: an SQLite write waits for another's lock no longer than the run's
    patience in all."""
    return Ledger(path, busy_timeout=min(60.0, max(0.1, options.limits.ledger_patience)))


def stage_ready(ledger: Ledger, ready: Ready, requeue: tuple[str, ...] = ()) -> tuple[Staged, int]:
    """Add the batch's jobs to the ledger, then requeue the jobs in the states `retry` names;
    returns what staging found, and how many were requeued."""
    staged = stage(ledger, ready.manifest, ready.rate_overrides, checked=ready.checked,
                         simulated=ready.simulated, max_jobs=ready.max_jobs)
    requeued = ledger.write(ledger.requeue(ready.manifest.batch, [JobState(s) for s in requeue],
                                           "requeued by `batcher retry`")) if requeue else 0
    return staged, requeued
