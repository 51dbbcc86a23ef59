"""`batcher bench stage`: staging a large manifest and the commands around it, as users meet them.

- plan and add `stage_jobs` jobs to a new ledger in a fresh process (seconds, peak memory), then
  `status` in-process and as a command, and `plan --json --ledger` as a command;
- `batcher run M --budget 0 --ledger L.db` beside `batcher plan M --json` on the same manifest
  (`manifest_text(run_jobs)`), each a whole process, timed from start to exit, and the floor's
  insert, taken in turn (five times), medians. The run goes to `batcher simulator` in its own
  process over loopback (its live schema, preflight) and stops before spending (exit 3). The
  staging target: the run within RUN_TARGET (1.2) x the floor;
- the floor, for any run that keeps the design (jobs as rows of a durable SQLite ledger, its
  schema in SQLModel): the plan, plus the run's own 104,000 rows inserted again by bare `sqlite3`
  into a fresh file with the ledger's schema (one transaction, WAL, `synchronous=FULL`, SQLite's
  default settings otherwise, no SQLAlchemy, no batcher; in this process), plus what importing
  SQLModel and SQLAlchemy adds to a process that imported what `plan` does; floor / plan is the
  least ratio to plan such a run can reach;
- start-up: `batcher --version` beside `python -c "import httpx, click, yaml"` (target 2 x).

`batcher bench rerun` (`rerun_section`): the start-up of a rerun of a finished batch. A ledger holds
`jobs` completed jobs (staged as a run stages them, then marked completed by bare sqlite3 in one
transaction), each with a small real file in the output folder, its size, sha256 and modification
time recorded as a verified download records them. `batcher run M --ledger L --out DIR --budget 0`
then runs as its own process (against `batcher simulator` over loopback; nothing is pending, so
nothing is sent), timed from start to exit: with the quick check (sizes and modification times)
and with `--verify full` (every file hashed again), taken in turn, medians. Small files: the
check's cost is counted in files (a full check of real clips adds their bytes at hashing speed).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from ..api import stage
from ..ledger import Ledger
from ..ledger.dialect import BULK_CACHE_KIB, PAGE_SIZE
from ..manifest.document import load_manifest
from ..outputs.bucket import BucketOutputs
from ..outputs.files import video_name
from .oracle import manifest_text
from .whole import SIM_KEY, start_simulator, timed

RUN_TARGET = 1.2  # batcher run --budget 0 within this many times the floor (plan + bare insert + imports)
STARTUP_TARGET = 2.0  # batcher --version within this many times importing what it needs
STATUS_TARGET = 1.0  # seconds for `status` on the staged jobs, as a command
RERUN_TARGET = 5.0  # seconds for a rerun of 60,000 completed jobs to start (and end), quick check
BATCHER = [sys.executable, "-m", "batcher"]
IMPORTS = [sys.executable, "-c", "import httpx, click, yaml"]
# What importing the ledger's libraries adds to a process that has imported what `plan` imports.
LEDGER_IMPORTS = [sys.executable, "-c", "import time, batcher.cli, batcher.cli.plans, batcher.plan.staging; "
                  "t = time.perf_counter(); import sqlalchemy, sqlmodel; print(time.perf_counter() - t)"]
# Every column the run's staging writes (the row's data and its manifest mark too): the floor
# inserts the run's own rows, whole.
_JOB_COLUMNS = ("batch, key, seq, generation, row, take, origin, label, params, estimate, created_at, updated_at, "
                "model, row_data, manifest_generation")

_STAGE_SCRIPT = """
import json, resource, sys, time
from batcher.api import stage, status
from batcher.ledger import Ledger
from batcher.manifest.document import load_manifest
t = time.monotonic()
m = load_manifest(sys.argv[1])
with Ledger(sys.argv[2]) as led:
    added, known, _ = stage(led, m)
t_stage = time.monotonic() - t
t = time.monotonic()
with Ledger(sys.argv[2]) as led:
    s = status(led, m.batch)
