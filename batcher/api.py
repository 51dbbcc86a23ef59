"""The Python API: the same operations as the command line, for notebooks and pipelines.

    from batcher import api
    manifest = api.load("manifests/demo.yaml")
    print(api.plan(manifest).credits)
    report = api.run("manifests/demo.yaml", simulate=True, budget=500)
    print(report.counts, api.status("batcher.db", manifest.batch))
    api.export_dataset("batcher.db", manifest.batch, "dataset/")    # a VideoFolder dataset
    api.report("batcher.db", manifest.batch, "report.html")         # the HTML gallery

The CLI is built on these functions, so there is one code path.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
import httpx

from .client import DEFAULT_BASE, ModelCatalog, PixelDojoClient, UnusableDescription, spec_of
from .client import list_models as catalog_list
from .client.preflight import PreflightReport, check_local_files, preflight, references_of
from .errors import MissingKeyError, UsageError
from .ledger import DEFAULT_LEDGER, Ledger, display_location, is_database_url, read_model_infos
from .manifest import Manifest, load_manifest
from .models import MODELS, ModelSpec, needs_description, unpriced, wanted_descriptions
from .outputs import OUTPUTS, default_out_dir  # noqa: F401 - part of the API
from .plan import MAX_JOBS, PlanSummary, check, iter_jobs, job_rows
from .references import ReferenceStore, S3Store, SimulatedStore, StoreSettings, refuse_without_store
from .run import Progress, Runner, RunOptions, RunReport
from .simulator import Journal, SimConfig, Simulator, SimulatorTransport
from .states import JobState
from .views import figures_info


def load(path: str | Path) -> Manifest:
    """Load a manifest; raises ManifestError with every problem."""
    return load_manifest(path)


def plan(manifest: Manifest, rate_overrides: dict[str, float] | None = None, *,
         max_jobs: int = MAX_JOBS) -> PlanSummary:
    """Expand and price a manifest without sending or writing anything."""
    return check(manifest, rate_overrides, max_jobs=max_jobs)


def stage(ledger: Ledger, manifest: Manifest, rate_overrides: dict[str, float] | None = None, *,
          checked: PlanSummary | None = None, simulated: bool = False, max_jobs: int = MAX_JOBS) -> tuple[int, int]:
    """Check a manifest (unless the caller just did: `checked`, what `check(..., keep=True)`
    returned for it, whose compiled rows are then filled in rather than expanded again, and let
    go) and add its jobs to the ledger; returns (added, already known). `simulated` marks the batch
    as rendered by the simulator; a batch with results of the other kind is refused (SimulationMismatch)."""
    if checked is None:
        checked = check(manifest, rate_overrides, max_jobs=max_jobs, keep=True)
    # a run keeps its plan: the rows' keys must not stay with it
    compiled, checked.compiled = checked.compiled, None
    ledger.check_mode(manifest.batch, simulated)  # before the expansion, which can take a while
    added = ledger.write(ledger.add_rows(manifest.batch, manifest.model.api_id, str(manifest.path),
                                         lambda: job_rows(manifest, rate_overrides, max_jobs=max_jobs,
                                                          compiled=compiled),
                                         simulated=simulated))
    images = {**manifest.set_files, **manifest.local_files}
    ledger.write(ledger.remember_local_images(((a, str(f.path), f.size, f.origin) for a, f in images.items()),
                                              time.time()))
    return added


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


def describe_offline(m: Manifest, ledger: str | Path) -> Manifest:
    """The manifest with its models described from the ledger's cache only (`plan`, `validate`:
    nothing sent, nothing written)."""
    wanted = wanted_descriptions(m)
    if not wanted:
        return m
    cached = read_model_infos(ledger, wanted)
    specs: dict[str, ModelSpec] = {}
    missing: dict[str, str] = {}
    for api_id, found in cached.items():
        try:
            specs[api_id] = spec_of(found)
        except UnusableDescription as e:
            missing[api_id] = str(e)
    for api_id in m.unknown_models:
        if api_id not in specs and api_id not in missing:
            missing[api_id] = (f"not described yet: `batcher models {api_id}` fetches its description from the API "
                               "(a run does it itself)")
    return load_manifest(m.path, models=specs, missing=missing) if specs or missing else m


async def list_models(to: Target) -> list[dict[str, Any]]:
    """The models the API offers, with their prices (each as the API lists it)."""
    async with PixelDojoClient(to.api_key, to.base_url, transport=to.transport) as client:
        return await catalog_list(client)


async def describe_model(api_id: str, ledger: Ledger, to: Target, *, refresh: bool = False
                         ) -> tuple[ModelSpec, dict[str, Any]]:
    """One model: its spec (built-in, cached or fetched now, then cached) and what the API said of
    it (info with `requestSchema`; empty for a built-in model the API was not asked about)."""
    if not needs_description(api_id) and not refresh:
        spec = MODELS[api_id]
        return spec, {"requestSchema": spec.json_schema()}
    async with PixelDojoClient(to.api_key, to.base_url, transport=to.transport) as client:
        found = await ModelCatalog(ledger, client).describe([api_id], refresh=refresh)
    if api_id not in found.specs:
        raise UsageError(f"model {api_id}: {found.missing.get(api_id, 'not described')}")
    cached = ledger.model_infos([api_id])[api_id]
    return found.specs[api_id], {**json.loads(cached.info), "requestSchema": json.loads(cached.request_schema),
                                 "fetched_at": cached.fetched_at}


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


SIMULATED_LEDGER = "batcher-sim.db"


def check_references(manifest: Manifest | str | Path, *, simulate: bool | Simulator = False,
                     transport: httpx.AsyncBaseTransport | None = None, max_jobs: int = MAX_JOBS) -> PreflightReport:
    """`validate --online`: every distinct reference URL of a manifest checked as a run's preflight
    would (see batcher.preflight), and every local image read and held to the same rules, without
    a run: nothing is sent to the API, nothing remembered.
    `simulate` fetches through the built-in simulator (which serves `/_sim/refs/`) instead."""
    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    check(m, max_jobs=max_jobs)
    uses = references_of((job.origin, job.params) for job in iter_jobs(m, max_jobs=max_jobs))
    if simulate:
        transport = SimulatorTransport(simulate if isinstance(simulate, Simulator) else Simulator())

    async def go() -> PreflightReport:
        async with PixelDojoClient("", DEFAULT_BASE, transport=transport) as client:
            return await preflight(client, uses, {}, time.time())
    report = anyio.run(go)
    check_local_files(m.local_files.values(), report)  # local images: read here, never sent
    return report


@dataclass
class Target:
    """Where requests go: the real API (key and base URL) or a simulator."""

    api_key: str
    base_url: str
    transport: httpx.AsyncBaseTransport | None = None
    simulator: Simulator | None = None

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
    """The render time to assume before any is learned: the simulator's own when simulating; else
    what was given (None: each model's typical render time)."""
    return to.simulator.config.render_seconds if to.simulator is not None else given


def target(*, simulate: bool | SimConfig | Simulator = False, api_base: str | None = None,
           api_key: str | None = None, transport: httpx.AsyncBaseTransport | None = None,
           simulator_state: Path | None = None) -> Target:
    """Resolve where to send requests. A real run needs PIXELDOJO_API_KEY. A simulator given a
    `simulator_state` file starts from what it holds and records there what it charges."""
    if simulate:
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


async def run_async(manifest: Manifest | str | Path, *, ledger: Ledger | str | Path = DEFAULT_LEDGER,
                    options: RunOptions | None = None, to: Target | None = None,
                    rate_overrides: dict[str, float] | None = None,
                    on_progress: Callable[[Progress], None] | None = None,
                    on_force_exit: Callable[[], None] | None = None,
                    stage_jobs: bool = True) -> RunReport:
    """Add a manifest's jobs to the ledger and run them; returns where the batch stands."""
    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    owned = not isinstance(ledger, Ledger)
    led = Ledger(ledger) if not isinstance(ledger, Ledger) else ledger
    try:
        dest = to or target()
        simulated = dest.simulator is not None
        checked: PlanSummary | None = None
        if stage_jobs:  # (checking finds the manifest's local images)
            m = await describe_models(m, led, dest)
            checked = await anyio.to_thread.run_sync(lambda: check(m, rate_overrides, keep=True))
        if options is not None and options.limits.budget is not None:
            refuse_unpriced(m, rate_overrides or {})
        store = options.reference_store if options is not None else None
        store = store or reference_store(m, dest)  # refused here, before staging, when there is none
        if stage_jobs:
            await anyio.to_thread.run_sync(lambda: stage(led, m, rate_overrides, checked=checked,
                                                         simulated=simulated))
        else:
            led.check_mode(m.batch, simulated)
        opts = options or RunOptions.of(out_dir=default_out_dir(m.batch, simulated))
        opts = replace(opts, reference_store=store)
        secrets = store.secrets if store is not None else ()
        if options is None:
            first_poll = expected_render_for(dest, opts.polling.expected_render)
            opts.polling = replace(opts.polling, expected_render=first_poll)
        try:
            async with PixelDojoClient(dest.api_key, dest.base_url, transport=dest.transport,
                                       max_retry_after=opts.polling.max_retry_after, also_redact=secrets,
                                       deadlines=opts.polling.deadlines) as client:
                runner = Runner(led, client, m.model, m.batch, opts, on_progress=on_progress,
                                on_force_exit=on_force_exit, models=m.models)
                return await runner.run()
        finally:
            dest.close()
    finally:
        if owned:
            led.close()


def run(manifest: Manifest | str | Path, *, ledger: str | Path = DEFAULT_LEDGER, simulate: bool = False,
        budget: float | None = None, concurrency: int = 4, out_dir: str | Path | None = None,
        **kwargs: Any) -> RunReport:
    """Blocking helper: run a manifest to the end (against the simulator when `simulate`)."""
    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    if simulate and str(ledger) == DEFAULT_LEDGER:
        ledger = SIMULATED_LEDGER  # simulated clips never pass for real ones
    to = target(simulate=simulate, simulator_state=simulator_state_for(ledger) if simulate else None)
    opts = RunOptions.of(concurrency=concurrency, budget=budget, expected_render=expected_render_for(to, None),
                         out_dir=Path(out_dir) if out_dir else default_out_dir(m.batch, bool(simulate)))
    return anyio.run(lambda: run_async(m, ledger=ledger, options=opts, to=to, **kwargs))


def status(ledger: Ledger | str | Path, batch: str | None = None) -> dict[str, Any]:
    """Jobs per state, credits and downloads for a batch (or every batch if None)."""
    owned = not isinstance(ledger, Ledger)
    led = Ledger(ledger) if not isinstance(ledger, Ledger) else ledger
    try:
        batches = [batch] if batch else [b.name for b in led.batches()]
        out: dict[str, Any] = {"batches": {}}
        for name in batches:
            out["batches"][name] = figures_info(led.figures(name))
        if batch:
            return {"batch": batch, **out["batches"][batch]}
        totals = {s.value: 0 for s in JobState}
        for data in out["batches"].values():
            for state, n in data["counts"].items():
                totals[state] += n
        out["counts"] = totals
        out["credits_spent"] = round(sum(d["credits_spent"] for d in out["batches"].values()), 2)
        return out
    finally:
        if owned:
            led.close()


def _with_ledger(ledger: Ledger | str | Path, fn: Callable[[Ledger], Any]) -> Any:
    if isinstance(ledger, Ledger):
        return fn(ledger)
    with Ledger(ledger) as led:
        return fn(led)


def export_records(ledger: Ledger | str | Path, batch: str | None = None) -> list[dict[str, Any]]:
    """Every job's record (request, provenance, cost, file, sha256), as JSONL/CSV export writes them."""
    from .views import records
    return _with_ledger(ledger, lambda led: list(records(led, batch)))


def export_dataset(ledger: Ledger | str | Path, batch: str | None, out_dir: str | Path,
                   include_failed: bool = False) -> Any:
    """A Hugging Face VideoFolder dataset: verified videos and metadata.jsonl."""
    from .views import export_videofolder
    return _with_ledger(ledger, lambda led: export_videofolder(led, batch, Path(out_dir), include_failed))


def report(ledger: Ledger | str | Path, batch: str, out_path: str | Path = "report.html") -> int:
    """Write the batch's self-contained HTML gallery; returns the number of cards."""
    from .views import build_report
    return _with_ledger(ledger, lambda led: build_report(led, batch, Path(out_path)))
