"""A run against the simulator served over HTTP is a simulated run, kept apart as --simulate runs
are; a rerun's first lines say what it does with the jobs it found; every line but the summary is
on stderr, before the summary, even in one pipe (issue 27, items 2, 10, 11)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import anyio
import httpx
import pytest
from click.testing import CliRunner

from batcher import api
from batcher.cli import cli
from batcher.client.http import SIMULATOR_HEADER, PixelDojoClient
from batcher.ledger import Ledger, read_states
from batcher.simulator import SimConfig, Simulator, SimulatorTransport
from batcher.views.commands import rerun_line

from . import test_e2e
from .conftest import run_against, serving, small_manifest
from .test_e2e import record

KEY = "sim-key"


def batcher(args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("BATCHER_LEDGER", "PIXELDOJO_API_BASE")}
    env["PIXELDOJO_API_KEY"] = KEY
    return subprocess.run([sys.executable, "-m", "batcher", *args], cwd=cwd, env=env, text=True, timeout=120, **kw)


served_process = test_e2e.simulator_server  # `batcher simulator` as its own process: start(*args) -> URL


# --- 2: the served simulator is known as one --------------------------------------------------------

def test_every_answer_of_the_simulator_says_what_it_is_in_process_and_served():
    sim = Simulator(SimConfig(api_key=KEY))
    with serving(sim) as base:
        served = [httpx.get(f"{base}{path}", headers={"authorization": f"Bearer {KEY}"}, timeout=10)
                  for path in ("/api/v1/models", "/api/v1/jobs/nope", "/_sim/record", "/nowhere")]
        refused = httpx.get(f"{base}/api/v1/models", timeout=10)  # no key: 401, still marked
    assert [r.status_code for r in served] == [200, 404, 200, 404] and refused.status_code == 401
    assert all(r.headers[SIMULATOR_HEADER] == "1" for r in [*served, refused])

    async def in_process() -> httpx.Response:
        async with httpx.AsyncClient(transport=SimulatorTransport(sim)) as http:
            return await http.get("https://pixeldojo.ai/_sim/record")
    assert anyio.run(in_process).headers[SIMULATOR_HEADER] == "1"


def test_identified_tells_the_served_simulator_from_an_api_that_does_not_say_it():
    sim = Simulator(SimConfig(api_key=KEY))
    with serving(sim) as base:
        assert anyio.run(api.identified, api.target(api_key=KEY, api_base=base)).simulated
        wrong_key = anyio.run(api.identified, api.target(api_key="other", api_base=base))
        assert wrong_key.served_simulator  # a 401 says it too
    asked: list[str] = []

    def plain(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        return httpx.Response(200, json={"models": []})
    real = anyio.run(api.identified, api.target(api_key=KEY, api_base="https://api.example",
                                                transport=httpx.MockTransport(plain)))
    assert not real.simulated and not real.served_simulator and asked == ["/api/v1/models"]
    started = time.monotonic()
    unreachable = anyio.run(api.identified, api.target(api_key=KEY, api_base="http://127.0.0.1:9"))
    assert not unreachable.simulated and time.monotonic() - started < 10  # taken for real: the run meets it
    in_process = api.target(simulate=True)
    assert anyio.run(api.identified, in_process) is in_process


def test_the_client_notes_the_simulators_mark_on_any_answer():
    async def status_of_one(transport: httpx.AsyncBaseTransport) -> bool:
        async with PixelDojoClient(KEY, "https://pixeldojo.ai", transport=transport) as client:
            await client.read("models", "/api/v1/models")
            return client.served_by_simulator
    assert anyio.run(status_of_one, SimulatorTransport(Simulator(SimConfig(api_key=KEY))))
    assert not anyio.run(status_of_one, httpx.MockTransport(lambda r: httpx.Response(200, json={"models": []})))


def test_a_run_against_batcher_simulator_in_another_process_is_simulated_and_kept_apart(
        served_process, tmp_path, write):
    url = served_process("--render-seconds", "0.05")
    manifest = write("m.yaml", small_manifest(n_rows=3))
    done = batcher(["run", str(manifest), "--api-base", url, "--expected-render", "0.05", "--json"], tmp_path,
                   capture_output=True)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["simulated"] is True and summary["ledger"] == "batcher-sim.db"
    assert summary["out_dir"] == str(Path("outputs") / "simulated" / "small")
    assert "batcher's simulator" in done.stderr.splitlines()[0]
    assert (tmp_path / "batcher-sim.db").exists() and not (tmp_path / "batcher.db").exists()
    assert len(list((tmp_path / "outputs" / "simulated" / "small").glob("*.mp4"))) == 3
    assert not (tmp_path / "outputs" / "small").exists()
    exported = batcher(["export", str(manifest), "--simulate"], tmp_path, capture_output=True)
    records = [json.loads(line) for line in exported.stdout.splitlines()]
    assert len(records) == 3 and all(r["simulated"] is True for r in records)
    assert batcher(["report", str(manifest), "--simulate", "-o", "r.html"], tmp_path).returncode == 0
    assert "SIMULATED" in (tmp_path / "r.html").read_text()
    assert len(record(url)["jobs"]) == 3


def test_failed_jobs_of_a_served_simulator_retry_against_it(served_process, tmp_path, write):
    url = served_process("--render-seconds", "0.05", "--fail-rate", "1")
    manifest = write("m.yaml", small_manifest(n_rows=1))
    done = batcher(["run", str(manifest), "--api-base", url, "--expected-render", "0.05", "--max-attempts", "1"],
                   tmp_path, capture_output=True)
    assert done.returncode == 1, done.stderr
    retry = next(line for line in done.stdout.splitlines() if "to retry them" in line)
    assert retry.endswith(f"batcher retry --failed {manifest} --api-base {url}")  # the simulated ledger: found again


def test_a_served_simulator_run_keeps_the_ledger_given_and_refuses_a_batch_with_real_results(tmp_path, write):
    manifest = write("m.yaml", small_manifest(n_rows=2))
    sim = Simulator(SimConfig(api_key=KEY, render_seconds=0.02))
    with serving(sim) as base:
        assert run_against(manifest, tmp_path, base, KEY).exit_code == 0  # the Python API, not asked: real
        charged = len(sim.record()["jobs"])
        other = CliRunner().invoke(cli, ["run", str(manifest), "--api-base", base, "--ledger", str(tmp_path / "l.db")],
                                   env={"PIXELDOJO_API_KEY": KEY})
        assert other.exit_code == 2, other.output
        assert "simulated" in other.stderr and len(sim.record()["jobs"]) == charged
        mine = tmp_path / "mine.db"
        given = CliRunner().invoke(cli, ["run", str(manifest), "--api-base", base, "--ledger", str(mine), "--out",
                                         str(tmp_path / "clips"), "--expected-render", "0.02"],
                                   env={"PIXELDOJO_API_KEY": KEY})
    assert given.exit_code == 0, given.output
    with Ledger(mine) as led:
        assert led.is_simulated("small")
    assert len(list((tmp_path / "clips").glob("*.mp4"))) == 2


# --- 10: a rerun says what it does with what it found ---------------------------------------------

def test_the_rerun_line_counts_what_is_polled_downloaded_sent_and_held():
    counts = {"pending": 5, "submitting": 0, "submitted": 8, "rendered": 2, "completed": 190, "unknown": 1,
              "failed": 1, "expired": 0, "cancelled": 0}
    line = rerun_line(counts)
    assert line == ("this run: polls 8 paid job(s) not finished (not sent again), downloads 2 rendered, sends 5 "
                    "pending, holds 2 (1 unknown, 1 failed); 190 already completed")
    resubmitting = rerun_line(counts, resubmit_unknown=True)
    assert "sends 6 pending or unknown (--resubmit-unknown)" in resubmitting and "holds 1 (1 failed)" in resubmitting


def interrupted(manifest: Path, tmp_path: Path, args: list[str]) -> dict[str, str]:
    """A run stopped with Ctrl-C once two jobs are paid for and rendering; the jobs' states then."""
    proc = subprocess.Popen([sys.executable, "-m", "batcher", "run", str(manifest), *args], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while list((read_states(tmp_path / "l.db", "small") or {}).values()).count("submitted") < 2 \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    return read_states(tmp_path / "l.db", "small")


@pytest.mark.skipif(not shutil.which("tmux") and not os.environ.get("CI"), reason="tmux is not installed")
def test_a_resumed_run_says_first_that_it_polls_its_paid_jobs_in_a_terminal(tmp_path, write):
    manifest = write("m.yaml", small_manifest(n_rows=6))
    args = ["--simulate", "--sim-render-seconds", "2", "--ledger", "l.db", "--out", "out", "-c", "2"]
    states = list(interrupted(manifest, tmp_path, args).values())
    paid, pending = states.count("submitted"), states.count("pending")
    assert paid >= 2 and paid + pending + states.count("rendered") + states.count("completed") == 6
    session = f"batcher-{uuid.uuid4().hex[:8]}"
    command = f"cd {tmp_path} && {sys.executable} -m batcher run {manifest} {' '.join(args)}; sleep 60"
    env = {k: v for k, v in os.environ.items() if k not in ("BATCHER_LEDGER", "PIXELDOJO_API_KEY")}
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "200", "-y", "30", command], check=True, env=env)
    try:
        deadline = time.monotonic() + 60
        screen: list[str] = []
        while time.monotonic() < deadline and not any(line.startswith("credits:") for line in screen):
            time.sleep(0.3)
            screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True,
                                    check=True).stdout.splitlines()
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    assert screen[0] == "batch 'small': 0 new job(s), 6 already in l.db", screen
    assert screen[1].startswith(f"this run: polls {paid} paid job(s) not finished (not sent again), "), screen
    assert f"sends {pending} pending, holds 0;" in screen[1]
    assert any(line.startswith("batch 'small': 6 completed") for line in screen), screen


