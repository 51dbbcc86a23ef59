"""End to end over a loopback socket: `batcher simulator` in one process, `batcher run` in another."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter

import httpx
import pytest

from batcher.ledger import read_states

from .conftest import small_manifest


def start_simulator(*args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "batcher", "simulator", "--port", "0", *args],
                            stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    assert match, line
    return proc, f"http://127.0.0.1:{match.group(1)}"


@pytest.fixture
def simulator_server():
    procs = []

    def _start(*args: str) -> str:
        proc, url = start_simulator(*args)
        procs.append(proc)
        return url
    yield _start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def batcher(*args: str, env_key: str | None = "sim-key", **kw) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("PIXELDOJO_API_KEY", "PIXELDOJO_API_BASE")}
    if env_key is not None:
        env["PIXELDOJO_API_KEY"] = env_key
    return subprocess.Popen([sys.executable, "-m", "batcher", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def record(url: str) -> dict:
    return httpx.get(f"{url}/_sim/record", timeout=10).json()


def test_run_over_http(simulator_server, tmp_path, write):
    url = simulator_server("--render-seconds", "0.1")
    manifest = write("m.yaml", small_manifest(n_rows=5))
    proc = batcher("run", str(manifest), "--api-base", url, "--ledger", str(tmp_path / "l.db"),
                   "--out", str(tmp_path / "out"), "--concurrency", "3", "--expected-render", "0.1")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    rec = record(url)
    assert len(rec["jobs"]) == 5 and rec["peak_in_flight"] <= 3
    files = sorted((tmp_path / "out").glob("*.mp4"))
    assert len(files) == 5 and all(f.read_bytes()[4:8] == b"ftyp" for f in files)
    assert "5 completed" in out


def test_missing_key_stops_before_sending(simulator_server, tmp_path, write):
    url = simulator_server()
    manifest = write("m.yaml", small_manifest(n_rows=2))
    proc = batcher("run", str(manifest), "--api-base", url, "--ledger", str(tmp_path / "l.db"), env_key=None)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert err.strip().splitlines()[-1].startswith("batcher: PIXELDOJO_API_KEY is not set")
    assert sum(record(url)["requests"].values()) == 0


def test_sigint_then_rerun_completes_without_paying_twice(simulator_server, tmp_path, write):
    url = simulator_server("--render-seconds", "1.0")
    manifest = write("m.yaml", small_manifest(n_rows=8))
    args = ["run", str(manifest), "--api-base", url, "--ledger", str(tmp_path / "l.db"), "--out",
            str(tmp_path / "out"), "--concurrency", "2", "--expected-render", "1.0"]
    proc = batcher(*args)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        states = read_states(tmp_path / "l.db", "small") or {}
        if list(states.values()).count("submitted") >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted" in out
    states = read_states(tmp_path / "l.db", "small")
    assert "completed" not in states.values() or list(states.values()).count("completed") < 8
    proc = batcher(*args)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    rec = record(url)
    bodies = Counter(json.dumps(j["body"], sort_keys=True) for j in rec["jobs"])
    assert len(bodies) == 8 and set(bodies.values()) == {1}
    assert len(list((tmp_path / "out").glob("*.mp4"))) == 8
