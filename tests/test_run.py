"""Running batches in-process against the simulator: the ledger held against the server's record."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import sqlite3
import time
from collections import Counter
from pathlib import Path

import anyio
import pytest

from batcher import api
from batcher.errors import SchemaMismatch
from batcher.ledger import Ledger
from batcher.manifest import load_manifest
from batcher.models import HAPPYHORSE_R2V
from batcher.plan import expand
from batcher.policy import RetryPolicy
from batcher.run import RunOptions
from batcher.simulator import SimConfig, Simulator
from batcher.views import export, setup_logging

from .conftest import MANIFESTS, small_manifest


def body_key(body: dict) -> str:
    return json.dumps(body, sort_keys=True)


def test_demo_runs_to_completion_and_matches_the_server(simrun, tmp_path):
    report, sim, ledger_path = simrun(MANIFESTS / "demo.yaml", concurrency=3)
    assert report.exit_code == 0 and report.counts["completed"] == 12
    record = sim.record()
    # every job submitted once, with exactly the body the manifest asks for; its local images (the
    # mare's folder) as the URLs of their uploads, made when the job was sent
    from batcher.references import with_urls

    def uploaded(address: str) -> str:
        return f"https://pixeldojo.ai/_sim/uploads/{address.removeprefix('local:sha256:')}.png"
    expected = [with_urls(j.wire(HAPPYHORSE_R2V), uploaded) for j in expand(load_manifest(MANIFESTS / "demo.yaml"))]
    sent = Counter(body_key(j["body"]) for j in record["jobs"])
    assert sent == Counter(body_key(b) for b in expected)
    assert record["peak_in_flight"] <= 3
    with Ledger(ledger_path) as ledger:
        jobs = list(ledger.iter_batch("knight-and-mare"))
        assert {j.remote_job_id for j in jobs} == {j["job_id"] for j in record["jobs"]}
        assert float(ledger.spend("knight-and-mare").spent) == pytest.approx(record["charged"])
        for job in jobs:
            data = Path(job.file_path).read_bytes()
            assert data == sim.clip(job.remote_job_id)
            assert hashlib.sha256(data).hexdigest() == job.sha256 and job.size == len(data)
            assert Path(job.file_path).name.startswith(f"{job.label}_t{job.take}_{job.key[:8]}")


def test_concurrency_cap_holds_and_is_used(simrun, write):
    manifest = write("m.yaml", small_manifest(n_rows=30))
    report, sim, _ = simrun(manifest, config=SimConfig(render_seconds=0.1, render_jitter=0.1), concurrency=5)
    assert report.counts["completed"] == 30
    assert sim.record()["peak_in_flight"] == 5


def test_rerun_after_completion_submits_nothing(simrun, write):
    manifest = write("m.yaml", small_manifest(n_rows=4))
    report, _sim, ledger = simrun(manifest)
    assert report.counts["completed"] == 4
    report2, sim2, _ = simrun(manifest, ledger=ledger)
    assert report2.exit_code == 0 and report2.submitted == 0
    assert sim2.record()["requests"].get("run", 0) == 0


def test_budget_is_never_exceeded_and_exits_3(simrun, write):
    manifest = write("m.yaml", small_manifest(n_rows=10))  # 20 credits each
    report, sim, ledger = simrun(manifest, budget=70, concurrency=4)
    record = sim.record()
    assert record["charged"] <= 70 and len(record["jobs"]) == 3
    assert report.exit_code == 3 and report.stop_reason == "budget"
    assert report.counts["completed"] == 3 and report.counts["pending"] == 7
    # the budget counts across reruns: a rerun with the same budget spends nothing more
    report2, sim2, _ = simrun(manifest, ledger=ledger, budget=70)
    assert sim2.record()["charged"] == 0 and report2.exit_code == 3
    # a bigger budget lets the rest through
    report3, sim3, _ = simrun(manifest, ledger=ledger, budget=200)
    assert report3.exit_code == 0 and sim3.record()["charged"] == 140


def test_account_out_of_credits_stops_submitting(simrun, write):
    manifest = write("m.yaml", small_manifest(n_rows=6))
    report, sim, _ = simrun(manifest, config=SimConfig(render_seconds=0.02, credits=50), concurrency=2)
    assert report.exit_code == 3 and report.stop_reason == "credits"
    assert report.counts["completed"] == 2 and sim.record()["charged"] == 40


def test_bad_key_stops_the_run(tmp_path, write):
    manifest = write("m.yaml", small_manifest(n_rows=2))
    sim = Simulator(SimConfig(api_key="right"))
    to = api.target(simulate=sim)
    to.api_key = "wrong"
    report = anyio.run(lambda: api.run_async(manifest, ledger=tmp_path / "l.db", to=to, options=RunOptions.of(
        out_dir=tmp_path / "o", check_schema=False)))
    assert report.exit_code == 2 and report.stop_reason == "auth" and sim.record()["charged"] == 0


def test_remote_failures_are_refunded_and_retried(simrun, write):
    manifest = write("m.yaml", small_manifest(n_rows=4))
    report, sim, ledger = simrun(manifest, config=SimConfig(render_seconds=0.02, fail_rate=1.0), max_attempts=2)
    record = sim.record()
    assert len(record["jobs"]) == 8 and record["refunded"] == record["charged"]
    assert report.counts["failed"] == 4 and report.exit_code == 1 and report.spent == 0
    with Ledger(ledger) as led:
        job = next(led.iter_batch("small"))
        assert job.attempts == 2 and "upstream model error" in job.error
        kinds = [e.kind for e in led.events(job.id)]
        assert kinds.count("remote-failed") == 2


def test_expired_url_is_refreshed(tmp_path, write):
    manifest = write("m.yaml", small_manifest(n_rows=3))
    sim = Simulator(SimConfig(render_seconds=0.02, url_ttl=-1))  # every URL is born expired
    fast = RetryPolicy(base=0.01, cap=0.05, max_attempts=3)
    report = anyio.run(lambda: api.run_async(manifest, ledger=tmp_path / "l.db", to=api.target(simulate=sim),
                                             options=RunOptions.of(out_dir=tmp_path / "o", expected_render=0.02,
                                                                   retry=fast)))
    # Each 403 brings a fresh URL from a poll; while the job's expiresAt is ahead it is never
    # given up as expired (re-rendering pays again): it stays rendered for the next run.
    assert report.counts["rendered"] == 3 and report.counts["expired"] == 0 and report.exit_code == 1
    with Ledger(tmp_path / "l.db") as led:
        job = next(led.iter_batch("small"))
        kinds = [e.kind for e in led.events(job.id)]
        assert "403" in job.error and kinds[-1] == "download-given-up" and kinds.count("url-refreshed") == 3


def test_schema_mismatch_stops_before_spending(tmp_path, write):
    manifest = write("m.yaml", small_manifest(n_rows=2, duration=12))

    class Narrow(Simulator):
        def handle(self, method, url, headers, body):
            answer = super().handle(method, url, headers, body)
            if url.endswith("/schema"):
                schema = json.loads(answer.body)
                schema["properties"]["duration"]["maximum"] = 10
                answer.body = json.dumps(schema).encode()
            return answer
    sim = Narrow(SimConfig())
    with pytest.raises(SchemaMismatch, match="duration"):
        anyio.run(lambda: api.run_async(manifest, ledger=tmp_path / "l.db", to=api.target(simulate=sim),
                                         options=RunOptions.of(out_dir=tmp_path / "o")))
    assert sim.record()["charged"] == 0


def test_key_never_reaches_ledger_logs_or_exports(tmp_path, write):
    key = "pd-live-SECRETKEY-0123456789"
    manifest = write("m.yaml", small_manifest(n_rows=3))
    sim = Simulator(SimConfig(api_key=key, render_seconds=0.02, error_rate=0.2, seed=3))
    log_path = tmp_path / "log.jsonl"
    handlers = setup_logging(True, str(log_path), key)
    try:
        to = api.target(simulate=sim)
        anyio.run(lambda: api.run_async(manifest, ledger=tmp_path / "l.db", to=to,
                                        options=RunOptions.of(out_dir=tmp_path / "o", expected_render=0.02)))
    finally:
        for h in handlers:
            logging.getLogger("batcher").removeHandler(h)
            h.close()
    logged = log_path.read_text()
    assert '"method": "POST"' in logged and key not in logged
    for path in tmp_path.glob("l.db*"):
        assert key.encode() not in path.read_bytes()
    with Ledger(tmp_path / "l.db") as led:
        buf = io.StringIO()
        export(led, None, "jsonl", buf)
        assert buf.getvalue() and key not in buf.getvalue()
        buf = io.StringIO()
        export(led, None, "csv", buf)
        assert key not in buf.getvalue()


def test_edited_manifest_does_not_submit_dropped_rows(simrun, write, tmp_path):
    first = write("m.yaml", small_manifest(n_rows=3))
    report, sim, ledger = simrun(first, budget=0)
    assert report.exit_code == 3 and sim.record()["charged"] == 0
    second = write("m.yaml", small_manifest(n_rows=2))
    report, sim, _ = simrun(second, ledger=ledger)
    assert len(sim.record()["jobs"]) == 2 and report.exit_code == 0


def test_ledger_file_is_valid_sqlite_after_run(simrun, write):
    _report, _, ledger = simrun(write("m.yaml", small_manifest(n_rows=2)))
    assert sqlite3.connect(ledger).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_clock_that_moves_between_two_reads_never_asks_for_a_negative_sleep(tmp_path, write):
    """The run reads the wall clock once per decision: a clock that jumps between two reads (a
    busy machine, a slow thread hop) must not turn a due poll into a negative sleep."""
    from batcher.client import PixelDojoClient
    from batcher.run import Runner
    from batcher.simulator import SimulatorTransport

    manifest = api.load(write("m.yaml", small_manifest(n_rows=20)))
    sim = Simulator(SimConfig(render_seconds=0.02))
    ticks = [time.time()]

    def jumpy() -> float:  # 7 ms later at every read, whatever really passed
        ticks[0] += 0.007
        return ticks[0]

    with Ledger(tmp_path / "l.db") as ledger:
        api.stage(ledger, manifest, simulated=True)

        async def go():
            async with PixelDojoClient("sim-key", "https://pixeldojo.ai", transport=SimulatorTransport(sim)) as c:
                opts = RunOptions.of(out_dir=tmp_path / "out", expected_render=0.02, concurrency=8)
                return await Runner(ledger, c, manifest.model, manifest.batch, opts, wall=jumpy).run()
        report = anyio.run(go)
    assert report.exit_code == 0 and report.counts["completed"] == 20


def test_a_job_taken_over_in_submitted_that_fails_remotely_is_submitted_again(simrun, write, tmp_path):
    manifest = write("m.yaml", small_manifest(n_rows=3))
    sim = Simulator(SimConfig(render_seconds=0.4, render_jitter=0.0, fail_rate=1.0))
    # The first run stops following its jobs before their renders end: they stay submitted.
    first, _, ledger_path = simrun(manifest, simulator=sim, job_timeout=0.05, max_attempts=2)
    assert first.counts["submitted"] == 3
    time.sleep(0.5)
    second, _, _ = simrun(manifest, simulator=sim, ledger=ledger_path, max_attempts=2)
    # each failed render is refunded and sent again while attempts remain; none is left pending
    assert second.counts["pending"] == 0 and second.counts["failed"] == 3
    assert len(sim.record()["jobs"]) == 6


def test_a_reservation_is_released_when_its_intent_cannot_be_written(tmp_path, write):
    """A runner resumed past its lease finds its job taken over: the intent is refused, and the
    credits it had reserved must be free again, or every submission waiting for room waits forever."""
    from batcher.client import PixelDojoClient
    from batcher.errors import LeaseLost
    from batcher.run.context import RunContext
    from batcher.run.submission import submit_once
    from batcher.simulator import SimulatorTransport
    from batcher.states import JobState

    manifest = api.load(write("m.yaml", small_manifest(n_rows=1)))
    with Ledger(tmp_path / "l.db") as ledger:
        api.stage(ledger, manifest, simulated=True)
        [mine] = ledger.write(ledger.claim(manifest.batch, [JobState.PENDING], "a:1:x", 60, 1))
        ledger.write(lambda conn: conn.exec_driver_sql("UPDATE job SET lease_until = 0"))  # our lease ran out
        ledger.write(ledger.claim(manifest.batch, [JobState.PENDING], "b:2:y", 60, 1))  # another runner took the job

        async def go():
            sim = Simulator(SimConfig())
            async with PixelDojoClient("sim-key", "https://pixeldojo.ai", transport=SimulatorTransport(sim)) as c:
                ctx = RunContext(ledger, c, manifest.model, manifest.batch, RunOptions.of(budget=100))
                async with anyio.create_task_group() as tg:
                    tg.start_soon(ctx.writer.run)
                    async with ctx.reserve(20) as reservation:
                        assert reservation
                        with pytest.raises(LeaseLost):
                            await submit_once(ctx, mine, manifest.model.to_wire(mine.parameters()), reservation)
                    ctx.writer.close()
                return ctx.budget
        budget = anyio.run(go)
    assert budget.reservations == 0 and budget.reserved == 0


def test_a_run_under_budget_0_only_stages_and_checks_nothing(simrun, write):
    """`--budget 0` can never send (its committed total never falls below zero): the checks before
    spending (live schema, references, uploads) are skipped; a budget that covers nothing now, but
    could after a refund, keeps them."""
    from batcher.simulator import SimConfig
    manifest = write("m.yaml", small_manifest(n_rows=3))
    report, sim, _ = simrun(manifest, SimConfig(render_seconds=0.01), budget=0)
    record = sim.record()
    assert report.counts.get("pending") == 3 and report.exit_code == 3
    assert not {"model", "schema", "run"} & set(record["requests"])
    report, sim, _ = simrun(manifest, SimConfig(render_seconds=0.01), budget=1)
    assert report.counts.get("pending") == 3 and report.exit_code == 3
    assert {"model", "schema"} & set(sim.record()["requests"])  # the live schema was checked
    assert "run" not in sim.record()["requests"]
