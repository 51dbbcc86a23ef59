"""Whole-process efficiency, as users meet it, beside the oracle poller (`batcher bench efficiency`).

Each side gets a fresh `batcher simulator` process on 127.0.0.1 (a free port, the same render
times, seed and no request limit), then runs as its own process against it over loopback:
`python -m batcher run MANIFEST --api-base URL` (a temporary ledger and folder, `--concurrency`,
`--expected-render` at the true mean) and `python -m batcher.bench.oracle` (told the true mean and
spread). Wall time is the whole process, start-up to exit, timed here; the simulator's record
(`GET /_sim/record`) gives each job's render time and the status polls.

Efficiency is the bench's definition throughout: the ideal time (the sum of the simulated render
seconds divided by the concurrency) over the wall time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from .breakdown import Breakdown, breakdown, clock_offset, describe_side_by_side
from .oracle import manifest_text

DEFINITION = "efficiency = sum of simulated render seconds / (concurrency x whole-process wall seconds)"
SIM_KEY = "sim-key"


def start_simulator(render: float, jitter: float, seed: int, extra: Sequence[str] = ()
                    ) -> tuple[subprocess.Popen[str], str]:
    """`batcher simulator` in its own process on a free loopback port (`extra`: more of its options,
    e.g. webhook faults): (process, base URL)."""
    sim = subprocess.Popen([sys.executable, "-m", "batcher", "simulator", "--host", "127.0.0.1", "--port", "0",
                            "--api-key", SIM_KEY, "--credits", "1e12", "--render-seconds", str(render),
                            "--render-jitter", str(jitter), "--seed", str(seed), *extra],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = sim.stderr.readline()  # type: ignore[union-attr]  # stderr=PIPE: never None
    if "serving on " not in line:
        sim.kill()
        raise RuntimeError(f"batcher simulator did not start: {line.strip()!r}")
    return sim, line.split("serving on ")[1].split()[0]


def timed(argv: list[str], cwd: Path | None, env: dict[str, str] | None, ok: tuple[int, ...] = (0,)
          ) -> tuple[float, float, str, int]:
    """Run a process to its end: (start, exit on this process's clock, stdout, exit status); a
    status not in `ok` raises."""
    started = time.monotonic()
    done = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    exited = time.monotonic()
    if done.returncode not in ok:
        raise RuntimeError(f"{' '.join(argv[:4])} ... exited {done.returncode}: {done.stderr.strip()[-2000:]}"
                           f"\n{done.stdout.strip()[-2000:]}")
    return started, exited, done.stdout, done.returncode


def _figures(record: dict[str, Any], jobs: int, concurrency: int, wall: float) -> dict[str, Any]:
    renders = [j["render_seconds"] for j in record["jobs"]]
    ideal, requests = sum(renders) / concurrency, record["requests"]
    return {"jobs": jobs, "concurrency": concurrency, "wall": wall, "ideal": ideal,
            "efficiency": ideal / wall if wall else 0.0, "polls_per_job": requests.get("job", 0) / max(1, jobs),
            "submitted": requests.get("run", 0), "downloads": requests.get("file", 0),
            "mean_render": sum(renders) / max(1, len(renders)),
            "breakdown": breakdown(record, concurrency, *record["bench_times"]).as_dict()}


def _side(argv: list[str], work: Path, render: float, jitter: float, seed: int, env: dict[str, str] | None,
          ok: tuple[int, ...] = (0,), sim_args: Sequence[str] = ()) -> tuple[float, str, int, dict[str, Any]]:
    """Start a fresh simulator, run `argv` (with `{url}` filled in) against it: (wall, stdout, exit status,
    record, with `bench_times`: the process's start and exit and the clock offset, for `breakdown`)."""
    sim, url = start_simulator(render, jitter, seed, sim_args)
    try:
        started, exited, out, status = timed([a.replace("{url}", url) for a in argv], work, env, ok)
        asked = time.monotonic()
        record = httpx.get(f"{url}/_sim/record", timeout=60.0).json()
        offset = clock_offset(float(record["clock"]), asked, time.monotonic())
    finally:
        sim.terminate()
        sim.wait(timeout=10)
    record["bench_times"] = (started, exited, offset)
    return exited - started, out, status, record


def whole_batcher(jobs: int, concurrency: int, render: float, jitter: float, seed: int, work: Path,
                  run_args: Sequence[str] = (), sim_args: Sequence[str] = ()) -> dict[str, Any]:
    """`batcher run` as its own process against `batcher simulator` in another (`run_args`,
    `sim_args`: more options of each)."""
    manifest = work / "bench.yaml"
    manifest.write_text(manifest_text(jobs))
    env = {**os.environ, "PIXELDOJO_API_KEY": SIM_KEY}
    argv = [sys.executable, "-m", "batcher", "run", str(manifest), "--api-base", "{url}",
            "--ledger", str(work / "ledger.db"), "--out", str(work / "out"), "--concurrency", str(concurrency),
            "--expected-render", str(max(render, 0.01)), "--json", *run_args]
    # A run that ends with jobs not done (exit 1) or held as unknown is reported, not raised: its
    # summary says why (`exit_code`, `counts`, `held_unknown`, `messages`).
    wall, out, status, record = _side(argv, work, render, jitter, seed, env, ok=(0, 1), sim_args=sim_args)
    figures = _figures(record, jobs, concurrency, wall)
    summary = json.loads(out)
    figures |= {"exit_code": status, "completed": summary["counts"].get("completed", 0),
                "held_unknown": summary["held_unknown"], "messages": summary["messages"],
                "webhooks": summary.get("webhooks"), "sim_webhooks": record.get("webhooks")}
    return figures


def whole_oracle(jobs: int, concurrency: int, render: float, jitter: float, seed: int, work: Path,
                 max_polls: float) -> dict[str, Any]:
    """The oracle poller as its own process against a fresh `batcher simulator`."""
    argv = [sys.executable, "-m", "batcher.bench.oracle", "--api-base", "{url}", "--api-key", SIM_KEY,
            "--jobs", str(jobs), "--concurrency", str(concurrency), "--mean", str(render),
            "--sd", str(render * jitter), "--max-polls", str(max_polls), "--out", str(work / "oracle-out")]
    wall, out, _, record = _side(argv, work, render, jitter, seed, None)
    figures = _figures(record, jobs, concurrency, wall)
    result = json.loads(out.strip().splitlines()[-1])
    figures |= {"completed": result["completed"], "schedule": result["schedule"],
                "mean_poll_lateness": result["late"] / max(1, result["polls"]),
                "mean_poll_round_trip": result["answered"] / max(1, result["polls"])}
    return figures


def bench_whole(jobs: int, concurrency: int, render: float, jitter: float, *, max_polls: float = 2.5,
                seed: int = 1) -> dict[str, Any]:
    """batcher and the oracle, each as its own process against its own simulator, same settings."""
    if render <= 0:
        raise ValueError("whole-process efficiency needs a render time above zero")
    with tempfile.TemporaryDirectory(prefix="batcher-bench-") as tmp:
        work = Path(tmp)
        (work / "b").mkdir()
        (work / "o").mkdir()
        ours = whole_batcher(jobs, concurrency, render, jitter, seed, work / "b")
        oracle = whole_oracle(jobs, concurrency, render, jitter, seed, work / "o", max_polls)
    return {"definition": DEFINITION, "jobs": jobs, "concurrency": concurrency, "render": render, "jitter": jitter,
            "max_polls": max_polls, "batcher": ours, "oracle": oracle,
            "ratio": ours["efficiency"] / oracle["efficiency"] if oracle["efficiency"] else 0.0}


def describe(name: str, r: dict[str, Any]) -> list[str]:
    """The lines `batcher bench` prints for a whole-process section."""
    b, o = r["batcher"], r["oracle"]
    s = o["schedule"]  # as the oracle computed it: expected figures from detection delay alone
    return [
        f"{name:<12} whole process (each its own process against `batcher simulator` over loopback), "
        f"{r['jobs']} jobs, concurrency {r['concurrency']}, renders {r['render']:g}s +/- {r['jitter']:.0%}; "
        f"{DEFINITION}",
        f"  batcher    efficiency {b['efficiency']:.3f}, {b['polls_per_job']:.2f} polls/job, wall {b['wall']:.2f}s "
        f"(ideal {b['ideal']:.2f}s; {b['completed']} completed, {b['downloads']} downloaded"
        + (f"; EXIT {b['exit_code']}, {b['held_unknown']} held unknown: {'; '.join(b['messages'])[:300]}"
           if b["exit_code"] else "") + ")",
        f"  oracle     efficiency {o['efficiency']:.3f}, {o['polls_per_job']:.2f} polls/job, wall {o['wall']:.2f}s "
        f"(ideal {o['ideal']:.2f}s; {o['completed']} completed, {o['downloads']} downloaded); told N({r['render']:g}, "
        f"{r['render'] * r['jitter']:g}), polls at t0 {s['t0']:.3g}s then every {s['d']:.3g}s "
        f"(expected {s['efficiency']:.3f} at {s['polls_per_job']:.2f} polls/job from detection delay alone; "
        f"polls sent {o['mean_poll_lateness'] * 1000:.1f} ms after their time and answered in "
        f"{o['mean_poll_round_trip'] * 1000:.1f} ms on average)",
        f"  ratio      batcher / oracle {r['ratio']:.3f}",
        *describe_side_by_side(Breakdown.of(b["breakdown"]), Breakdown.of(o["breakdown"])),
    ]
