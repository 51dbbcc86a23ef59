"""Crashes at named steps (failpoints kill the runner with SIGKILL), then the same command again."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections import Counter

import pytest

from batcher.ledger import Ledger

from .conftest import small_manifest
from .test_e2e import record


def run_cli(url, manifest, tmp_path, failpoint=None, *extra):
    env = {k: v for k, v in os.environ.items() if k != "BATCHER_FAILPOINT"}
    env["PIXELDOJO_API_KEY"] = "sim-key"
    if failpoint:
        env["BATCHER_FAILPOINT"] = failpoint
    return subprocess.run([sys.executable, "-m", "batcher", "run", str(manifest), "--api-base", url,
                           "--ledger", str(tmp_path / "l.db"), "--out", str(tmp_path / "out"), "--concurrency", "1",
                           "--expected-render", "0.05", *extra], env=env, capture_output=True, text=True,
                          timeout=60)


def states(tmp_path):
    with Ledger(tmp_path / "l.db") as led:
        return Counter(j.state for j in led.iter_batch("small"))


@pytest.fixture
def server(tmp_path):
    from .test_e2e import start_simulator
    proc, url = start_simulator("--render-seconds", "0.05")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.mark.parametrize("point, held, charged_after_crash", [
    ("after-intent", 1, 1),   # killed before the POST: held, since nobody can tell it was not sent
    ("after-post", 1, 2),     # the API charged, the answer died with the process: held, never resent
])
def test_crash_around_the_post_holds_the_job(server, tmp_path, write, point, held, charged_after_crash):
    manifest = write("m.yaml", small_manifest(3))
    first = run_cli(server, manifest, tmp_path, f"{point}:2")
    assert first.returncode == -9
    assert len(record(server)["jobs"]) == charged_after_crash
    second = run_cli(server, manifest, tmp_path)
    assert second.returncode == 1, second.stderr
    assert states(tmp_path) == Counter({"completed": 2, "unknown": held})
    assert "held as unknown" in second.stdout
    rec = record(server)
    bodies = Counter(str(sorted(j["body"].items())) for j in rec["jobs"])
    assert all(n == 1 for n in bodies.values())
    assert len(rec["jobs"]) == charged_after_crash + 1
    # consent: `batcher retry --unknown` resubmits the held job
    env = dict(os.environ, PIXELDOJO_API_KEY="sim-key")
    third = subprocess.run([sys.executable, "-m", "batcher", "retry", "--unknown", str(manifest), "--api-base", server,
                            "--ledger", str(tmp_path / "l.db"), "--out", str(tmp_path / "out"),
                            "--expected-render", "0.05"], env=env, capture_output=True, text=True, timeout=60)
    assert third.returncode == 0, third.stderr
    assert states(tmp_path) == Counter({"completed": 3})


@pytest.mark.parametrize("point", ["after-accept", "after-rendered", "after-publish"])
def test_crash_after_the_answer_loses_nothing(server, tmp_path, write, point):
    manifest = write("m.yaml", small_manifest(3))
    first = run_cli(server, manifest, tmp_path, f"{point}:2")
    assert first.returncode == -9
    second = run_cli(server, manifest, tmp_path)
    # The kill may also catch the next job mid-submission (the worker moves on while the
    # downloader works): that job is held, which is right, and nothing else may be.
    with Ledger(tmp_path / "l.db") as led:
        for job in led.iter_batch("small"):
            assert job.state in ("completed", "unknown")
            if job.state == "unknown":
                assert "recovered" in [e.kind for e in led.events(job.id)]
    assert second.returncode in (0, 1), second.stderr
    rec = record(server)
    assert len(rec["jobs"]) <= 3  # nothing paid twice
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(files) == states(tmp_path)["completed"] and not [f for f in files if f.endswith(".part")]
    assert sqlite3.connect(tmp_path / "l.db").execute("PRAGMA integrity_check").fetchone()[0] == "ok"