t_status = time.monotonic() - t
print(json.dumps({"added": added, "stage_seconds": t_stage, "status_seconds": t_status,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "jobs": s["jobs"]}))
"""


def wall(argv: list[str], *, env: dict[str, str] | None = None, ok: tuple[int, ...] = (0,)) -> float:
    """Seconds from a command's start to its exit; an exit status not in `ok` raises."""
    started, exited, _, _ = timed(argv, None, env, ok)
    return exited - started


def bench_stage(jobs: int, runs: int = 3, workdir: Path | None = None) -> dict[str, Any]:
    """Plan and add `jobs` jobs to a new ledger in a fresh process; then `status` and `plan` on it."""
    work = workdir or Path(tempfile.mkdtemp(prefix="batcher-bench-"))
    path, ledger = work / f"stage-{jobs}.yaml", str(work / "stage.db")
    path.write_text(manifest_text(jobs, batch="stage"))
    out = subprocess.run([sys.executable, "-c", _STAGE_SCRIPT, str(path), ledger], capture_output=True, text=True,
                         check=True)
    result = json.loads(out.stdout)
    status = [wall([*BATCHER, "status", "--ledger", ledger, "--json"]) for _ in range(runs)]
    result["status_cli_seconds"] = statistics.median(status)
    result["plan_cli_seconds"] = wall([*BATCHER, "plan", str(path), "--json", "--ledger", ledger])
    return result


def run_beside_plan(jobs: int, runs: int = 5, workdir: Path | None = None) -> dict[str, Any]:
    """`batcher run M --budget 0` (a new ledger each time) and `batcher plan M --json`, whole
    process, and the floor's bare insert, taken in turn (a shared machine's disk and CPU change
    over seconds: each measurement of the ratio's three parts sees the same); their medians."""
    work = workdir or Path(tempfile.mkdtemp(prefix="batcher-bench-"))
    manifest = work / f"run-{jobs}.yaml"
    manifest.write_text(manifest_text(jobs))
    sim, url = start_simulator(0.0, 0.0, 1)
    env = {**os.environ, "PIXELDOJO_API_KEY": SIM_KEY}
    run_times, plan_times, insert_times, tuned_times = [], [], [], []
    floor: _Floor | None = None
    try:
        for i in range(runs):
            run_times.append(wall([*BATCHER, "run", str(manifest), "--budget", "0", "--ledger", str(work / f"l{i}.db"),
                                   "--api-base", url, "--out", str(work / f"out{i}")], env=env, ok=(3,)))
            plan_times.append(wall([*BATCHER, "plan", str(manifest), "--json"]))
            floor = floor or _Floor(work / "l0.db")
            insert_times.append(floor.insert(work / f"floor{i}.db"))
            tuned_times.append(floor.insert(work / f"tuned{i}.db", tuned=True))
    finally:
        sim.terminate()
        sim.wait(timeout=10)
    assert floor is not None  # (runs >= 1)
    imports = [float(subprocess.run(LEDGER_IMPORTS, capture_output=True, text=True, check=True).stdout)
               for _ in range(max(5, runs))]
    run, plan = statistics.median(run_times), statistics.median(plan_times)
    least = plan + statistics.median(insert_times) + statistics.median(imports)
    tuned = plan + statistics.median(tuned_times) + statistics.median(imports)
    return {"jobs": jobs, "runs": runs, "run_seconds": run, "plan_seconds": plan, "ratio": run / plan,
            "floor_ratio": run / least, "target": RUN_TARGET, "run_each": run_times, "plan_each": plan_times,
            "floor": {"rows": floor.inserted(work / "floor0.db"), "insert_seconds": statistics.median(insert_times),
                      "imports_seconds": statistics.median(imports), "insert_each": insert_times,
                      "seconds": least, "least_ratio": least / plan},
            # the same floor with the ledger's own page settings: what is left once those are taken
            "tuned_floor": {"insert_seconds": statistics.median(tuned_times), "insert_each": tuned_times,
                            "seconds": tuned, "run_ratio": run / tuned}}


