"""Chaos run: kill the runner with SIGKILL at random moments against a faulty simulator, rerun it,
and hold the simulator's own record of charges against the ledger.

    python -m tests.chaos --jobs 200 --kills 20 --seed 3     # a longer run by hand
    python -m tests.chaos --kills 20 --faults kill,outage,outage-after-post [--ledger postgresql+psycopg://...]
The test suite runs a small one (tests/test_chaos.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from batcher.ledger import Ledger, is_database_url

from .outages import ledger_outage

FAULTS = ["--error-rate", "0.03", "--drop-rate", "0.03", "--lost-answer-rate", "0.05", "--fail-rate", "0.1",
          "--malformed-rate", "0.02"]


def manifest_text(jobs: int) -> str:
    rows = "".join(f"  - prompt: 'chaos shot {i}'\n    references: hero\n" for i in range(jobs))
    return ("version: 1\nbatch: chaos\ndefaults:\n  duration: 5\n"
            "reference_sets:\n  hero: [https://example.com/hero.png]\nrows:\n" + rows)


FAULT_KINDS = ("kill", "outage", "outage-after-post")


def chaos(jobs: int = 24, kills: int = 4, seed: int = 7, budget_factor: float = 1.3, render: float = 0.2,
          workdir: Path | None = None, verbose: bool = False, ledger: str | None = None,
          faults: tuple[str, ...] = ("kill",), outage_seconds: float = 3.0) -> dict:
    """`kills` cycles, each starting the runner and hitting it with one of `faults`: "kill" (SIGKILL
    at a random moment), "outage" (the ledger unavailable for `outage_seconds` at a random moment),
    "outage-after-post" (the ledger made unavailable as soon as the API charged a submission, before
    the runner records it); each cycle's runner waits for a failing ledger 0.5 s or 8 s at random (so
    some outages are waited out, others end in the answer journal; after a POST, always 0.5 s).
    Then runs to a standstill."""
    rng = random.Random(seed)
    work = workdir or Path(tempfile.mkdtemp(prefix="batcher-chaos-"))
    location = ledger or str(work / "ledger.db")
    manifest = work / "chaos.yaml"
    manifest.write_text(manifest_text(jobs))
    budget = 20 * jobs * budget_factor
    sim = subprocess.Popen([sys.executable, "-m", "batcher", "simulator", "--port", "0", "--render-seconds",
                            str(render), "--seed", str(seed), *FAULTS], stderr=subprocess.PIPE, text=True)
    outage = ledger_outage(location)
    done_faults: Counter = Counter()
    try:
        line = sim.stderr.readline()
        url = line.split("serving on ")[1].split()[0]
        env = dict(os.environ, PIXELDOJO_API_KEY="sim-key")
        env.pop("BATCHER_FAILPOINT", None)
        env.pop("BATCHER_FAILPOINT_PAUSE", None)
        cmd = [sys.executable, "-m", "batcher", "run", str(manifest), "--api-base", url, "--ledger", location,
               "--out", str(work / "out"), "--concurrency", "4", "--budget", str(budget),
               "--expected-render", str(render), "--lease-seconds", "2"]
        killed = 0
        for cycle in range(kills):
            kind = rng.choice(faults)
            # (after a POST the runner gives up on the ledger at once: the answer must go to the journal)
            patience = "0.5" if kind == "outage-after-post" else rng.choice(["0.5", "8"])
            run_env = dict(env, BATCHER_FAILPOINT_PAUSE="after-post:0.3") if kind == "outage-after-post" else env
            with open(work / f"cycle-{cycle:02d}-{kind}.log", "wb") as log:  # (-v: what it did, for a post-mortem)
                proc = subprocess.Popen([*cmd, "--ledger-patience", patience, "-v"], env=run_env,
                                        stdout=subprocess.DEVNULL, stderr=log)
            if kind == "kill":
                time.sleep(rng.uniform(0.2, 1.5))
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    killed += 1
                    done_faults[kind] += 1
            elif _hit(proc, outage, kind, url, rng, outage_seconds):
                done_faults[kind] += 1
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise AssertionError(f"cycle {cycle} ({kind}): the runner did not end in 120 s; see {work}") from None
            outage.wait()
            time.sleep(2.2)  # leases of a runner that stopped on a failing ledger run out
        codes = []
        for _ in range(6):  # run to a standstill
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
            codes.append(done.returncode)
            if verbose:
                print(done.stderr, file=sys.stderr)
            if done.returncode in (0, 3) or ("held as unknown" in done.stdout and done.returncode == 1):
                left = _states(location)
                if not (left["pending"] or left["submitted"] or left["rendered"]) or done.returncode == 3:
                    break
        record = httpx.get(f"{url}/_sim/record", timeout=10).json()
    finally:
        sim.terminate()
        sim.wait(timeout=10)
    summary = check_invariants(work, location, record, budget, codes[-1])
    summary.update({"killed": killed, "faults_done": dict(done_faults), "exit_codes": codes, "workdir": str(work)})
    return summary


def _hit(proc: subprocess.Popen, outage, kind: str, url: str, rng: random.Random, seconds: float) -> bool:
    """Make the ledger unavailable while `proc` runs: at a random moment, or as soon as the API has
    charged a new submission (the runner pauses 0.3 s after each POST's answer, so the outage begins
    before it records it). False if the runner ended first."""
    if kind == "outage":
        time.sleep(rng.uniform(0.2, 1.5))
    else:
        charged = len(httpx.get(f"{url}/_sim/record", timeout=10).json()["jobs"])
        ends = time.monotonic() + 20
        while len(httpx.get(f"{url}/_sim/record", timeout=10).json()["jobs"]) == charged:
            if proc.poll() is not None or time.monotonic() > ends:
                return False
            time.sleep(0.02)
    if proc.poll() is not None:
        return False
    outage.start(seconds)
    return True


def _states(location: str) -> Counter:
    with Ledger(location) as led:
        return Counter(j.state for j in led.iter_batch("chaos"))


def check_invariants(work: Path, location: str, record: dict, budget: float, last_code: int) -> dict:
    if not is_database_url(location):
        assert sqlite3.connect(location).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with Ledger(location) as led:
        jobs = list(led.iter_batch("chaos"))
        attempts = {j.id: led.attempts(j.id) for j in jobs}
        events = {j.id: [e.kind for e in led.events(j.id)] for j in jobs}
    by_body: dict[str, list[dict]] = {}
    for charge in record["jobs"]:
        by_body.setdefault(json.dumps(charge["body"], sort_keys=True), []).append(charge)
    ledger_bodies = {}
    from batcher.models import HAPPYHORSE_R2V
    for job in jobs:
        ledger_bodies[json.dumps(HAPPYHORSE_R2V.to_wire(job.parameters()), sort_keys=True)] = job
    # every charge belongs to a job in the ledger
    assert set(by_body) <= set(ledger_bodies), "the server charged a request the ledger does not know"
    twice = 0
    for body, charges in by_body.items():
        job = ledger_bodies[body]
        kept = [c for c in charges if not c["refunded"]]
        consented = events[job.id].count("requeued")
        # no job charged twice (net of refunds) unless resubmitted by consent
        assert len(kept) <= 1 + consented, (job.key, charges, events[job.id])
        twice += len(kept) > 1
        remote_ids = {a.remote_job_id for a in attempts[job.id] if a.remote_job_id}
        unknown = sum(1 for a in attempts[job.id] if a.outcome == "unknown")
        unheard = [c for c in charges if c["job_id"] not in remote_ids]
        assert len(unheard) <= unknown, (job.key, "a charge with no attempt held as unknown")
        # no paid clip lost: a charge the ledger heard of, not refunded, ends as this job's video
        for charge in kept:
            if charge["job_id"] in remote_ids:
                lost = job.state != "completed" or job.remote_job_id != charge["job_id"]
                assert not lost, (job.key, job.state, "a paid clip the ledger knew of was not saved")
    net = record["charged"] - record["refunded"]
    assert net <= budget + 1e-6, (net, budget)
    states = Counter(j.state for j in jobs)
    for job in jobs:
        if job.state in ("failed", "unknown", "expired"):
            assert job.error, (job.key, job.state)
        elif job.state == "completed":
            path = Path(job.file_path)
            assert path.exists() and path.stat().st_size == job.size
        else:
            assert job.state == "pending" and last_code == 3, (job.key, job.state, last_code)
    strays = [p for p in (work / "out").iterdir() if p.name.endswith(".part")]
    assert not strays, strays
    journaled = sum(1 for kinds in events.values() for k in kinds
                    if k.startswith("journal-") and k != "journal-ignored")
    return {"states": dict(states), "journaled": journaled, "charged": record["charged"],
            "refunded": record["refunded"], "net": net,
            "budget": budget, "faults": record["faults"], "server_jobs": len(record["jobs"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--render", type=float, default=0.3)
    parser.add_argument("--budget-factor", type=float, default=1.3)
    parser.add_argument("--ledger", default=None, help="a PostgreSQL URL (default: an SQLite file in the workdir)")
    parser.add_argument("--faults", default="kill", help=f"comma-separated, of {', '.join(FAULT_KINDS)}")
    parser.add_argument("--outage-seconds", type=float, default=3.0)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    summary = chaos(args.jobs, args.kills, args.seed, args.budget_factor, args.render, verbose=args.verbose,
                    ledger=args.ledger, faults=tuple(args.faults.split(",")), outage_seconds=args.outage_seconds)
    print(json.dumps(summary, indent=2))
    print("chaos: all invariants held")


if __name__ == "__main__":
    main()
