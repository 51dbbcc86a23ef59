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
from batcher.files import sweep_temp_files, temp_name
from batcher.ledger import Ledger
from batcher.simulator import SimConfig, Simulator, SimulatorTransport, clip_for

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
        assert Path(job.file_path).read_bytes() == clip_for(job.remote_job_id)
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
    assert Path(job.file_path).read_bytes() == clip_for(job.remote_job_id)
    assert "file-mismatch" in kinds


def test_publish_never_replaces_another_jobs_video(simrun, write, tmp_path):
    # Two batches with the same request share an output folder: same key, same file name.
    one = write("one.yaml", small_manifest(n_rows=1).replace("batch: small", "batch: one"))
    two = write("two.yaml", small_manifest(n_rows=1).replace("batch: small", "batch: two"))
    out = tmp_path / "shared"
    simrun(one, out_dir=out)
    simrun(two, out_dir=out)
    with Ledger(tmp_path / "ledger.db") as ledger:
        a, b = list(ledger.iter_batch("one"))[0], list(ledger.iter_batch("two"))[0]
    assert a.key == b.key and a.remote_job_id != b.remote_job_id
    assert a.file_path != b.file_path
    assert Path(a.file_path).read_bytes() == clip_for(a.remote_job_id)
    assert Path(b.file_path).read_bytes() == clip_for(b.remote_job_id)


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
    from batcher.pool import RunOptions
    manifest = write("m.yaml", small_manifest(n_rows=2))
    sim = Simulator(SimConfig(render_seconds=0.02))
    out = tmp_path / "out"
    transport = VanishingTemp(sim, out)
    to = api.Target(sim.config.api_key, "https://pixeldojo.ai", transport, sim)
    fast = RetryPolicy(base=0.01, cap=0.05, max_attempts=6)
    opts = RunOptions(out_dir=out, expected_render=0.02, retry=fast, submit_retry=fast, seed=1)
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

    from batcher.pool import RunOptions
    opts = RunOptions(out_dir=tmp_path / "out", expected_render=0.01)
    anyio.run(lambda: api.run_async(manifest, ledger=tmp_path / "l.db", options=opts,
                                    to=api.target(simulate=simulate)))
    with Ledger(tmp_path / "l.db") as ledger:
        with pytest.raises(SimulationMismatch, match="simulated"):
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
