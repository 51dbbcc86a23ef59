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
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx

from .client import DEFAULT_BASE, ModelCatalog, PixelDojoClient, UnusableDescription, spec_of
from .client import list_models as catalog_list
from .client.preflight import PreflightReport, check_local_files, preflight, references_of, with_url_refusals
from .defaults import SIMULATED_LEDGER
from .errors import ManifestError, UsageError
from .launch import (
    Ready,
    Target,
    describe_models,
    expected_render_for,
    identified,
    prepare,
    reference_store,
    refuse_unpriced,
    run_ledger,
    run_target,
    simulator_state_for,
    stage,
    stage_ready,
    start_run,
    target,
)
from .ledger import DEFAULT_LEDGER, Ledger, read_model_infos
from .manifest import Manifest, load_manifest
from .models import MODELS, ModelSpec, needs_description, wanted_descriptions
from .outputs import OUTPUTS, default_out_dir
from .plan import MAX_JOBS, PlanSummary, check, iter_jobs
from .run import Progress, Runner, RunOptions, RunReport
from .views import status_info

if TYPE_CHECKING:
    from .simulator import Simulator

__all__ = [
    "OUTPUTS",
    "SIMULATED_LEDGER",
    "Ready",
    "Target",
    "check_references",
    "default_out_dir",
    "describe_model",
    "describe_models",
    "describe_offline",
    "expected_render_for",
    "export_dataset",
    "export_records",
    "identified",
    "list_models",
    "load",
    "plan",
    "prepare",
    "reference_store",
    "refuse_unpriced",
    "report",
    "run",
    "run_async",
    "run_ledger",
    "run_ready",
    "run_target",
    "simulator_state_for",
    "stage",
    "stage_ready",
    "start_run",
    "status",
    "target",
]


def load(path: str | Path) -> Manifest:
    """Load a manifest; raises ManifestError with every problem."""
    return load_manifest(path)


def plan(manifest: Manifest, rate_overrides: dict[str, float] | None = None, *,
         max_jobs: int = MAX_JOBS) -> PlanSummary:
    """Expand and price a manifest without sending or writing anything."""
    return check(manifest, rate_overrides, max_jobs=max_jobs)


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


def check_references(manifest: Manifest | str | Path, *, simulate: bool | Simulator = False,
                     transport: httpx.AsyncBaseTransport | None = None, max_jobs: int = MAX_JOBS) -> PreflightReport:
    """`validate --online`: every distinct reference URL of a manifest checked as a run's preflight
    would (see batcher.preflight), and every local image read and held to the same rules, without
    a run: nothing is sent to the API, nothing remembered.
    `simulate` fetches through the built-in simulator (which serves `/_sim/refs/`) instead."""
    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    if simulate:
        from .simulator import Simulator, SimulatorTransport
        transport = SimulatorTransport(simulate if isinstance(simulate, Simulator) else Simulator())

    async def go(uses: dict[str, str]) -> PreflightReport:
        async with PixelDojoClient("", DEFAULT_BASE, transport=transport) as client:
            return await preflight(client, uses, {}, time.time())
    try:
        check(m, max_jobs=max_jobs)
    except ManifestError as e:  # a refused local image: the refusal lists the refused URLs too
        raise with_url_refusals(e, m, lambda uses: anyio.run(go, uses).errors) from None
    report = anyio.run(go, references_of((job.origin, job.params) for job in iter_jobs(m, max_jobs=max_jobs)))
    check_local_files(m.local_files.values(), report)  # local images: read here, never sent
    return report


async def run_async(manifest: Manifest | str | Path, *, ledger: Ledger | str | Path = DEFAULT_LEDGER,
                    options: RunOptions | None = None, to: Target | None = None,
                    rate_overrides: dict[str, float] | None = None,
                    on_progress: Callable[[Progress], None] | None = None,
                    on_force_exit: Callable[[], None] | None = None,
                    stage_jobs: bool = True) -> RunReport:
    """Add a manifest's jobs to the ledger and run them; returns where the batch stands.
    `stage_jobs=False`: the caller added them (the models described, the plan checked)."""
    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    owned = not isinstance(ledger, Ledger)
    led = Ledger(ledger) if not isinstance(ledger, Ledger) else ledger
    try:
        dest = to or target()
        simulated = dest.simulated
        opts = options or RunOptions.of(out_dir=default_out_dir(m.batch, simulated),
                                        expected_render=expected_render_for(dest, None))
        ready = await anyio.to_thread.run_sync(lambda: prepare(
            m, led, dest, opts, rate_overrides, check_plan=stage_jobs, wait=anyio.from_thread.run))
        if stage_jobs:
            await anyio.to_thread.run_sync(lambda: stage_ready(led, ready))
        else:
            led.check_mode(m.batch, simulated)
        return await run_ready(led, ready, on_progress=on_progress, on_force_exit=on_force_exit)
    finally:
        if owned:
            led.close()


async def run_ready(ledger: Ledger, ready: Ready, *, on_progress: Callable[[Progress], None] | None = None,
                    on_force_exit: Callable[[], None] | None = None) -> RunReport:
    """Run a batch whose steps before the run are done (see `prepare`, `stage_ready`)."""
    opts, dest = ready.options, ready.to
    secrets = tuple(s for store in (opts.reference_store, opts.saving.out_store) if store is not None
                    for s in store.secrets)
    try:
        async with PixelDojoClient(dest.api_key, dest.base_url, transport=dest.transport,
                                   max_retry_after=opts.polling.max_retry_after, also_redact=secrets,
                                   deadlines=opts.polling.deadlines) as client:
            runner = Runner(ledger, client, ready.manifest.model, ready.manifest.batch, opts,
                            on_progress=on_progress, on_force_exit=on_force_exit, models=ready.manifest.models)
            return await runner.run()
    finally:
        dest.close()


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
        return status_info(led, batch)
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
    found: list[dict[str, Any]] = _with_ledger(ledger, lambda led: list(records(led, batch)))
    return found


def export_dataset(ledger: Ledger | str | Path, batch: str | None, out_dir: str | Path,
                   include_failed: bool = False, *, model: str | None = None, link: bool = False,
                   presign: str | None = None) -> Any:
    """A Hugging Face VideoFolder dataset: verified videos and metadata.jsonl (`batcher export
    --format videofolder`). With `link`, no video is written: metadata.jsonl names each clip by
    its location (a path or an s3:// URI), and with `presign` (a duration: "90m", "1h", "7d") a
    presigned HTTPS URL beside it. `model`: that model's jobs only."""
    from .views import export_videofolder
    from .views.exports import presign_lifetime
    lifetime = presign_lifetime(presign) if presign is not None else None
    return _with_ledger(ledger, lambda led: export_videofolder(led, batch, Path(out_dir), include_failed, model,
                                                               link=link, presign=lifetime))


def report(ledger: Ledger | str | Path, batch: str, out_path: str | Path = "report.html", *,
           presign: str | None = None) -> int:
    """Write the batch's self-contained HTML gallery; returns the number of cards. `presign`: how
    long the page plays clips held in an output store (`batcher report --presign`; 7 days unless given)."""
    from .views import build_report
    from .views.exports import presign_lifetime
    from .views.report import PRESIGN_SECONDS
    lifetime = PRESIGN_SECONDS if presign is None else presign_lifetime(presign)
    cards: int = _with_ledger(ledger, lambda led: build_report(led, batch, Path(out_path), presign=lifetime))
    return cards
