"""Benchmarks against the built-in simulator (`batcher bench`): figures printed, never asserted.

- efficiency: ideal time / wall time for a batch, the ideal being the sum of simulated render
  times divided by the concurrency; status polls per job. Whole process, as users meet it:
  `batcher run` and `batcher simulator` each in its own process, beside the oracle poller
  (bench.whole, bench.oracle). efficiency-long: the same with long renders (8 s by default).
- inprocess: a diagnostic: the efficiency run with runner and simulator in this one process.
- ratelimit: in-process, with the simulator's request-rate limit on and `--rpm` set below it.
- spare: in-process, `--rpm` well above what the batch needs: the spare rate goes into denser polls.
- overhead: jobs per second with zero render time (the runner's own cost).
- shared: what a shared ledger costs: jobs and claims per second, whole process, zero render, one
  runner on SQLite and on PostgreSQL, several at once on PostgreSQL (bench.shared; needs --pg-url).
- memory: the runner's resident memory through a run, against `batcher simulator` over loopback.
- priors: whole process, batcher told a right, a wrong (5x too high, 3x too low) or no render time,
  beside the oracle, on the efficiency sections' two batches (bench.priors).
- webhooks: whole process, webhooks against polling: the oracle, batcher polling, batcher with
  every webhook delivered and with a share lost; polling and webhooks with that share lost when told
  a render time 5x too high (bench.hooks).
- stage: seconds and peak memory to plan and add a large manifest to the ledger, `status`; `batcher
  run --budget 0` beside `batcher plan --json`, and start-up, whole process (bench.stage).
- rerun: the start-up of a rerun of 60,000 completed jobs (a small file each), whole process, with
  the quick check of their files and with `--verify full`; with an S3-compatible server (--s3-url),
  the same on 5,000 objects in a bucket (bench.stage).

The whole-process sections share their runs (bench.whole.Runs): a run that several print (the
oracle, batcher told the true mean, batcher told 5x it) is made once per `batcher bench`.
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

from ..api import run_async, target
from ..run import RunOptions
from ..simulator import SimConfig, Simulator
from .hooks import LOSS, bench_webhooks, describe_webhooks
from .oracle import manifest_text
from .priors import TIMEOUT_FACTOR, bench_priors, describe_priors
from .shared import section as shared_section
from .stage import rerun_section
from .stage import section as stage_section
from .whole import Batch, Runs, bench_whole, describe


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


_RUN_SCRIPT = """
import json, resource, sys
from batcher.bench.suite import bench_run
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
from batcher.bench.suite import manifest_text
from batcher.ledger import Ledger
from batcher.manifest.document import load_manifest
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


def machine() -> str:
    import os
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


@dataclass
class BenchSettings:
    """What `batcher bench` was asked for (its options)."""

    jobs: int = 800
    concurrency: int = 40
    render: float = 1.0
    jitter: float = 0.2
    long_jobs: int = 240
    long_render: float = 8.0
    max_polls: float = 2.5
    overhead_jobs: int = 10_000
    stage_jobs: int = 100_000
    run_jobs: int = 104_000  # `batcher run --budget 0` beside `batcher plan --json` (the stage section)
    rerun_jobs: int = 60_000  # completed jobs in the rerun section
    s3_url: str | None = None  # the rerun section's S3-compatible server, for its run on a bucket (None: not run)
    rerun_objects: int = 5000  # objects in that run (putting 60,000 into a local test server takes minutes)
    sim_rpm: float = 1200
    client_rpm: float = 1100
    rate_jobs: int = 400
    spare_rpm: float = 30000
    memory_jobs: int = 3000
    pg_url: str | None = None  # the `shared` section's PostgreSQL database (a schema is made per measurement)
    shared_jobs: int = 2000
    shared_runners: int = 4
    webhook_loss: float = LOSS  # the `webhooks` section's lossy runs
    webhook_delay: float = 0.02  # seconds from a render's end to its webhook
    prior_timeout: float = TIMEOUT_FACTOR  # a run told a wrong render time is killed after this x the oracle's wall

    def batch(self) -> Batch:
        """The efficiency section's batch."""
        return Batch(self.jobs, self.concurrency, self.render, self.jitter)

    def long_batch(self) -> Batch:
        """The efficiency-long section's batch."""
        return Batch(self.long_jobs, self.concurrency, self.long_render, self.jitter)


