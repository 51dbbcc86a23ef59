"""Whole-process efficiency, as users meet it, beside the oracle poller (`batcher bench efficiency`).

Each side gets a fresh `batcher simulator` process on 127.0.0.1 (a free port, the same render
times, seed and no request limit), then runs as its own process against it over loopback:
`python -m batcher run MANIFEST --api-base URL` (a temporary ledger and folder, `--concurrency`,
`--expected-render` at the true mean unless a section asks for another guess, or none) and `python
-m batcher.bench.oracle` (told the true mean and spread). Wall time is the whole process, start-up
to exit, timed here; the simulator's record (`GET /_sim/record`) gives each job's render time and
the status polls. `Runs` makes each distinct run once per `batcher bench`, however many sections
print it; `Target` judges a ratio to the oracle.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from .breakdown import Breakdown, breakdown, clock_offset, describe_side_by_side
from .oracle import manifest_text

DEFINITION = "efficiency = sum of simulated render seconds / (concurrency x whole-process wall seconds)"
SIM_KEY = "sim-key"
EFFICIENCY_TARGET = 0.97  # batcher told the true mean render: at least this many times the oracle's efficiency


@dataclass(frozen=True)
class Batch:
    """A bench batch: its jobs, the concurrency, and the simulator's render times (mean seconds,
    spread as a fraction of it, seed)."""

    jobs: int
    concurrency: int
    render: float
    jitter: float
    seed: int = 1

    @property
    def ideal(self) -> float:
        """The ideal wall time at the mean render: jobs x mean / concurrency."""
        return self.jobs * self.render / self.concurrency


@dataclass(frozen=True)
class Target:
    """At least `ratio` x the oracle's efficiency, at no more than `polls` status requests a job
    (None: any number; `unit`: what the target calls them)."""

    ratio: float
    polls: float | None = None
    unit: str = "polls/job"

    def met(self, ratio: float | None, polls: float | None) -> bool:
        """Whether a run's ratio to the oracle (None: it did not finish) and its polls a job meet it."""
        if ratio is None or ratio < self.ratio:
            return False
        return self.polls is None or (polls is not None and polls <= self.polls)

    def __str__(self) -> str:
        return f">= {self.ratio:g} x oracle" + (f" at <= {self.polls:g} {self.unit}" if self.polls is not None else "")


def verdict(met: bool) -> str:
    return "met" if met else "not met"


def outcome(f: dict[str, Any], polls: str = "polls/job") -> str:
    """A run's efficiency, polls a job and wall, or that it did not finish and the best it could have had."""
    if not f.get("finished", True):
        return (f"did not finish in {f['timeout']:.0f}s (efficiency below {f['efficiency_below']:.3f}; "
                f"{f['completed']} of {f['jobs']} seen done)")
    return f"efficiency {f['efficiency']:.3f}, {f['polls_per_job']:.2f} {polls}, wall {f['wall']:.2f}s"


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


def timed(argv: list[str], cwd: Path | None, env: dict[str, str] | None, ok: tuple[int, ...] = (0,),
          timeout: float | None = None) -> tuple[float, float, str, int | None]:
    """Run a process to its end: (start, exit on this process's clock, stdout, exit status); a
    status not in `ok` raises. After `timeout` seconds it is killed: exit status None."""
    started = time.monotonic()
    try:
        done = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return started, time.monotonic(), "", None
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


def _side(argv: list[str], work: Path, batch: Batch, env: dict[str, str] | None, ok: tuple[int, ...] = (0,),
          sim_args: Sequence[str] = (), timeout: float | None = None) -> tuple[float, str, int | None, dict[str, Any]]:
    """Start a fresh simulator, run `argv` (with `{url}` filled in) against it: (wall, stdout, exit status
    or None if killed at `timeout`, record, with `bench_times`: the process's start and exit and the clock
    offset, for `breakdown`)."""
    sim, url = start_simulator(batch.render, batch.jitter, batch.seed, sim_args)
    try:
        started, exited, out, status = timed([a.replace("{url}", url) for a in argv], work, env, ok, timeout)
        asked = time.monotonic()
        record = httpx.get(f"{url}/_sim/record", timeout=60.0).json()
        offset = clock_offset(float(record["clock"]), asked, time.monotonic())
    finally:
        sim.terminate()
        sim.wait(timeout=10)
    record["bench_times"] = (started, exited, offset)
    return exited - started, out, status, record


