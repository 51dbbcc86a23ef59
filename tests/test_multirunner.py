"""Several runner processes on one ledger against one simulator, per backend: one runner killed
with SIGKILL, one stopped with SIGSTOP past its lease and resumed. Checked against the
simulator's own record: no job submitted twice, spend <= budget, every job accounted for."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from batcher.ledger import Ledger
from batcher.models import HAPPYHORSE_R2V

from .test_e2e import record, start_simulator

JOBS = 40
BUDGET = 500  # 25 jobs' worth: covers only part of the batch


def manifest(tmp_path):
    rows = "".join(f"  - prompt: 'shared shot {i}'\n    references: hero\n" for i in range(JOBS))
    path = tmp_path / "shared.yaml"
    path.write_text("version: 1\nbatch: shared\ndefaults:\n  duration: 5\nreference_sets:\n"
                    "  hero: [https://example.com/hero.png]\nrows:\n" + rows)
    return path


def runner(url, ledger_url, path, out, *extra):
    env = dict(os.environ, PIXELDOJO_API_KEY="sim-key")
    env.pop("BATCHER_FAILPOINT", None)
    return subprocess.Popen([sys.executable, "-m", "batcher", "run", str(path), "--api-base", url, "--ledger",
                             ledger_url, "--out", str(out), "--concurrency", "3", "--budget", str(BUDGET),
                             "--lease-seconds", "3", "--expected-render", "1.5", *extra],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_until_in_flight(ledger_url, pid, timeout=60.0):
    """Until this runner process holds a job it has submitted (or is submitting): a signal then
    lands mid-work, however fast or slow the machine is. Read without taking the write lock."""
    from sqlalchemy import create_engine, text

    from batcher.ledger.dialect import readonly_sqlite_engine
    engine = (create_engine(ledger_url.replace("postgresql+psycopg", "postgresql+psycopg", 1))
              if ledger_url.startswith("postgresql") else readonly_sqlite_engine(Path(ledger_url)))
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                owners = [o for (o,) in conn.execute(text(
                    "SELECT owner FROM job WHERE owner IS NOT NULL AND state IN ('submitting', 'submitted')"))]
            if any(o.split(":")[1] == str(pid) for o in owners):
                return
            time.sleep(0.05)
    finally:
        engine.dispose()
    raise AssertionError(f"runner {pid} never had a job in flight")


def test_four_runners_one_ledger(ledger_url, tmp_path):
    proc, url = start_simulator("--render-seconds", "1.5", "--seed", "5")  # long enough for all four to start
    try:
        path = manifest(tmp_path)
        # stage first, so all four start on the same jobs at once
        staged = runner(url, ledger_url, path, tmp_path / "out0", "--budget", "0")
        staged.wait(timeout=60)
        # The two that will be hurt start first, so both are mid-work when the signals land.
        runners = [runner(url, ledger_url, path, tmp_path / f"out{i}") for i in range(2)]
        wait_until_in_flight(ledger_url, runners[0].pid)
        runners[0].send_signal(signal.SIGKILL)
        wait_until_in_flight(ledger_url, runners[1].pid)
        runners[1].send_signal(signal.SIGSTOP)
        runners += [runner(url, ledger_url, path, tmp_path / f"out{i}") for i in range(2, 4)]
        time.sleep(5)  # past the 3 s lease: the others take its jobs over
        runners[1].send_signal(signal.SIGCONT)
        codes = [r.wait(timeout=120) for r in runners]
        assert codes[0] == -9
        for code, r in zip(codes[1:], runners[1:], strict=True):
            assert code in (0, 1, 3), r.stderr.read()
        final = runner(url, ledger_url, path, tmp_path / "final")
        assert final.wait(timeout=120) in (0, 1, 3), final.stderr.read()
        rec = record(url)
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    bodies = Counter(json.dumps(j["body"], sort_keys=True) for j in rec["jobs"])
    assert bodies and max(bodies.values()) == 1, "a job was submitted twice"
    assert rec["charged"] - rec["refunded"] <= BUDGET
    with Ledger(ledger_url) as led:
        jobs = list(led.iter_batch("shared"))
        assert led.committed("shared") <= BUDGET + 1e-6
        events = {j.id: [e.kind for e in led.events(j.id)] for j in jobs}
    by_body = {json.dumps(HAPPYHORSE_R2V.to_wire(j.parameters()), sort_keys=True): j for j in jobs}
    assert set(bodies) <= set(by_body)
    states = Counter(j.state for j in jobs)
    assert states["completed"] >= 15
    for job in jobs:
        assert job.state in ("completed", "unknown", "pending"), (job.key, job.state, events[job.id])
        if job.state == "unknown":
            assert job.error
        if job.state == "pending":
            # never submitted: the budget stopped it, nothing was charged for it
            assert json.dumps(HAPPYHORSE_R2V.to_wire(job.parameters()), sort_keys=True) not in bodies
    assert states["pending"] > 0  # the budget bound: part of the batch was left