Section = Callable[[BenchSettings, Runs], tuple[dict[str, Any], list[str]]]


def _efficiency(s: BenchSettings, runs: Runs) -> tuple[dict[str, Any], list[str]]:
    r = bench_whole(s.batch(), max_polls=s.max_polls, runs=runs)
    return r, describe("efficiency", r)


def _efficiency_long(s: BenchSettings, runs: Runs) -> tuple[dict[str, Any], list[str]]:
    r = bench_whole(s.long_batch(), max_polls=s.max_polls, runs=runs)
    return r, describe("efficiency-long", r)


def _priors(s: BenchSettings, runs: Runs) -> tuple[dict[str, Any], list[str]]:
    r = bench_priors([s.batch(), s.long_batch()], max_polls=s.max_polls, timeout_factor=s.prior_timeout, runs=runs)
    return r, describe_priors(r)


def _inprocess(s: BenchSettings, _: Runs) -> tuple[dict[str, Any], list[str]]:
    f = bench_run(s.jobs, s.concurrency, s.render, s.jitter)
    return f.__dict__ | {"efficiency": f.efficiency, "diagnostic": True}, [
        f"inprocess    diagnostic: runner and simulator in one process (not as users meet it), {s.jobs} jobs, "
        f"concurrency {s.concurrency}, renders {s.render}s +/- {s.jitter:.0%}: wall {f.wall:.2f}s, ideal "
        f"{f.ideal:.2f}s, efficiency {f.efficiency:.3f}, {f.polls_per_job:.2f} polls/job ({f.completed} completed)"]


def _ratelimit(s: BenchSettings, _: Runs) -> tuple[dict[str, Any], list[str]]:
    f = bench_run(s.rate_jobs, s.concurrency, s.render, s.jitter, sim_rpm=s.sim_rpm, client_rpm=s.client_rpm)
    bound = max(f.ideal, f.requests / (s.client_rpm / 60))
    return f.__dict__ | {"efficiency": f.efficiency, "rate_bound_seconds": bound,
                         "share_429": f.rate_limited / max(1, f.requests)}, [
        f"ratelimit    {s.rate_jobs} jobs, API limit {s.sim_rpm:g}/min, --rpm {s.client_rpm:g} (in-process): wall "
        f"{f.wall:.2f}s, {f.requests} requests ({f.requests / f.wall * 60:.0f}/min), {f.rate_limited} answered 429 "
        f"({f.rate_limited / max(1, f.requests):.2%}), {f.polls_per_job:.2f} polls/job, "
        f"render-bound ideal {f.ideal:.2f}s ({f.completed} completed)"]


def _spare(s: BenchSettings, _: Runs) -> tuple[dict[str, Any], list[str]]:
    f = bench_run(s.jobs, s.concurrency, s.render, s.jitter, sim_rpm=s.spare_rpm * 1.1, client_rpm=s.spare_rpm)
    return f.__dict__ | {"efficiency": f.efficiency}, [
        f"spare rate   {s.jobs} jobs, --rpm {s.spare_rpm:g} (more than needed; in-process): wall {f.wall:.2f}s, "
        f"efficiency {f.efficiency:.3f}, {f.polls_per_job:.2f} polls/job, {f.rate_limited} answered 429"]


