"""Benchmarks against the built-in simulator (`batcher bench`): figures printed, never asserted.

- efficiency: ideal time / wall time for a batch, the ideal being the sum of simulated render
  times divided by the concurrency; status polls per job.
- ratelimit: the same with the simulator's request-rate limit on and `--rpm` set below it.
- spare: `--rpm` well above what the batch needs: the spare rate goes into denser polls.
- overhead: jobs per second with zero render time (the runner's own cost).
- memory: the runner's resident memory through a run, against `batcher simulator` over loopback.
- stage: seconds and peak memory to plan and add a large manifest to the ledger, and `status`.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from .api import run_async, target
from .run import RunOptions
from .simulator import SimConfig, Simulator


def manifest_text(jobs: int, batch: str = "bench", duration: int = 5) -> str:
    """A manifest expanding to `jobs` jobs (one row with a vary list, so it stays small on disk)."""
    per = 1000 if jobs >= 1000 else jobs
    rows = []
    left = jobs
    row = 0
    while left > 0:
        n = min(per, left)
        values = ", ".join(str(i) for i in range(n))
        rows.append(f"  - prompt: 'bench row {row} shot {{n}}'\n    references: hero\n    vary:\n      n: [{values}]\n")
        left -= n
        row += 1
    return (f"version: 1\nbatch: {batch}\ndefaults:\n  duration: {duration}\n"
            f"reference_sets:\n  hero: [https://example.com/hero.png]\nrows:\n" + "".join(rows))


@dataclass
class RunFigures:
    jobs: int
    concurrency: int
    wall: float
    ideal: float
    polls_per_job: float
    requests: int
    rate_limited: int
    completed: int

    @property
    def efficiency(self) -> float:
        return self.ideal / self.wall if self.wall else 0.0


def bench_run(jobs: int, concurrency: int, render: float, jitter: float, *, sim_rpm: float | None = None,
              client_rpm: float | None = None, seed: int = 1, workdir: Path | None = None) -> RunFigures:
    """Run a synthetic batch in-process; the whole run (staging included) is timed."""
    work = workdir or Path(tempfile.mkdtemp(prefix="batcher-bench-"))
    path = work / f"bench-{jobs}.yaml"
    path.write_text(manifest_text(jobs))
    sim = Simulator(SimConfig(render_seconds=render, render_jitter=jitter, rpm=sim_rpm, seed=seed,
                              credits=1e12))
    options = RunOptions.of(concurrency=concurrency, out_dir=work / "out", expected_render=max(render, 0.01),
                         rpm=client_rpm, seed=seed, progress_interval=3600)
    started = time.monotonic()
    report = anyio.run(lambda: run_async(path, ledger=work / "ledger.db", options=options,
                                         to=target(simulate=sim)))
    wall = time.monotonic() - started
    record = sim.record()
    ideal = sum(j["render_seconds"] for j in record["jobs"]) / concurrency
    total = sum(v for k, v in record["requests"].items() if k != "file")
    return RunFigures(jobs, concurrency, wall, ideal, record["requests"].get("job", 0) / max(1, jobs), total,
                      record["rate_limited"], report.counts.get("completed", 0))


_STAGE_SCRIPT = """
import json, resource, sys, time
from batcher.api import stage, status
from batcher.ledger import Ledger
from batcher.manifest import load_manifest
t = time.monotonic()
m = load_manifest(sys.argv[1])
with Ledger(sys.argv[2]) as led:
    added, known = stage(led, m)
t_stage = time.monotonic() - t
t = time.monotonic()
with Ledger(sys.argv[2]) as led:
    s = status(led, m.batch)