class _Floor:
    """What any run writing the jobs of a ledger as rows of a durable SQLite ledger must spend
    beyond a plan: bare sqlite3 inserting them into a fresh file with the same schema (one
    transaction, WAL, synchronous=FULL, SQLite's default settings otherwise: no SQLAlchemy, no
    batcher; in this process). With what importing SQLAlchemy and SQLModel adds to a process that
    imported what `plan` imports (LEDGER_IMPORTS), the floor."""

    def __init__(self, ledger: Path) -> None:
        with sqlite3.connect(ledger) as source:
            self.schema = [ddl for (ddl,) in source.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL")]
            self.batch = source.execute("SELECT name, model, manifest, generation FROM batch").fetchall()
            self.rows = source.execute(f"SELECT {_JOB_COLUMNS} FROM job ORDER BY seq").fetchall()
        source.close()

    def insert(self, path: Path, tuned: bool = False) -> float:
        """Seconds to insert the rows into a new file at `path` (`tuned`: with the page size and
        the bulk write's page cache the ledger sets, not SQLite's defaults)."""
        insert = (f"INSERT INTO job ({_JOB_COLUMNS}, state, attempts, lease_token) VALUES ({', '.join('?' * 15)}, "
                  "'pending', 0, 0) ON CONFLICT(batch, key) DO UPDATE SET generation = excluded.generation")
        db = sqlite3.connect(path, isolation_level=None)
        if tuned:
            db.execute(f"PRAGMA page_size={PAGE_SIZE}")
            db.execute(f"PRAGMA cache_size=-{BULK_CACHE_KIB}")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        for ddl in self.schema:
            db.execute(ddl)
        db.executemany("INSERT INTO batch (name, model, manifest, generation, simulated, committed, created_at, "
                       "updated_at) VALUES (?, ?, ?, ?, 0, 0, 0, 0)", self.batch)
        started = time.monotonic()
        db.execute("BEGIN IMMEDIATE")
        db.executemany(insert, self.rows)
        db.execute("COMMIT")
        seconds = time.monotonic() - started
        db.close()
        return seconds

    @staticmethod
    def inserted(path: Path) -> int:
        with sqlite3.connect(path) as db:
            count = int(db.execute("SELECT COUNT(*) FROM job").fetchone()[0])
        db.close()
        return count


def startup(runs: int = 5) -> dict[str, Any]:
    """`batcher --version` beside importing httpx, click and yaml, taken in turn; medians."""
    version, imports = [], []
    for _ in range(runs):
        version.append(wall([*BATCHER, "--version"]))
        imports.append(wall(IMPORTS))
    v, i = statistics.median(version), statistics.median(imports)
    return {"runs": runs, "version_seconds": v, "imports_seconds": i, "ratio": v / i, "target": STARTUP_TARGET}


def _verdict(value: float, target: float, unit: str = "") -> str:
    return f"target <= {target:g}{unit}: {'met' if value <= target else 'not met'}"


def section(stage_jobs: int, run_jobs: int, runs: int = 3, run_runs: int = 5) -> tuple[dict[str, Any], list[str]]:
    """The stage section's figures and lines (its ledgers, some 40 MB each, removed after); the
    run beside plan and the floor taken `run_runs` times (the ratio's target is judged on them)."""
    with tempfile.TemporaryDirectory(prefix="batcher-bench-") as stage_dir, \
            tempfile.TemporaryDirectory(prefix="batcher-bench-") as run_dir:
        s = bench_stage(stage_jobs, runs, Path(stage_dir))
        r = run_beside_plan(run_jobs, run_runs, Path(run_dir))
    u = startup(max(5, runs))
    return {**s, "run_beside_plan": r, "startup": u}, [
        f"stage        {stage_jobs} jobs planned and added: {s['stage_seconds']:.2f}s, peak {s['peak_mb']:.0f} MB; "
        f"status {s['status_seconds']:.2f}s in-process, {s['status_cli_seconds']:.2f}s as a command "
        f"({_verdict(s['status_cli_seconds'], STATUS_TARGET, ' s')}); plan --ledger as a command "
        f"{s['plan_cli_seconds']:.2f}s",
        f"stage        batcher run --budget 0 on {run_jobs} jobs {r['run_seconds']:.2f}s beside batcher plan --json "
        f"{r['plan_seconds']:.2f}s (ratio {r['ratio']:.2f}): {r['floor_ratio']:.2f} x the floor below "
        f"(within {RUN_TARGET:g} x the floor: {'met' if r['floor_ratio'] <= RUN_TARGET else 'not met'}; whole "
        f"process, medians of {r['runs']} taken in turn with the floor's insert, the run against batcher "
        f"simulator over loopback)",
        f"stage        the floor for any run that writes its jobs as rows of a durable SQLite ledger with a SQLModel "
        f"schema: plan {r['plan_seconds']:.2f}s + bare sqlite3 inserting the run's {r['floor']['rows']} rows "
        f"{r['floor']['insert_seconds']:.2f}s (in-process) + importing SQLAlchemy and SQLModel "
        f"{r['floor']['imports_seconds']:.2f}s = {r['floor']['seconds']:.2f}s (least ratio "
        f"{r['floor']['least_ratio']:.2f} to plan); the insert with the ledger's own page size and bulk-write "
        f"cache {r['tuned_floor']['insert_seconds']:.2f}s: the run is {r['tuned_floor']['run_ratio']:.2f} x that "
        f"floor",
        f"start-up     batcher --version {u['version_seconds']:.3f}s beside python -c \"import httpx, click, yaml\" "
        f"{u['imports_seconds']:.3f}s: ratio {u['ratio']:.2f} ({_verdict(u['ratio'], STARTUP_TARGET)}; medians of "
        f"{u['runs']})"]


def completed_batch(jobs: int, work: Path, batch: str = "rerun", bucket: Any | None = None
                    ) -> tuple[Path, Path, str]:
    """A manifest of `jobs` jobs, a ledger where every one of them is completed, and where their
    clips are (a few dozen bytes each, recorded as a verified download records them): files in a
    folder, or objects put by `bucket` (a `Bucket` of the output store; no modification time):
    (manifest, ledger, folder or s3:// address)."""
    manifest, ledger, out = work / f"{batch}.yaml", work / f"{batch}.db", work / "out"
    manifest.write_text(manifest_text(jobs, batch=batch))
    with Ledger(ledger) as led:
        stage(led, load_manifest(manifest))
    out.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(ledger, isolation_level=None)
    try:
        done, now = [], time.time()
        puts: list[Callable[[], Awaitable[None]]] = []
        for job_id, key, label, take in db.execute("SELECT id, key, label, take FROM job WHERE batch = ?", (batch,)):
            name, content = video_name(label, take, key), f"clip of job {key}\n".encode()
            sha256 = hashlib.sha256(content).hexdigest()
            if bucket is None:
                (out / name).write_bytes(content)
                where, mtime_ns = str(out / name), (out / name).stat().st_mtime_ns
            else:
                puts.append(partial(bucket.put, name, content, "video/mp4", sha256))
                where, mtime_ns = bucket.uri(name), None
            done.append((where, len(content), sha256, mtime_ns, now, job_id))
        db.execute("BEGIN IMMEDIATE")
        db.executemany("UPDATE job SET state = 'completed', file_path = ?, size = ?, sha256 = ?, file_mtime_ns = ?, "
                       "attempts = 1, credit_cost = 0, finished_at = ? WHERE id = ?", done)
        db.execute("COMMIT")
    finally:
        db.close()
    if puts:
        anyio.run(_put_all, puts)
    return manifest, ledger, str(out) if bucket is None else bucket.uri("").rstrip("/")


async def _put_all(puts: list[Callable[[], Awaitable[None]]], at_once: int = 16) -> None:
    limiter = anyio.CapacityLimiter(at_once)

    async def put(one: Callable[[], Awaitable[None]]) -> None:
        async with limiter:
            await one()
    async with anyio.create_task_group() as tg:
        for one in puts:
            tg.start_soon(put, one)


def bench_rerun(jobs: int, runs: int = 3, workdir: Path | None = None, bucket: Any | None = None,
                env: dict[str, str] | None = None) -> dict[str, Any]:
    """A rerun of `jobs` completed jobs, whole process, start to exit: the quick check and
    `--verify full` taken in turn, medians of `runs` (`bucket`: clips in the output store; `env`:
    the runs' environment, else this one's)."""
    work = workdir or Path(tempfile.mkdtemp(prefix="batcher-bench-"))
    manifest, ledger, out = completed_batch(jobs, work, bucket=bucket)
    sim, url = start_simulator(0.0, 0.0, 1)
    env = {**(env or os.environ), "PIXELDOJO_API_KEY": SIM_KEY}
    argv = [*BATCHER, "run", str(manifest), "--budget", "0", "--ledger", str(ledger), "--api-base", url, "--out", out]
    quick, full = [], []
    try:
        for _ in range(runs):
            quick.append(wall([*argv, "--verify", "quick"], env=env))
            full.append(wall([*argv, "--verify", "full"], env=env))
    finally:
        sim.terminate()
        sim.wait(timeout=10)
    with sqlite3.connect(ledger) as db:
        kept = db.execute("SELECT COUNT(*) FROM job WHERE state = 'completed'").fetchone()[0]
    db.close()
    if kept != jobs:  # a clip sent back to download: the runs measured more than a start-up
        raise RuntimeError(f"the reruns found {jobs - kept} of {jobs} completed clips changed")
    q, f = statistics.median(quick), statistics.median(full)
    return {"jobs": jobs, "runs": runs, "quick_seconds": q, "full_seconds": f, "quick_files_per_second": jobs / q,
            "full_files_per_second": jobs / f, "quick_each": quick, "full_each": full, "target": RERUN_TARGET}


def bench_bucket_rerun(objects: int, endpoint: str, runs: int = 3) -> dict[str, Any]:
    """The rerun on clips in a new bucket of the S3-compatible server at `endpoint` (credentials
    from the environment; a placeholder pair for a local server when there are none); the bucket
    is emptied and removed after."""
    import boto3  # the s3 extra, as the output store needs it

    env = {"AWS_ACCESS_KEY_ID": "bench-key", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_REGION": "us-east-1",
           **os.environ, "AWS_ENDPOINT_URL": endpoint}
    client = boto3.client("s3", endpoint_url=endpoint, region_name=env["AWS_REGION"],
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    name = f"batcher-bench-{os.getpid()}-{int(time.time())}"
    client.create_bucket(Bucket=name)
    try:
        with tempfile.TemporaryDirectory(prefix="batcher-bench-") as work:
            outputs = BucketOutputs(f"s3://{name}/rerun", endpoint=endpoint, client=client)
            return bench_rerun(objects, runs, Path(work), bucket=outputs.bucket, env=env)
    finally:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=name, Delete={"Objects": keys})
        client.delete_bucket(Bucket=name)


def rerun_section(jobs: int, runs: int = 3, *, s3_url: str | None = None, objects: int = 5000
                  ) -> tuple[dict[str, Any], list[str]]:
    """The rerun section's figures and lines (its ledger and files removed after); with `s3_url`,
    the same on `objects` clips in a bucket of that server."""
    with tempfile.TemporaryDirectory(prefix="batcher-bench-") as work:
        r = bench_rerun(jobs, runs, Path(work))
    verdict = (_verdict(r["quick_seconds"], RERUN_TARGET, " s") if jobs >= 60_000
               else f"the target, < {RERUN_TARGET:g} s, is for 60,000 jobs")
    lines = [
        f"rerun        batcher run --budget 0 on {jobs} completed jobs (a small file each), whole process: quick "
        f"check {r['quick_seconds']:.2f}s ({r['quick_files_per_second']:.0f} files/s; {verdict}), --verify full "
        f"{r['full_seconds']:.2f}s ({r['full_files_per_second']:.0f} files/s); medians of {runs}"]
    if s3_url:
        b = r["bucket"] = bench_bucket_rerun(objects, s3_url, runs)
        lines.append(
            f"rerun        the same with --out s3://... on {objects} objects (S3-compatible server at {s3_url}): "
            f"quick check (one listing) {b['quick_seconds']:.2f}s ({b['quick_files_per_second']:.0f} objects/s), "
            f"--verify full (a HEAD each) {b['full_seconds']:.2f}s ({b['full_files_per_second']:.0f} objects/s)")
    return r, lines