# --- 11: the summary last, on stdout; everything else before it, on stderr -----------------------------

def test_in_one_pipe_every_line_comes_before_the_summary_and_only_the_summary_is_on_stdout(tmp_path, write):
    manifest = write("m.yaml", small_manifest(n_rows=4))
    args = ["run", str(manifest), "--simulate", "--sim-render-seconds", "0.05", "--ledger", "l.db", "--out", "out"]
    assert batcher(args, tmp_path, capture_output=True).returncode == 0
    with Ledger(tmp_path / "l.db") as led:  # one clip to fetch again: the rerun downloads it
        job = next(iter(led.iter_batch("small")))
    (tmp_path / "out" / Path(job.file_path).name).unlink()
    merged = batcher([*args, "-v"], tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT).stdout.splitlines()
    first, summary_at = merged.index("batch 'small': 0 new job(s), 4 already in l.db"), merged.index(
        next(line for line in merged if line.startswith("batch 'small': 4 completed")))
    assert merged[first + 1].startswith("this run: ") and first < summary_at
    assert merged[summary_at + 1].startswith("credits: ") and "1 videos downloaded" in merged[summary_at + 1]
    assert any(" GET /pixeldojotemp/" in line for line in merged[:summary_at])  # -v's log lines: all before it
    apart = batcher([*args, "-v"], tmp_path, capture_output=True)  # the same run again, its streams apart
    summary = apart.stdout.splitlines()
    assert summary[0].startswith("batch 'small': 4 completed") and summary[1].startswith("credits: ")
    assert len(merged) - summary_at == len(summary)  # after the summary in one pipe: nothing from stderr
    assert apart.stderr.splitlines()[:2] == merged[first:first + 2]
    assert not any(line.startswith(("batch 'small': 4 completed", "credits: ")) for line in apart.stderr.splitlines())
