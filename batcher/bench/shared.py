"""What a shared ledger costs (`batcher bench shared`): whole process, zero render time.

Every measurement gets a fresh `batcher simulator --render-seconds 0` process on 127.0.0.1 (a free
port) and a fresh ledger: an SQLite file, or a PostgreSQL schema made for it (`CREATE SCHEMA`,
reached through a `?options=-csearch_path%3D<schema>` URL) and dropped afterwards. The batch is
first added to the ledger by one `batcher run MANIFEST --budget 0` (timed apart: staging), then
RUNNERS `batcher run MANIFEST` processes (each `--concurrency`, its own `--out`) start at once;
the wall time runs from the first start to the last exit.

Counted from the ledger after the run:
- claims: the sum over the batch's jobs of `lease_token`, which every claim bumps by one (and,
  in a run with no cancellation, no takeover and no requeue, nothing else does), less the sum
  after staging: the claims the runners made, jobs given back and claimed again included;
- each runner's share: the completed jobs whose `file_path` lies in that runner's `--out`.
Each runner's own `--json` summary (`submitted_this_run`, `downloaded_this_run`) is kept beside.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from .oracle import manifest_text
from .whole import SIM_KEY, start_simulator

BATCH = "shared"
DEFINITION = ("zero render time; staging apart (one `batcher run --budget 0`); wall = first runner's start to "
              "last runner's exit; jobs/s = completed / wall; claims = sum of job.lease_token (one per claim) "
              "after the runners less after staging; claims/s = claims / wall; share = a runner's completed "
              "jobs (file_path in its --out) / all completed")
HOW = ("shared       not run: needs PostgreSQL: `batcher bench shared --pg-url "
       "postgresql+psycopg://USER:PASS@HOST/DB` (or set BATCHER_BENCH_PG); each measurement makes and drops "
       "its own schema")


@contextmanager
def fresh_schema(pg_url: str, name: str) -> Iterator[str]:
    """A new schema in the database at `pg_url`, dropped on leaving: the URL that reaches it."""
    engine = create_engine(pg_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
            conn.exec_driver_sql(f'CREATE SCHEMA "{name}"')
        sep = "&" if "?" in pg_url else "?"
        yield f"{pg_url}{sep}options=-csearch_path%3D{name}"
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        engine.dispose()


def _engine_url(ledger: str) -> str:
    return ledger if ledger.startswith("postgresql") else f"sqlite:///{ledger}"


def ledger_figures(ledger: str, outs: list[Path]) -> dict[str, Any]:
    """What the ledger says of the batch: counts by state, the claim total (sum of lease_token),
    attempts, events that would bump a token without a claim, and completed jobs per `--out`."""
    engine = create_engine(_engine_url(ledger))
    try:
        with engine.connect() as conn:
            b = {"b": BATCH}
            counts = {s: int(n) for s, n in conn.execute(text(
                "SELECT state, COUNT(*) FROM job WHERE batch = :b GROUP BY state"), b)}
            tokens = int(conn.execute(text("SELECT COALESCE(SUM(lease_token), 0) FROM job WHERE batch = :b"),
                                      b).scalar_one())
            attempts = int(conn.execute(text(
                "SELECT COUNT(*) FROM attempt WHERE job_id IN (SELECT id FROM job WHERE batch = :b)"), b).scalar_one())
            other_bumps = int(conn.execute(text(
                "SELECT COUNT(*) FROM event WHERE kind IN ('recovered', 'requeued', 'cancelled') AND job_id IN "
                "(SELECT id FROM job WHERE batch = :b)"), b).scalar_one())
            last = conn.execute(text("SELECT MAX(finished_at) FROM job WHERE batch = :b"), b).scalar_one()
            paths = [p for (p,) in conn.execute(text(
                "SELECT file_path FROM job WHERE batch = :b AND state = 'completed'"), b)]
    finally:
        engine.dispose()
    by_out = [sum(1 for p in paths if p and Path(p).parent == out.resolve()) for out in outs]
    return {"counts": counts, "lease_tokens": tokens, "attempts": attempts, "token_bumps_not_claims": other_bumps,
            "completed_by_out": by_out, "last_finished_at": last}


def _argv(manifest: Path, url: str, ledger: str, out: Path, concurrency: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "batcher", "run", str(manifest), "--api-base", url, "--ledger", ledger,
            "--out", str(out), "--concurrency", str(concurrency), "--expected-render", "0.01", "--json", *extra]


def _runners(argvs: list[list[str]], cwd: Path) -> tuple[float, list[dict[str, Any]]]:
    """Start every process at once; (wall from the first start to the last exit, each one's figures)."""
    env = {**os.environ, "PIXELDOJO_API_KEY": SIM_KEY}
    env.pop("BATCHER_FAILPOINT", None)
    results: list[dict[str, Any]] = [{} for _ in argvs]
    started = time.monotonic()
    procs = [subprocess.Popen(a, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for a in argvs]

    def wait(i: int) -> None:
        out, err = procs[i].communicate()
        results[i] = {"wall": time.monotonic() - started, "exit_code": procs[i].returncode, "stdout": out,
                      "stderr": err}
    threads = [threading.Thread(target=wait, args=(i,)) for i in range(len(procs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    for r in results:
        # A run that ends with jobs not done (exit 1) is reported, not raised: its summary says why.
        if r["exit_code"] not in (0, 1):
            raise RuntimeError(f"batcher run exited {r['exit_code']}: {r['stderr'].strip()[-2000:]}")
        summary = json.loads(r.pop("stdout"))
        r.pop("stderr")
        r |= {"submitted_this_run": summary["submitted_this_run"],
              "downloaded_this_run": summary["downloaded_this_run"], "messages": summary["messages"]}
    return wall, results


def measure(ledger: str, jobs: int, runners: int, concurrency: int, work: Path) -> dict[str, Any]:
    """Stage `jobs` zero-render jobs into `ledger`, then run `runners` processes of the batch at once
    against a fresh simulator process; the figures (see the module's docstring)."""
    work.mkdir(parents=True, exist_ok=True)
    manifest = work / "shared.yaml"
    manifest.write_text(manifest_text(jobs, batch=BATCH))
    sim, url = start_simulator(0.0, 0.0, 1)
    try:
        stage_started = time.monotonic()
        stage_wall = _stage(_argv(manifest, url, ledger, work / "stage", concurrency, "--budget", "0"), work)
        staged = ledger_figures(ledger, [])
        outs = [work / f"out{i}" for i in range(runners)]
        began = time.time()  # the ledger's clock: the last job's finished_at is read against it
        wall, per_runner = _runners([_argv(manifest, url, ledger, o, concurrency) for o in outs], work)
        total = time.monotonic() - stage_started
        record = httpx.get(f"{url}/_sim/record", timeout=60.0).json()
    finally:
        sim.terminate()
        sim.wait(timeout=10)
    after = ledger_figures(ledger, outs)
    completed = after["counts"].get("completed", 0)
    claims = after["lease_tokens"] - staged["lease_tokens"]
    for r, n in zip(per_runner, after["completed_by_out"], strict=True):
        r["completed"] = n
        r["share"] = n / max(1, completed)
    shares = [r["share"] for r in per_runner]
    work_wall = (after["last_finished_at"] or began) - began
    return {"ledger": "postgresql" if ledger.startswith("postgresql") else "sqlite", "jobs": jobs,
            "runners": runners, "concurrency": concurrency, "stage_seconds": stage_wall, "wall": wall,
            "wall_with_staging": total, "completed": completed, "counts": after["counts"],
            "jobs_per_second": completed / wall if wall else 0.0, "claims": claims,
            "work_wall": work_wall, "jobs_per_second_to_last_job": completed / work_wall if work_wall > 0 else 0.0,
            "claims_per_second": claims / wall if wall else 0.0, "claims_per_job": claims / max(1, jobs),
            "claims_at_staging": staged["lease_tokens"], "attempts": after["attempts"],
            "token_bumps_not_claims": after["token_bumps_not_claims"],
            "submitted_to_api": record["requests"].get("run", 0), "polls": record["requests"].get("job", 0),
            "per_runner": per_runner, "share_min": min(shares), "share_max": max(shares),
            "max_over_mean": max(shares) * runners if completed else 0.0}


def _stage(argv: list[str], work: Path) -> float:
    """The staging run: `--budget 0` adds the batch and stops before any spend (exit 3)."""
    env = {**os.environ, "PIXELDOJO_API_KEY": SIM_KEY}
    env.pop("BATCHER_FAILPOINT", None)
    started = time.monotonic()
    done = subprocess.run(argv, cwd=work, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    wall = time.monotonic() - started
    if done.returncode not in (0, 3):
        raise RuntimeError(f"staging run exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return wall


def bench_shared(pg_url: str, jobs: int, runners: int, concurrency: int) -> dict[str, Any]:
    """One runner on an SQLite file, one on a fresh PostgreSQL schema, `runners` at once on another."""
    tag = f"{os.getpid()}_{int(time.time())}"
    with tempfile.TemporaryDirectory(prefix="batcher-bench-") as tmp:
        work = Path(tmp)
        sqlite_one = measure(str(work / "sqlite" / "ledger.db"), jobs, 1, concurrency, work / "sqlite")
        with fresh_schema(pg_url, f"bench_shared_one_{tag}") as url:
            pg_one = measure(url, jobs, 1, concurrency, work / "pg-one")
        with fresh_schema(pg_url, f"bench_shared_many_{tag}") as url:
            pg_many = measure(url, jobs, runners, concurrency, work / "pg-many")
    return {"definition": DEFINITION, "jobs": jobs, "runners": runners, "concurrency": concurrency,
            "sqlite_one": sqlite_one, "postgres_one": pg_one, "postgres_many": pg_many}


def describe(r: dict[str, Any]) -> list[str]:
    """The lines `batcher bench` prints for the section."""
    def line(label: str, m: dict[str, Any]) -> str:
        runners = f"{m['runners']} runner{'s' if m['runners'] > 1 else ''}"
        exits = [p["exit_code"] for p in m["per_runner"]]
        why = "; ".join(msg for p in m["per_runner"] for msg in p["messages"])[:300]
        return (f"  {label:<11}{runners}: {m['jobs_per_second']:.0f} jobs/s, {m['claims_per_second']:.0f} "
                f"claims/s ({m['claims']} claims, {m['completed']}/{m['jobs']} completed in {m['wall']:.2f}s, "
                f"the last job done after {m['work_wall']:.2f}s; staging {m['stage_seconds']:.2f}s apart)"
                + (f"; EXIT {exits}: {why}" if any(exits) else ""))
    many = r["postgres_many"]
    exited = ", ".join(f"{p['wall']:.2f}s" for p in many["per_runner"])
    return [
        f"shared       whole process, {r['jobs']} jobs, zero render, --concurrency {r['concurrency']} per runner, "
        f"against `batcher simulator --render-seconds 0`; {DEFINITION}",
        line("SQLite", r["sqlite_one"]),
        line("PostgreSQL", r["postgres_one"]),
        line("PostgreSQL", many),
        f"  shares     completed per runner {', '.join(str(p['completed']) for p in many['per_runner'])} (share "
        f"{many['share_min']:.1%} to {many['share_max']:.1%}; busiest / mean {many['max_over_mean']:.2f}); runners "
        f"exited after {exited}",
    ]


def section(pg_url: str | None, jobs: int, runners: int, concurrency: int) -> tuple[dict[str, Any], list[str]]:
    """`batcher bench shared`: the figures and lines, or one line saying how to run it."""
    if not pg_url:
        return {"skipped": HOW}, [HOW]
    r = bench_shared(pg_url, jobs, runners, concurrency)
    return r, describe(r)