def _overhead(s: BenchSettings, _: Runs) -> tuple[dict[str, Any], list[str]]:
    n, smaller = s.overhead_jobs, max(1, s.overhead_jobs // 5)
    small = bench_overhead(smaller, s.concurrency)
    big = bench_overhead(n, s.concurrency)
    return {"jobs": n, **big, "jobs_per_second": n / big["wall"], "smaller_run": {"jobs": smaller, **small}}, [
        f"overhead     {n} jobs, zero render time: {big['wall']:.2f}s, {n / big['wall']:.0f} jobs/s "
        f"({big['completed']} completed); peak memory {big['peak_mb']:.0f} MB (vs {small['peak_mb']:.0f} MB for "
        f"{smaller} jobs)"]


def _shared(s: BenchSettings, _: Runs) -> tuple[dict[str, Any], list[str]]:
    return shared_section(s.pg_url, s.shared_jobs, s.shared_runners, s.concurrency)


def _memory(s: BenchSettings, _: Runs) -> tuple[dict[str, Any], list[str]]:
    m = bench_memory(s.memory_jobs)
    return {"jobs": s.memory_jobs, **m}, [
        f"memory       {s.memory_jobs} jobs, runner alone (simulator in its own process): {m['tenth']:.0f} MB after "
        f"10% of the run, {m['half']:.0f} MB at half way, {m['end']:.0f} MB at the end"]


def _webhooks(s: BenchSettings, runs: Runs) -> tuple[dict[str, Any], list[str]]:
    r = bench_webhooks(s.batch(), loss=s.webhook_loss, delay=s.webhook_delay, max_polls=s.max_polls,
                       timeout_factor=s.prior_timeout, runs=runs)
    return r, describe_webhooks(r)


def _stage(s: BenchSettings, _: Runs) -> tuple[dict[str, Any], list[str]]:
    return stage_section(s.stage_jobs, s.run_jobs)


def _rerun(s: BenchSettings, _: Runs) -> tuple[dict[str, Any], list[str]]:
    return rerun_section(s.rerun_jobs, s3_url=s.s3_url, objects=s.rerun_objects)


RUNS: dict[str, Section] = {"efficiency": _efficiency, "efficiency-long": _efficiency_long, "priors": _priors,
                            "inprocess": _inprocess,
                            "ratelimit": _ratelimit, "spare": _spare, "overhead": _overhead, "shared": _shared,
                            "memory": _memory, "stage": _stage, "rerun": _rerun, "webhooks": _webhooks}
SECTIONS = list(RUNS)
"""Every section, in the order they run (`batcher bench all`)."""
DEFAULT_SECTIONS = [name for name in SECTIONS if name not in ("efficiency-long", "inprocess")]
"""`batcher bench` with no section: all but the 8 s renders beside the oracle (priors prints the same run, told the true
mean) and the in-process diagnostic (`shared` without a PostgreSQL URL prints one line saying how to run it)."""


def byte_compile() -> str:
    """Byte-compile batcher's own modules, as `pip install` does, so that every process the bench
    starts imports them as an installed batcher does: not compiling its source at every start (as
    an editable install under PYTHONDONTWRITEBYTECODE=1 would, some 0.25 s a process here)."""
    import compileall

    import batcher
    ok = compileall.compile_dir(str(Path(batcher.__file__).parent), quiet=1)
    return "done" if ok else "some modules failed to compile"


def run_all(sections: list[str], settings: BenchSettings | None = None, *,
            echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the named sections (in SECTIONS' order), echoing each one's lines; their figures by name, and
    under `seconds` each section's time (a run another section made first counts in that one's)."""
    s, runs = settings or BenchSettings(), Runs()
    results: dict[str, Any] = {"machine": machine(), "seconds": {}, "byte_compiled": byte_compile()}
    echo(f"machine: {results['machine']}; batcher's modules byte-compiled first, as `pip install` does "
         f"({results['byte_compiled']})")
    for name in SECTIONS:
        if name in sections:
            started = time.monotonic()
            results[name], lines = RUNS[name](s, runs)
            results["seconds"][name] = time.monotonic() - started
            for line in lines:
                echo(line)
    echo("seconds: " + ", ".join(f"{name} {t:.0f}" for name, t in results["seconds"].items()))
    return results