def whole_batcher(batch: Batch, work: Path, *, expected: float | None, run_args: Sequence[str] = (),
                  sim_args: Sequence[str] = (), timeout: float | None = None) -> dict[str, Any]:
    """`batcher run` as its own process against `batcher simulator` in another, told `expected` as its
    `--expected-render` (None: not told, so it starts from the model's typical render time);
    `run_args`, `sim_args`: more options of each. Killed after `timeout` seconds, its figures say
    so (`finished` False, `efficiency` None, `efficiency_below`: what it would have been at best)."""
    manifest = work / "bench.yaml"
    manifest.write_text(manifest_text(batch.jobs))
    env = {**os.environ, "PIXELDOJO_API_KEY": SIM_KEY}
    told = [] if expected is None else ["--expected-render", str(max(expected, 0.01))]
    argv = [sys.executable, "-m", "batcher", "run", str(manifest), "--api-base", "{url}",
            "--ledger", str(work / "ledger.db"), "--out", str(work / "out"), "--concurrency", str(batch.concurrency),
            *told, "--json", *run_args]
    # A run that ends with jobs not done (exit 1) or held as unknown is reported, not raised: its
    # summary says why (`exit_code`, `counts`, `held_unknown`, `messages`).
    wall, out, status, record = _side(argv, work, batch, env, ok=(0, 1), sim_args=sim_args, timeout=timeout)
    figures = _figures(record, batch.jobs, batch.concurrency, wall) | {"expected_render": expected}
    if status is None:
        seen = sum(1 for j in record["jobs"] if j.get("seen_done") is not None)
        return figures | {"finished": False, "timeout": timeout, "efficiency": None, "exit_code": None,
                          "efficiency_below": batch.ideal / wall, "completed": seen, "held_unknown": 0,
                          "messages": [], "webhooks": None, "sim_webhooks": record.get("webhooks")}
    summary = json.loads(out)
    return figures | {"finished": True, "exit_code": status, "completed": summary["counts"].get("completed", 0),
                      "held_unknown": summary["held_unknown"], "messages": summary["messages"],
                      "webhooks": summary.get("webhooks"), "sim_webhooks": record.get("webhooks")}


def whole_oracle(batch: Batch, work: Path, max_polls: float) -> dict[str, Any]:
    """The oracle poller as its own process against a fresh `batcher simulator`."""
    argv = [sys.executable, "-m", "batcher.bench.oracle", "--api-base", "{url}", "--api-key", SIM_KEY,
            "--jobs", str(batch.jobs), "--concurrency", str(batch.concurrency), "--mean", str(batch.render),
            "--sd", str(batch.render * batch.jitter), "--max-polls", str(max_polls), "--out", str(work / "oracle-out")]
    wall, out, _, record = _side(argv, work, batch, None)
    figures = _figures(record, batch.jobs, batch.concurrency, wall)
    result = json.loads(out.strip().splitlines()[-1])
    figures |= {"completed": result["completed"], "schedule": result["schedule"],
                "mean_poll_lateness": result["late"] / max(1, result["polls"]),
                "mean_poll_round_trip": result["answered"] / max(1, result["polls"])}
    return figures


def ratio(ours: dict[str, Any], oracle: dict[str, Any]) -> float | None:
    """batcher's efficiency over the oracle's (None if batcher did not finish)."""
    if ours["efficiency"] is None:
        return None
    return ours["efficiency"] / oracle["efficiency"] if oracle["efficiency"] else 0.0


class Runs:
    """The whole-process runs of one `batcher bench`, each made once: a section asking for a run that
    another made already (the same batch, guess and options) gets the same figures. The sections
    that print one run beside different others (efficiency, priors, webhooks) then agree, and the
    default bench does not spend minutes making a run twice."""

    def __init__(self) -> None:
        self._made: dict[tuple[Any, ...], dict[str, Any]] = {}

    def batcher(self, batch: Batch, expected: float | None, run_args: Sequence[str] = (),
                sim_args: Sequence[str] = (), timeout: float | None = None) -> dict[str, Any]:
        """`whole_batcher`'s figures, the run made if not made yet."""
        return self._once(("batcher", batch, expected, tuple(run_args), tuple(sim_args), timeout),
                          lambda work: whole_batcher(batch, work, expected=expected, run_args=run_args,
                                                     sim_args=sim_args, timeout=timeout))

    def oracle(self, batch: Batch, max_polls: float) -> dict[str, Any]:
        """`whole_oracle`'s figures, the run made if not made yet."""
        return self._once(("oracle", batch, max_polls), lambda work: whole_oracle(batch, work, max_polls))

    def _once(self, key: tuple[Any, ...], make: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        if key not in self._made:
            with tempfile.TemporaryDirectory(prefix="batcher-bench-") as tmp:
                self._made[key] = make(Path(tmp))
        return self._made[key]


def bench_whole(batch: Batch, *, max_polls: float = 2.5, runs: Runs | None = None) -> dict[str, Any]:
    """batcher (told the true mean) and the oracle, each as its own process against its own simulator,
    same settings; judged against `Target(EFFICIENCY_TARGET, max_polls)`."""
    if batch.render <= 0:
        raise ValueError("whole-process efficiency needs a render time above zero")
    made = runs or Runs()
    ours = made.batcher(batch, batch.render)
    oracle = made.oracle(batch, max_polls)
    r = ratio(ours, oracle)
    target = Target(EFFICIENCY_TARGET, max_polls)
    return {"definition": DEFINITION, "jobs": batch.jobs, "concurrency": batch.concurrency, "render": batch.render,
            "jitter": batch.jitter, "max_polls": max_polls, "batcher": ours, "oracle": oracle, "ratio": r,
            "target": str(target), "met": target.met(r, ours["polls_per_job"])}


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
        f"  ratio      batcher / oracle {r['ratio']:.3f}; target {r['target']}: {verdict(r['met'])}",
        *describe_side_by_side(Breakdown.of(b["breakdown"]), Breakdown.of(o["breakdown"])),
    ]