t_status = time.monotonic() - t
print(json.dumps({"added": added, "stage_seconds": t_stage, "status_seconds": t_status,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "jobs": s["jobs"]}))
"""


_RUN_SCRIPT = """
import json, resource, sys
from batcher.bench import bench_run
f = bench_run(int(sys.argv[1]), int(sys.argv[2]), 0.0, 0.0)
print(json.dumps({"wall": f.wall, "completed": f.completed,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def bench_overhead(jobs: int, concurrency: int) -> dict[str, Any]:
    """A zero-render run in a fresh process, so its peak memory is its own."""
    out = subprocess.run([sys.executable, "-c", _RUN_SCRIPT, str(jobs), str(concurrency)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


_MEMORY_SCRIPT = """
import json, sys, tempfile, threading, time
from pathlib import Path
import anyio
from batcher.api import run_async, stage, target
from batcher.bench import manifest_text
from batcher.ledger import Ledger
from batcher.manifest import load_manifest
from batcher.run import RunOptions
def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
n, url = int(sys.argv[1]), sys.argv[2]
work = Path(tempfile.mkdtemp(prefix="batcher-bench-"))
path = work / "m.yaml"
path.write_text(manifest_text(n))
with Ledger(work / "l.db") as led:
    stage(led, load_manifest(path))
samples, done = [], []
def sample():
    while not done:
        samples.append(rss())
        time.sleep(0.5)
threading.Thread(target=sample, daemon=True).start()
opts = RunOptions.of(concurrency=40, out_dir=work / "out", expected_render=0.01, check_schema=False)
anyio.run(lambda: run_async(path, ledger=work / "l.db", options=opts, to=target(api_base=url, api_key="sim-key"),
                            stage_jobs=False))
done.append(1)
k = len(samples)
print(json.dumps({"tenth": samples[max(0, k // 10)], "half": samples[k // 2], "end": samples[-1], "max": max(samples)}))
"""


def bench_memory(jobs: int) -> dict[str, Any]:
    """Resident memory of the runner alone through a run (the simulator in its own process)."""
    sim = subprocess.Popen([sys.executable, "-m", "batcher", "simulator", "--port", "0", "--render-seconds", "0",
                            "--render-jitter", "0"], stderr=subprocess.PIPE, text=True)
    try:
        url = sim.stderr.readline().split("serving on ")[1].split()[0]  # type: ignore[union-attr]  # stderr=PIPE: never None
        out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(jobs), url], capture_output=True, text=True,
                             check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        sim.terminate()
        sim.wait(timeout=10)


def bench_stage(jobs: int, workdir: Path | None = None) -> dict[str, Any]:
    """Plan and add `jobs` jobs to a new ledger in a fresh process; then time `status`."""
    work = workdir or Path(tempfile.mkdtemp(prefix="batcher-bench-"))
    path = work / f"stage-{jobs}.yaml"
    path.write_text(manifest_text(jobs, batch="stage"))
    out = subprocess.run([sys.executable, "-c", _STAGE_SCRIPT, str(path), str(work / "stage.db")],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "batcher", "status", "--ledger", str(work / "stage.db"), "--json"],
                   capture_output=True, check=True)
    result["status_cli_seconds"] = time.monotonic() - started
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "batcher", "plan", str(path), "--json", "--ledger", str(work / "stage.db")],
                   capture_output=True, check=True)
    result["plan_cli_seconds"] = time.monotonic() - started
    return result


def machine() -> str:
    import os
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def run_all(sections: list[str], *, jobs: int = 800, concurrency: int = 40, render: float = 1.0,
            jitter: float = 0.2, overhead_jobs: int = 10_000, stage_jobs: int = 100_000, sim_rpm: float = 1200,
            client_rpm: float = 1100, rate_jobs: int = 400, spare_rpm: float = 30000, memory_jobs: int = 3000,
            echo: Callable[[str], None] = print) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine()}
    echo(f"machine: {results['machine']}")
    if "efficiency" in sections:
        f = bench_run(jobs, concurrency, render, jitter)
        results["efficiency"] = f.__dict__ | {"efficiency": f.efficiency}
        echo(f"efficiency   {jobs} jobs, concurrency {concurrency}, renders {render}s +/- {jitter:.0%}: "
             f"wall {f.wall:.2f}s, ideal {f.ideal:.2f}s, efficiency {f.efficiency:.3f}, "
             f"{f.polls_per_job:.2f} polls/job ({f.completed} completed)")
    if "ratelimit" in sections:
        f = bench_run(rate_jobs, concurrency, render, jitter, sim_rpm=sim_rpm, client_rpm=client_rpm)
        bound = max(f.ideal, f.requests / (client_rpm / 60))
        results["ratelimit"] = f.__dict__ | {"efficiency": f.efficiency, "rate_bound_seconds": bound,
                                             "share_429": f.rate_limited / max(1, f.requests)}
        echo(f"ratelimit    {rate_jobs} jobs, API limit {sim_rpm:g}/min, --rpm {client_rpm:g}: wall {f.wall:.2f}s, "
             f"{f.requests} requests ({f.requests / f.wall * 60:.0f}/min), {f.rate_limited} answered 429 "
             f"({f.rate_limited / max(1, f.requests):.2%}), {f.polls_per_job:.2f} polls/job, "
             f"render-bound ideal {f.ideal:.2f}s ({f.completed} completed)")
    if "spare" in sections:
        f = bench_run(jobs, concurrency, render, jitter, sim_rpm=spare_rpm * 1.1, client_rpm=spare_rpm)
        results["spare"] = f.__dict__ | {"efficiency": f.efficiency}
        echo(f"spare rate   {jobs} jobs, --rpm {spare_rpm:g} (more than needed): wall {f.wall:.2f}s, efficiency "
             f"{f.efficiency:.3f}, {f.polls_per_job:.2f} polls/job, {f.rate_limited} answered 429")
    if "overhead" in sections:
        small = bench_overhead(max(1, overhead_jobs // 5), concurrency)
        big = bench_overhead(overhead_jobs, concurrency)
        results["overhead"] = {"jobs": overhead_jobs, **big, "jobs_per_second": overhead_jobs / big["wall"],
                               "smaller_run": {"jobs": max(1, overhead_jobs // 5), **small}}
        echo(f"overhead     {overhead_jobs} jobs, zero render time: {big['wall']:.2f}s, "
             f"{overhead_jobs / big['wall']:.0f} jobs/s ({big['completed']} completed); peak memory "
             f"{big['peak_mb']:.0f} MB (vs {small['peak_mb']:.0f} MB for {max(1, overhead_jobs // 5)} jobs)")
    if "memory" in sections:
        m = bench_memory(memory_jobs)
        results["memory"] = {"jobs": memory_jobs, **m}
        echo(f"memory       {memory_jobs} jobs, runner alone (simulator in its own process): "
             f"{m['tenth']:.0f} MB after 10% of the run, {m['half']:.0f} MB at half way, {m['end']:.0f} MB at the end")
    if "stage" in sections:
        r = bench_stage(stage_jobs)
        results["stage"] = r
        echo(f"stage        {stage_jobs} jobs planned and added: {r['stage_seconds']:.2f}s, "
             f"peak {r['peak_mb']:.0f} MB; "
             f"status {r['status_seconds']:.2f}s in-process ({r['status_cli_seconds']:.2f}s as a command); "
             f"plan as a command {r['plan_cli_seconds']:.2f}s")
    return results


SECTIONS = ["efficiency", "ratelimit", "spare", "overhead", "memory", "stage"]
