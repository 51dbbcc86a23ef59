"""What a hostile test broke in runs, one test per promise: no video lost or overwritten, no
runner deleting another's downloads, simulated clips never passing for real ones, a paid job the
API forgets held (not paid again), and budgets that lying answers or other runners cannot pass."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from batcher import api
from batcher.errors import SimulationMismatch
from batcher.ledger import Ledger
from batcher.outputs import sweep_temp_files, temp_name
from batcher.simulator import SimConfig, Simulator, SimulatorTransport

from .conftest import small_manifest

COLLIDING = """
version: 1
batch: coll
rows:
  - prompt: "shot {i}"
    references: [https://example.com/a.png]
    duration: 3
    vary: {i: [61970, 83791]}
"""


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_jobs_whose_keys_share_a_prefix_keep_both_videos(simrun, write):
    # These two keys agree in their first 32 bits: short-key file names used to collide.
    report, sim, ledger_path = simrun(write("coll.yaml", COLLIDING))
    assert report.counts["completed"] == 2
    with Ledger(ledger_path) as ledger:
        jobs = list(ledger.iter_batch("coll"))
    assert jobs[0].key[:8] == jobs[1].key[:8]
    paths = {Path(j.file_path) for j in jobs}
    assert len(paths) == 2
    for job in jobs:
        assert Path(job.file_path).read_bytes() == sim.clip(job.remote_job_id)
        assert _sha(Path(job.file_path)) == job.sha256


def test_rerun_downloads_again_a_completed_video_whose_content_changed(simrun, write):
    manifest = write("m.yaml", small_manifest(n_rows=3))
    sim = Simulator(SimConfig(render_seconds=0.02))
    simrun(manifest, simulator=sim)
    ledger_path = manifest.parent / "ledger.db"
    with Ledger(ledger_path) as ledger:
        victim = list(ledger.iter_batch("small"))[1]
    # Same size, other bytes: an existence (or size) check would not notice.
    data = bytearray(Path(victim.file_path).read_bytes())
    data[-1] ^= 0xFF
    Path(victim.file_path).write_bytes(bytes(data))
    report, sim, _ = simrun(manifest, simulator=sim)
    assert report.exit_code == 0 and report.completed == 1
    assert len(sim.record()["jobs"]) == 3  # downloaded again, not rendered (or paid) again
    with Ledger(ledger_path) as ledger:
        job = ledger.get(victim.id)
        kinds = [e.kind for e in ledger.events(victim.id)]
    assert job.state == "completed" and _sha(Path(job.file_path)) == job.sha256
    assert Path(job.file_path).read_bytes() == sim.clip(job.remote_job_id)
    assert "file-mismatch" in kinds


def test_publish_never_replaces_another_jobs_video(simrun, write, tmp_path):
    # Two batches with the same request share an output folder: same key, same file name.
    one = write("one.yaml", small_manifest(n_rows=1).replace("batch: small", "batch: one"))
    two = write("two.yaml", small_manifest(n_rows=1).replace("batch: small", "batch: two"))
    out = tmp_path / "shared"
    sim = Simulator(SimConfig(render_seconds=0.02))
    simrun(one, out_dir=out, simulator=sim)
    simrun(two, out_dir=out, simulator=sim)
    with Ledger(tmp_path / "ledger.db") as ledger:
        a, b = next(iter(ledger.iter_batch("one"))), next(iter(ledger.iter_batch("two")))
    assert a.key == b.key and a.remote_job_id != b.remote_job_id
    assert a.file_path != b.file_path
    assert Path(a.file_path).read_bytes() == sim.clip(a.remote_job_id)
    assert Path(b.file_path).read_bytes() == sim.clip(b.remote_job_id)


def test_start_of_run_removes_only_temporary_files_of_dead_processes(tmp_path):
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        mine = tmp_path / temp_name("row0001_t1_abc.mp4", 1)
        theirs = tmp_path / mine.name.replace(f".{os.getpid()}-", f".{alive.pid}-")
        stale = tmp_path / mine.name.replace(f".{os.getpid()}-", f".{dead.pid}-")
        other_host = tmp_path / f".row0001_t1_abc.mp4.elsewhere.{dead.pid}-1.part"
        for path in (mine, theirs, stale, other_host):
            path.write_bytes(b"partial")
        assert sweep_temp_files(tmp_path) == 1
        assert not stale.exists()
        assert mine.exists() and theirs.exists() and other_host.exists()
    finally:
        alive.kill()
        alive.wait()


class VanishingTemp(httpx.AsyncBaseTransport):
    """Serves the simulator; while the first video streams, removes every temporary download in
    `folder`, as a careless runner beside us would."""

    def __init__(self, sim: Simulator, folder: Path):
        self.inner = SimulatorTransport(sim)
        self.folder = folder
        self.struck = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if "/pixeldojotemp/" not in request.url.path or self.struck:
            return response
        self.struck += 1
        body = response.content
        folder = self.folder

        async def stream():
            yield body[:100]
            for part in folder.glob(".*.part"):
                part.unlink()
            yield body[100:]
        return httpx.Response(response.status_code, headers=response.headers, content=stream(), request=request)


def test_a_vanished_temporary_file_is_downloaded_again_not_a_crash(tmp_path, write):
    import anyio

    from batcher.policy import RetryPolicy
    from batcher.run import RunOptions
    manifest = write("m.yaml", small_manifest(n_rows=2))
    sim = Simulator(SimConfig(render_seconds=0.02))
    out = tmp_path / "out"
    transport = VanishingTemp(sim, out)
    to = api.Target(sim.config.api_key, "https://pixeldojo.ai", transport, sim)
    fast = RetryPolicy(base=0.01, cap=0.05, max_attempts=6)
    opts = RunOptions.of(out_dir=out, expected_render=0.02, retry=fast, submit_retry=fast, seed=1)
    report = anyio.run(lambda: api.run_async(manifest, ledger=tmp_path / "l.db", options=opts, to=to))
    assert transport.struck == 1
    assert report.exit_code == 0 and report.counts["completed"] == 2
    with Ledger(tmp_path / "l.db") as ledger:
        events = [e for j in ledger.iter_batch("small") for e in ledger.events(j.id)]
    assert any(e.kind == "download-retry" and "vanished" in (e.detail or "") for e in events)


# --- simulated and real results never mix -------------------------------------------------------

def _cli(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, **(env or {})}
    full.pop("PIXELDOJO_API_KEY", None)
    full.pop("BATCHER_LEDGER", None)
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "batcher", *args], cwd=cwd, env=full, capture_output=True,
                          text=True, timeout=120)


def test_simulated_run_ignores_the_real_ledger_named_in_the_environment(tmp_path, write):
    manifest = write("m.yaml", small_manifest(n_rows=2))
    done = _cli(["run", str(manifest), "--simulate", "--sim-render-seconds", "0.02"], tmp_path,
                {"BATCHER_LEDGER": "real.db"})
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "real.db").exists()
    assert (tmp_path / "batcher-sim.db").exists()


def test_real_run_refuses_a_simulated_batch_and_names_the_way_out(tmp_path, write):
    manifest = write("m.yaml", small_manifest(n_rows=2))
    done = _cli(["run", str(manifest), "--simulate", "--sim-render-seconds", "0.02", "--ledger", "mixed.db"],
                tmp_path)
    assert done.returncode == 0, done.stderr
    sim = _cli(["run", str(manifest), "--ledger", "mixed.db", "--api-base", "http://127.0.0.1:9"], tmp_path,
               {"PIXELDOJO_API_KEY": "real-key"})
    assert sim.returncode == 2
    lines = sim.stderr.strip().splitlines()
    assert len(lines) == 1 and "simulated" in lines[0] and "--ledger" in lines[0]
    assert "Traceback" not in sim.stderr


def test_ledger_refuses_to_mix_simulated_and_real_results(tmp_path, write):
    manifest = api.load(write("m.yaml", small_manifest(n_rows=2)))
    with Ledger(tmp_path / "l.db") as ledger:
        api.stage(ledger, manifest)  # staged for a real run, nothing submitted yet
        api.stage(ledger, manifest, simulated=True)  # nothing rendered: the batch may change sides
        assert ledger.is_simulated("small")
    simulate = Simulator(SimConfig(render_seconds=0.01))
    import anyio

    from batcher.run import RunOptions
    opts = RunOptions.of(out_dir=tmp_path / "out", expected_render=0.01)
    anyio.run(lambda: api.run_async(manifest, ledger=tmp_path / "l.db", options=opts,
                                    to=api.target(simulate=simulate)))
    with Ledger(tmp_path / "l.db") as ledger, pytest.raises(SimulationMismatch, match="simulated"):
        api.stage(ledger, manifest, simulated=False)


def test_exports_status_and_gallery_mark_simulated_results(tmp_path, write):
    manifest = write("m.yaml", small_manifest(n_rows=2))
    assert _cli(["run", str(manifest), "--simulate", "--sim-render-seconds", "0.02"], tmp_path).returncode == 0
    ledger = ["--ledger", "batcher-sim.db"]
    records = [json.loads(line) for line in _cli(["export", str(manifest), *ledger], tmp_path).stdout.splitlines()]
    assert records and all(r["simulated"] is True for r in records)
    status = _cli(["status", str(manifest), *ledger], tmp_path).stdout
    assert "SIMULATED" in status.splitlines()[0]
    assert json.loads(_cli(["status", str(manifest), *ledger, "--json"], tmp_path).stdout)["simulated"] is True
    assert _cli(["export", str(manifest), *ledger, "--format", "videofolder", "--out", "ds"], tmp_path).returncode == 0
    meta = [json.loads(line) for line in (tmp_path / "ds" / "metadata.jsonl").read_text().splitlines()]
    assert meta and all(m["simulated"] is True for m in meta)
    assert _cli(["report", str(manifest), *ledger, "-o", "r.html"], tmp_path).returncode == 0
    assert "SIMULATED" in (tmp_path / "r.html").read_text()


# --- budgets ----------------------------------------------------------------------------------------

def test_a_runner_keeps_to_its_own_budget_whatever_other_runners_were_given(tmp_path, write):
    import re

    import anyio

    from batcher.run import RunOptions
    manifest = api.load(write("m.yaml", small_manifest(n_rows=40)))  # 20 credits a job
    ledger_path = tmp_path / "l.db"
    with Ledger(ledger_path) as ledger:
        api.stage(ledger, manifest, simulated=True)
    sim = Simulator(SimConfig(render_seconds=0.05))
    to = api.target(simulate=sim)

    async def both() -> list:
        reports: list = []

        async def one(budget: float, concurrency: int, delay: float = 0.0) -> None:
            await anyio.sleep(delay)  # the small budget starts first, so both runners submit
            opts = RunOptions.of(out_dir=tmp_path / f"out{budget:g}", budget=budget, concurrency=concurrency,
                              expected_render=0.05)
            reports.append(await api.run_async(manifest, ledger=ledger_path, options=opts, to=to, stage_jobs=False))
        async with anyio.create_task_group() as tg:
            tg.start_soon(one, 100.0, 6)
            tg.start_soon(one, 1000.0, 6, 0.05)
        return reports
    anyio.run(both)
    with Ledger(ledger_path) as ledger:
        intents = [e.detail for j in ledger.iter_batch("small") for e in ledger.events(j.id)
                   if e.kind == "submit-intent"]
        spent = ledger.spend("small").spent
    small = [d for d in intents if d.endswith("of budget 100")]
    assert small, "the runner with budget 100 submitted nothing: the race was not exercised"
    for detail in small:
        total = float(re.search(r"batch total ([\d.]+)", detail).group(1))
        assert total <= 100
    assert spent <= 1000


def test_a_runner_with_a_smaller_budget_submits_nothing_once_others_spent_past_it(tmp_path, write):
    manifest = write("m.yaml", small_manifest(n_rows=10))
    sim = Simulator(SimConfig(render_seconds=0.02))
    ledger_path = tmp_path / "l.db"
    import anyio

    from batcher.run import RunOptions

    def run(budget: float, n_jobs_manifest: Path) -> object:
        opts = RunOptions.of(out_dir=tmp_path / "out", budget=budget, expected_render=0.02, concurrency=4)
        return anyio.run(lambda: api.run_async(n_jobs_manifest, ledger=ledger_path, options=opts,
                                               to=api.target(simulate=sim)))
    big = run(120.0, manifest)  # 6 of 10 jobs
    assert big.counts["completed"] == 6
    small = run(100.0, manifest)
    assert small.submitted == 0 and small.exit_code == 3
    assert len(sim.record()["jobs"]) == 6
    status = _cli(["status", str(manifest), "--ledger", str(ledger_path)], tmp_path).stdout
    assert "120 committed of a budget of 100" in status


# --- a paid job the API forgets -------------------------------------------------------------------

class ForgetfulApi(httpx.AsyncBaseTransport):
    """The simulator, except that status polls of the first `forget` jobs answer 404."""

    def __init__(self, sim: Simulator, forget: int):
        self.inner = SimulatorTransport(sim)
        self.forget = forget
        self.forgotten: set[str] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.startswith("/api/v1/jobs/"):
            job_id = path.rsplit("/", 1)[-1]
            if job_id in self.forgotten or len(self.forgotten) < self.forget:
                self.forgotten.add(job_id)
                return httpx.Response(404, json={"error": {"code": "not_found", "message": f"Job {job_id} not found"}},
                                      request=request)
        return await self.inner.handle_async_request(request)


def test_a_paid_job_the_api_no_longer_knows_is_held_not_paid_again(tmp_path, write):
    import time

    import anyio

    from batcher.run import RunOptions, polling
    manifest = write("m.yaml", small_manifest(n_rows=3))
    sim = Simulator(SimConfig(render_seconds=0.02))
    transport = ForgetfulApi(sim, forget=1)
    to = api.Target(sim.config.api_key, "https://pixeldojo.ai", transport, sim)
    opts = RunOptions.of(out_dir=tmp_path / "out", expected_render=0.02, concurrency=1)

    async def run_at(later: float):  # the ledger's clock `later` seconds ahead
        with Ledger(tmp_path / "l.db", clock=lambda: time.time() + later) as ledger:
            return await api.run_async(manifest, ledger=ledger, options=opts, to=to)
    # Forgotten in one run, it stays submitted; forgotten again in a run NOT_FOUND_SECONDS later, it is held.
    report = anyio.run(run_at, 0.0)
    assert report.counts["submitted"] == 1 and report.counts["unknown"] == 0 and report.exit_code == 1
    report = anyio.run(run_at, polling.NOT_FOUND_SECONDS + 1)
    assert report.counts["unknown"] == 1 and report.counts["failed"] == 0 and report.exit_code == 1
    assert any("lost by the API" in m for m in report.messages)
    with Ledger(tmp_path / "l.db") as ledger:
        held = next(j for j in ledger.iter_batch("small") if j.state == "unknown")
        assert "no longer knows" in held.error and "retry --unknown" in held.error
        assert ledger.spend("small").spent == 60  # the lost job's 20 credits stay spent
        assert ledger.lost_jobs("small") == 1
    # `retry --failed` has nothing to pay for again; a rerun does not resubmit the held job.
    report = anyio.run(lambda: api.run_async(manifest, ledger=tmp_path / "l.db", options=opts, to=to))
    assert len(sim.record()["jobs"]) == 3 and report.counts["unknown"] == 1
    status = _cli(["status", str(manifest), "--ledger", str(tmp_path / "l.db")], tmp_path).stdout
    assert "1 of them paid, then no longer known to the API" in status and "retry --unknown" in status


# --- simulated runs resume like real ones -----------------------------------------------------------

@pytest.mark.parametrize("signame", ["SIGINT", "SIGKILL"])
def test_interrupted_simulated_run_resumes_at_the_cost_of_an_uninterrupted_one(tmp_path, write, signame):
    import signal
    import time

    from batcher.ledger import read_states
    manifest = write("m.yaml", small_manifest(n_rows=8))
    args = [sys.executable, "-m", "batcher", "run", str(manifest), "--simulate", "--sim-render-seconds", "1.0",
            "-c", "4"]
    env = {k: v for k, v in os.environ.items() if k not in ("BATCHER_LEDGER", "PIXELDOJO_API_KEY")}
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states = read_states(tmp_path / "batcher-sim.db", "small") or {}
        if list(states.values()).count("submitted") >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(getattr(signal, signame))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == (130 if signame == "SIGINT" else -9), err
    states = read_states(tmp_path / "batcher-sim.db", "small")
    assert list(states.values()).count("completed") < 8
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    with Ledger(tmp_path / "batcher-sim.db") as ledger:
        assert ledger.counts("small")["completed"] == 8
        assert ledger.spend("small").spent == 8 * 20  # each clip paid once, as in an uninterrupted run
    journal = (tmp_path / "batcher-sim.db.simulator.jsonl").read_text().splitlines()
    assert sum(1 for line in journal if '"job"' in line) == 8


# --- interrupted while staging ------------------------------------------------------------------------

@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_signal_while_a_large_manifest_is_staged_exits_130_with_one_line(tmp_path, write, signame):
    import signal
    import sqlite3
    import time
    manifest = write("big.yaml", """
        version: 1
        batch: big
        rows:
          - prompt: "shot {a} {b}"
            references: [https://example.com/a.png]
            vary: {a: [%s], b: [%s]}
        """ % (", ".join(map(str, range(400))), ", ".join(map(str, range(500)))))  # noqa: UP031 - the YAML's braces read better unescaped
    env = {k: v for k, v in os.environ.items() if k not in ("BATCHER_LEDGER",)}
    env["PIXELDOJO_API_KEY"] = "k"
    proc = subprocess.Popen([sys.executable, "-m", "batcher", "run", str(manifest), "--budget", "0",
                             "--ledger", "l.db", "--api-base", "http://127.0.0.1:9"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "l.db").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)  # well into adding 200,000 jobs
    proc.send_signal(getattr(signal, signame))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0], err
    assert "Aborted" not in err and "Traceback" not in err
    conn = sqlite3.connect(tmp_path / "l.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT COUNT(*) FROM job").fetchone()[0] in (0, 200_000)
    conn.close()


class LyingCost(httpx.AsyncBaseTransport):
    """The simulator, except that every submit answer claims the charge was `cost`."""

    def __init__(self, sim: Simulator, cost: object):
        self.inner = SimulatorTransport(sim)
        self.cost = cost

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "POST" and response.status_code == 202:
            body = json.loads(response.content)
            body["creditCost"] = self.cost
            return httpx.Response(202, content=json.dumps(body).encode(),  # NaN written as NaN, as a lying API might
                                  headers={"content-type": "application/json"}, request=request)
        return response


@pytest.mark.parametrize("cost", [-100, "free", None, float("nan")], ids=["negative", "text", "null", "nan"])
def test_a_cost_that_cannot_be_believed_does_not_get_around_the_budget(tmp_path, write, cost):
    import anyio

    from batcher.run import RunOptions
    manifest = write("m.yaml", small_manifest(n_rows=10))  # 20 credits a job by estimate
    sim = Simulator(SimConfig(render_seconds=0.02))
    transport = LyingCost(sim, cost)
    to = api.Target(sim.config.api_key, "https://pixeldojo.ai", transport, sim)
    opts = RunOptions.of(out_dir=tmp_path / "out", expected_render=0.02, budget=50, concurrency=2)
    report = anyio.run(lambda: api.run_async(manifest, ledger=tmp_path / "l.db", options=opts, to=to))
    assert report.exit_code == 3
    assert len(sim.record()["jobs"]) == 2  # 2 x 20 fits in 50; a third would not
    assert report.spent == 40
    with Ledger(tmp_path / "l.db") as ledger:
        assert ledger.jobs_with_event("small", "cost-untrusted") == 2
        job = next(j for j in ledger.iter_batch("small") if j.remote_job_id)
        detail = next(e.detail for e in ledger.events(job.id) if e.kind == "cost-untrusted")
    assert "not a believable charge" in detail and "estimate 20" in detail
    status = _cli(["status", str(manifest), "--ledger", str(tmp_path / "l.db")], tmp_path).stdout
    assert "2 job(s) were answered with a creditCost that cannot be believed" in status


class YearLongRetryAfter(httpx.AsyncBaseTransport):
    """The simulator, except that the first status poll is answered 429 with a year's Retry-After."""

    def __init__(self, sim: Simulator):
        self.inner = SimulatorTransport(sim)
        self.sent = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/api/v1/jobs/") and not self.sent:
            self.sent += 1
            return httpx.Response(429, json={"error": {"code": "rate_limited", "message": "slow down"}},
                                  headers={"retry-after": "31536000"}, request=request)
        return await self.inner.handle_async_request(request)


def test_a_year_long_retry_after_is_capped_and_the_run_says_so(tmp_path, write):
    import time

    import anyio

    from batcher.run import RunOptions
    manifest = write("m.yaml", small_manifest(n_rows=2))
    sim = Simulator(SimConfig(render_seconds=0.02))
    transport = YearLongRetryAfter(sim)
    to = api.Target(sim.config.api_key, "https://pixeldojo.ai", transport, sim)
    opts = RunOptions.of(out_dir=tmp_path / "out", expected_render=0.02, max_retry_after=0.2)
    started = time.monotonic()
    report = anyio.run(lambda: api.run_async(manifest, ledger=tmp_path / "l.db", options=opts, to=to))
    assert transport.sent == 1 and report.exit_code == 0
    assert time.monotonic() - started < 30
    assert any("asked to wait 31,536,000s" in m and "waiting 0.2s" in m for m in report.messages)


def test_run_takes_max_jobs_and_stages_past_the_default_when_told(tmp_path, write):
    manifest = write("m.yaml", small_manifest(n_rows=3))
    refused = _cli(["run", str(manifest), "--simulate", "--max-jobs", "2"], tmp_path)
    assert refused.returncode == 2 and "--max-jobs" in refused.stderr and "Traceback" not in refused.stderr
    done = _cli(["run", str(manifest), "--simulate", "--sim-render-seconds", "0.02", "--max-jobs", "3"], tmp_path)
    assert done.returncode == 0, done.stderr
    with Ledger(tmp_path / "batcher-sim.db") as ledger, pytest.raises(Exception, match="max-jobs"):
        api.stage(ledger, api.load(manifest), max_jobs=2)


# --- found by a hostile review of the fixes ------------------------------------------------------------

def test_a_rate_below_the_real_price_costs_one_job_past_the_budget_not_a_wave(tmp_path, write):
    manifest = write("m.yaml", small_manifest(n_rows=20))  # the simulator charges 20 a job
    done = _cli(["run", str(manifest), "--simulate", "--sim-render-seconds", "0.02", "--budget", "30",
                 "--rate", "720p=0.4", "-c", "8", "--json"], tmp_path)
    data = json.loads(done.stdout)
    assert data["exit_code"] == 3
    # the first job, estimated at 2, is charged 20; after it every job is estimated at 20
    assert data["credits_spent"] <= 30 + 20


def test_another_ledgers_videos_in_a_shared_folder_are_never_replaced(tmp_path, write):
    manifest = write("m.yaml", small_manifest(n_rows=3))
    common = ["run", str(manifest), "--simulate", "--sim-render-seconds", "0.02", "--out", "shared"]
    assert _cli([*common, "--ledger", "a.db"], tmp_path).returncode == 0
    before = {p.name: _sha(p) for p in (tmp_path / "shared").glob("*.mp4")}
    assert _cli([*common, "--ledger", "b.db"], tmp_path).returncode == 0
    after = {p.name: _sha(p) for p in (tmp_path / "shared").glob("*.mp4")}
    assert len(after) == 6 and all(after[name] == sha for name, sha in before.items())
    for name in ("a.db", "b.db"):
        with Ledger(tmp_path / name) as ledger:
            for job in ledger.iter_batch("small"):
                assert _sha(Path(job.file_path)) == job.sha256
    assert _cli([*common, "--ledger", "a.db"], tmp_path).returncode == 0  # nothing to repair
    assert {p.name: _sha(p) for p in (tmp_path / "shared").glob("*.mp4")} == after


def test_a_video_that_cannot_be_saved_leaves_the_job_for_the_next_run(tmp_path, write):
    manifest = write("m.yaml", small_manifest(n_rows=2))
    common = ["run", str(manifest), "--simulate", "--sim-render-seconds", "0.02", "--out", "out"]
    assert _cli(common, tmp_path).returncode == 0
    with Ledger(tmp_path / "batcher-sim.db") as ledger:
        victim = next(iter(ledger.iter_batch("small")))
    path = Path(victim.file_path)
    path.unlink()
    path.mkdir()  # a directory in the video's way
    done = _cli(common, tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "could not be saved" in done.stdout
    path.rmdir()
    assert _cli(common, tmp_path).returncode == 0


class PollsAnswer(httpx.AsyncBaseTransport):
    """The simulator, except that every status poll gets the same answer."""

    def __init__(self, sim: Simulator, status: int, headers: dict[str, str] | None = None):
        self.inner = SimulatorTransport(sim)
        self.status, self.headers = status, headers or {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/api/v1/jobs/"):
            return httpx.Response(self.status, json={"error": {"code": "insufficient_credits", "message": "no"}},
                                  headers=self.headers, request=request)
        return await self.inner.handle_async_request(request)


@pytest.mark.parametrize("status,headers", [(402, {}), (429, {"retry-after": "1"})], ids=["402", "429"])
def test_polls_that_never_succeed_end_the_job_for_this_run_not_the_run(tmp_path, write, status, headers):
    import anyio

    from batcher.policy import RetryPolicy
    from batcher.run import RunOptions
    manifest = write("m.yaml", small_manifest(n_rows=2))
    sim = Simulator(SimConfig(render_seconds=0.02))
    to = api.Target(sim.config.api_key, "https://pixeldojo.ai", PollsAnswer(sim, status, headers), sim)
    fast = RetryPolicy(base=0.01, cap=0.05, max_attempts=3)
    opts = RunOptions.of(out_dir=tmp_path / "out", expected_render=0.02, job_timeout=1.5, retry=fast,
                         max_retry_after=0.2)
    report = anyio.run(lambda: api.run_async(manifest, ledger=tmp_path / "l.db", options=opts, to=to))
    assert report.exit_code == 1 and report.counts["submitted"] == 2  # polled again by the next run
    assert report.stop_reason is None


def test_the_python_api_keeps_simulated_runs_out_of_the_real_ledger(tmp_path, monkeypatch, write):
    monkeypatch.chdir(tmp_path)
    manifest = write("m.yaml", small_manifest(n_rows=1))
    api.run(manifest, simulate=True)
    assert (tmp_path / "batcher-sim.db").exists() and not (tmp_path / "batcher.db").exists()


def test_a_real_batch_named_simulated_does_not_land_among_simulated_runs(tmp_path, write):
    manifest = write("m.yaml", small_manifest(n_rows=1).replace("batch: small", "batch: simulated"))
    done = _cli(["run", str(manifest), "--api-base", "http://127.0.0.1:9"], tmp_path, {"PIXELDOJO_API_KEY": "k"})
    assert done.returncode == 2 and "rename the batch" in done.stderr and "Traceback" not in done.stderr
