"""`batcher watch`: the pure screen at several widths, the ledger's fleet figures on both backends,
the command's --once and --json, plain lines off a terminal, and the live screen in a real tmux pane."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest
from click.testing import CliRunner

from batcher.cli import cli
from batcher.ledger import Batch, Fleet, Ledger, RunnerStatus
from batcher.ledger.fleet import QUIET_AFTER
from batcher.plan import JobSpec
from batcher.states import JobState
from batcher.views import eta_seconds, rate_per_minute, screen, snapshot_json

from .conftest import MANIFESTS, small_manifest

NOW = 1_800_000_000.0
LONG_HOST = "render-node-0042.eu-west-3.compute.internal.example.com"


def batch(**changes) -> Batch:
    fields = dict(name="knight-and-mare-overnight-comparison", model="happyhorse-1.0-r2v", manifest="m.yaml",
                  generation=1, budget=5000.0, committed=1300.0, simulated=False, created_at=NOW - 3600,
                  updated_at=NOW - 10, control="running", control_at=None)
    fields.update(changes)
    return Batch(**fields)


def runner(host: str, pid: int, holds: int, beat_age: float | None, lease_left: float | None,
           owner: str | None = None) -> RunnerStatus:
    return RunnerStatus(owner or f"{host}:{pid}:00ff", host, pid, NOW - 3000,
                        NOW - beat_age if beat_age is not None else None, holds,
                        NOW + lease_left if lease_left is not None else None)


def fleet(control: str = "running", runners: tuple[RunnerStatus, ...] | None = None, **counts: int) -> Fleet:
    c = {s.value: 0 for s in JobState}
    c.update(counts or dict(completed=8012, rendered=4, submitted=38, submitting=2, pending=1900, unknown=3,
                            failed=41, expired=1))
    if runners is None:
        runners = (runner("host-a", 4121, 24, 3, 57), runner(LONG_HOST, 977, 20, 130, -70),
                   runner("host-c", 31337, 0, 200, None))
    return Fleet(batch(control=control, control_at=NOW - 192 if control != "running" else None), NOW, c,
                 1240.5, 120, 300.0, runners)


@pytest.mark.parametrize("width", [40, 80, 160])
def test_the_screen_fits_the_width_and_marks_the_stale_runners(width):
    lines = screen(fleet(), width)
    assert all(len(line) <= width - 1 for line in lines), [x for x in lines if len(x) > width - 1]
    text = "\n".join(lines)
    assert "8,012/10,001 completed" in text
    assert "1,900 pending" in text and "41 failed" in text  # no state is dropped: they flow over lines
    assert "1,300" in text and "5,000" in text  # credits committed of the budget
    assert "24.0/min" in text and "ETA" in text
    assert lines[0].split(" | ")[1] == "running"
    # Two runners are stale: the one whose leases lapsed, and the one holding nothing, silent 200 s.
    assert next(x for x in lines if x.startswith("runners:")).startswith("runners: 3, 2 stale")
    runner_lines = lines[-3:]
    assert not runner_lines[0].endswith("STALE") and "host-a" in runner_lines[0]
    assert runner_lines[1].endswith("STALE") and runner_lines[2].endswith("STALE")
    assert runner_lines[1].lstrip().startswith("render-")  # a long host name is elided, not the marker


def test_wide_screen_says_everything():
    lines = screen(fleet(), 160)
    assert lines[0].startswith("knight-and-mare-overnight-comparison | running | ")
    assert "credits: 1,240.5 spent, 1,300 committed of a 5,000 budget (26%)" in lines
    runner = next(x for x in lines if "host-a" in x)
    assert "pid  4121" in runner and "holds 24" in runner and "heartbeat 3s ago" in runner
    [stale] = [x for x in lines if LONG_HOST in x]
    assert "heartbeat 2m10s ago" in stale and stale.endswith("STALE")
    assert "rate: 24.0/min over the last 5m00s | ETA 1h21m for 1,944 job(s)" in lines


@pytest.mark.parametrize("width", [40, 80, 160])
@pytest.mark.parametrize("control", ["paused", "cancelled"])
def test_paused_and_cancelled_are_shown_first(width, control):
    lines = screen(fleet(control), width)
    assert all(len(line) <= width - 1 for line in lines)
    assert f"{control.upper()} 3m12s ago" in lines[0]
    if control == "paused":
        assert eta_seconds(fleet(control)) is None and "ETA - (paused" in "\n".join(lines)


def test_no_terminal_is_too_small_to_fit():
    many = tuple(runner(f"host-{i}", i, 1, 3, 5) for i in range(40))
    for f in (fleet(), fleet("cancelled"), fleet(runners=()), fleet(runners=many)):
        for width in range(1, 170, 3):
            for height in (None, 1, 3, 8, 30):
                lines = screen(f, width, height)
                assert all(len(line) <= max(1, width - 1) for line in lines), (width, height)
                assert height is None or len(lines) <= max(1, height - 1)


def test_a_short_terminal_sums_up_the_runners_it_cannot_show():
    many = tuple(runner(f"host-{i:02d}", 1000 + i, 4, 3 if i % 3 else 300, 50 if i % 3 else -240) for i in range(30))
    lines = screen(fleet(runners=many), 80, height=14)
    assert len(lines) <= 13 and all(len(line) <= 79 for line in lines)
    assert lines[-1].startswith("  ... and ") and "stale)" in lines[-1]
    assert "runners: 30, 10 stale" in "\n".join(lines)


def test_figures_without_runners_budget_or_work_left():
    done = fleet(runners=(), completed=12)
    f = Fleet(batch(budget=None, committed=277.6), done.at, done.counts, 277.6, 0, 300.0, ())
    lines = screen(f, 80)
    assert "credits: 277.6 spent, 277.6 committed (no budget)" in lines
    assert "nothing left to run" in lines[-2] and lines[-1] == "runners: none working on this batch"
    assert eta_seconds(f) == 0 and rate_per_minute(f) == 0


def test_a_state_added_later_is_shown_too():
    lines = screen(fleet(completed=5, cancelled=7), 80)
    assert "jobs: 5 completed, 7 cancelled" in lines


def test_the_stale_rule():
    assert not runner("a", 1, 3, 5, 40).stale(NOW)
    assert runner("a", 1, 3, 5, -1).stale(NOW)  # its latest lease ran out: others may take its jobs
    assert not runner("a", 1, 0, QUIET_AFTER - 1, None).stale(NOW)  # holds nothing: its heartbeat decides
    assert runner("a", 1, 0, QUIET_AFTER + 1, None).stale(NOW)
    unrecorded = runner("old", 7, 2, None, 30)  # an older batcher's runner, known by its leases
    assert not unrecorded.stale(NOW)
    assert "no runner row" in "\n".join(screen(fleet(runners=(unrecorded,)), 80))


def test_json_snapshot():
    data = snapshot_json(fleet("paused"))
    assert data["control"] == "paused" and data["control_at"].startswith("2027-01-15")
    assert data["left"] == 1944 and data["eta_seconds"] is None and data["rate_per_minute"] == 24.0
    assert data["credits"] == {"spent": 1240.5, "committed": 1300.0, "budget": 5000.0}
    assert [r["stale"] for r in data["runners"]] == [False, True, True]
    assert data["runners"][0]["heartbeat_age_seconds"] == 3.0 and data["runners"][0]["holds"] == 24


# --- against a real ledger ----------------------------------------------------------------------


def extra_jobs(n: int) -> list[JobSpec]:
    return [JobSpec(key=f"extra{i:03d}", batch="small", row=100 + i, take=1, origin=f"m.yaml:{100 + i}",
                    label="extra", params={"prompt": f"more {i}"}, estimate=20, estimate_is_guess=False)
            for i in range(n)]


@pytest.fixture
def fleet_ledger(simrun, write, ledger_url):
    """A simulated run of six jobs, then three more jobs held by two runners (one stale), and one
    by an owner with no runner row; a budget, and the batch paused."""
    simrun(write("m.yaml", small_manifest(6)), ledger=ledger_url, budget=1000)
    with Ledger(ledger_url) as led:
        led.write(led.add_jobs("small", "happyhorse-1.0-r2v", "m.yaml", extra_jobs(5), simulated=True))
        led.write(led.register("host-a:4121:aa", "small", "host-a", 4121))
        assert len(led.write(led.claim("small", [JobState.PENDING], "host-a:4121:aa", 60, 2))) == 2
        led.write(led.renew("small", "host-a:4121:aa", 60))
        assert len(led.write(led.claim("small", [JobState.PENDING], "host-z:55:cc", 60, 1))) == 1  # no runner row
        now = led.clock()
        led.write(lambda conn: led.x(conn, "UPDATE batch SET control = 'paused', control_at = :t", {"t": now - 5}))
    with Ledger(ledger_url, clock=lambda: now - 600) as old:  # a runner last heard of ten minutes ago
        old.write(old.register("host-b:977:bb", "small", "host-b", 977))
        assert len(old.write(old.claim("small", [JobState.PENDING], "host-b:977:bb", 60, 1))) == 1
    return ledger_url


def test_fleet_figures_from_the_ledger(fleet_ledger):
    from batcher import api
    with Ledger(fleet_ledger) as led:
        f = led.fleet("small")
        status = api.status(led, "small")
        assert led.fleet("nope") is None
    assert f is not None and f.counts == status["counts"] and f.jobs == 11
    assert f.spent == status["credits_spent"] and f.batch.budget == 1000
    assert f.recent == 6 and 5 <= f.window <= 300
    assert [(r.host, r.pid, r.holds, r.stale(f.at), r.heartbeat_at is not None) for r in f.runners] == [
        ("host-a", 4121, 2, False, True), ("host-b", 977, 1, True, True), ("host-z", 55, 1, False, False)]


def test_watch_once_prints_one_screen(fleet_ledger):
    result = CliRunner().invoke(cli, ["watch", "--batch", "small", "--ledger", fleet_ledger, "--once"],
                                env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert all(len(line) <= 79 for line in lines) and "\x1b" not in result.output
    assert lines[0].startswith("small | PAUSED 5s ago | simulated | ")
    assert "[" in lines[1] and "6/11 completed (54%)" in lines[1]
    assert "jobs: 6 completed, 5 pending" in lines
    assert "runners: 3, 1 stale (leases lapsed)" in lines
    [a, b, z] = [x for x in lines if x.startswith("  host-")]
    assert not a.endswith("STALE") and b.endswith("STALE") and "no runner row" in z
    assert "heartbeat 10m00s ago" in b


def test_watch_once_json(fleet_ledger, write, tmp_path):
    manifest = write("m.yaml", small_manifest(6))
    result = CliRunner().invoke(cli, ["watch", str(manifest), "--ledger", fleet_ledger, "--once", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["batch"] == "small" and data["control"] == "paused" and data["simulated"] is True
    assert data["counts"]["completed"] == 6 and data["counts"]["pending"] == 5 and data["left"] == 5
    assert data["credits"]["budget"] == 1000 and data["credits"]["spent"] > 0
    assert [(r["host"], r["holds"], r["stale"], r["recorded"]) for r in data["runners"]] == [
        ("host-a", 2, False, True), ("host-b", 1, True, True), ("host-z", 1, False, False)]
    assert 599 <= data["runners"][1]["heartbeat_age_seconds"] < 700


def test_which_batch_to_watch(simrun, write, tmp_path):
    _, _, ledger = simrun(write("m.yaml", small_manifest(2)))
    runner = CliRunner()
    alone = runner.invoke(cli, ["watch", "--ledger", str(ledger), "--once"])  # the ledger's only batch
    assert alone.exit_code == 0 and alone.output.startswith("small | running")
    other = write("o.yaml", small_manifest(1).replace("batch: small", "batch: other"))
    simrun(other, ledger=ledger)
    several = runner.invoke(cli, ["watch", "--ledger", str(ledger), "--once"])
    assert several.exit_code == 2 and "holds 2 batches (small, other)" in several.output
    clash = runner.invoke(cli, ["watch", str(other), "--batch", "small", "--ledger", str(ledger), "--once"])
    assert clash.exit_code == 2 and "is batch 'other', not 'small'" in clash.output
    missing = runner.invoke(cli, ["watch", "--batch", "nope", "--ledger", str(ledger), "--once"])
    assert missing.exit_code == 2 and "batch 'nope' is not in the ledger" in missing.output


def test_off_a_terminal_plain_screens_until_ctrl_c_which_exits_0(simrun, write):
    _, _, ledger = simrun(write("m.yaml", small_manifest(2)))
    env = {**os.environ, "COLUMNS": "60"}
    proc = subprocess.Popen([sys.executable, "-m", "batcher", "watch", "--ledger", str(ledger), "--interval", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        time.sleep(2.5)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and err == ""
    screens = [s for s in out.split("\n\n") if s.strip()]
    assert len(screens) >= 2 and "\x1b" not in out
    assert all(s.startswith("small | running") for s in screens)
    assert all(len(line) <= 59 for line in out.splitlines())


# --- the live screen in a real terminal ---------------------------------------------------------

TMUX = shutil.which("tmux")


def pane(session: str) -> list[str]:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True,
                          check=True).stdout.splitlines()


@pytest.mark.skipif(not TMUX and not os.environ.get("CI"), reason="tmux is not installed")
def test_live_screen_redraws_in_place_within_60_columns(tmp_path):
    session = f"batcher-watch-{uuid.uuid4().hex[:8]}"
    batcher = f"{sys.executable} -m batcher"
    ledger = "--ledger batcher-sim.db"
    command = (f"cd {tmp_path} && ({batcher} run {MANIFESTS / 'demo.yaml'} --simulate --sim-render-seconds 1.5 -c 2 "
               f">/dev/null 2>&1 &) && until {batcher} watch {ledger} --once >/dev/null 2>&1; do sleep 0.2; done; "
               f"{batcher} watch {ledger} --interval 0.3; echo watch-exit=$?; sleep 60")
    env = {k: v for k, v in os.environ.items() if k not in ("BATCHER_LEDGER", "PIXELDOJO_API_KEY", "COLUMNS")}
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "60", "-y", "24", command], check=True, env=env)
    try:
        screens = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            screen_now = pane(session)
            if any(line.startswith("knight-and-mare | ") for line in screen_now):
                screens.append(screen_now)
                if any("12/12 completed" in line for line in screen_now):
                    break
            time.sleep(0.3)
        assert screens, "no watch screen was seen"
        for lines in screens:
            titles = [line for line in lines if line.startswith("knight-and-mare | ")]
            assert len(titles) == 1 and lines[0] == titles[0]  # redrawn in place, at the top
            assert sum(line.startswith("[") for line in lines) == 1
            assert all(len(line.rstrip()) <= 59 for line in lines)
        progress = [next(line for line in lines if "completed (" in line) for lines in screens]
        assert len(set(progress)) >= 3  # it moved while we watched
        assert "12/12 completed" in progress[-1]
        subprocess.run(["tmux", "send-keys", "-t", session, "C-c"], check=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any("watch-exit=" in line for line in pane(session)):
            time.sleep(0.2)
        after = pane(session)
        assert "watch-exit=0" in after  # Ctrl-C ends a watch: exit 0, quietly
        assert any(line.startswith("knight-and-mare | ") for line in after)  # the last screen stays
        assert not any("Traceback" in line or "interrupted" in line for line in after)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
