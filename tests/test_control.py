"""`batcher pause / resume / cancel`: one command, every runner, on both backends. The transition
table, the ledger's side (the intent refused while a batch is not running), runs in-process with
the operator acting mid-run, and several runner processes obeying the CLI commands. "No POST
after it" is held against the simulator's own record of what it received, and when."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner

from batcher import api
from batcher.cli import cli
from batcher.errors import IllegalTransition, LeaseLost
from batcher.ledger import Ledger
from batcher.ledger.control import BatchNotRunning
from batcher.manifest import load_manifest
from batcher.models import HAPPYHORSE_R2V
from batcher.policy import RetryPolicy
from batcher.run import RunOptions, StopReason
from batcher.simulator import SimConfig, Simulator
from batcher.states import CONTROL_MOVES, TRANSITIONS, Control, JobState, can_move
from batcher.text import state_counts as counts_text

from .conftest import small_manifest
from .test_e2e import record, start_simulator
from .test_multirunner import wait_until_in_flight

S = JobState
OBEYED_WITHIN = 2.0  # seconds: the promise


# --- the transition table -------------------------------------------------------------------


def test_only_a_pending_job_can_be_cancelled_and_only_resume_brings_it_back():
    assert set(TRANSITIONS) == set(JobState)
    assert TRANSITIONS[S.CANCELLED] == {S.PENDING}
    for state in JobState:
        assert can_move(state, S.CANCELLED) == (state is S.PENDING), state
    # a cancelled job is never submitted: only `resume` (-> pending) moves it
    assert not can_move(S.CANCELLED, S.SUBMITTING)


def test_the_control_words_and_their_moves():
    assert [c.value for c in Control] == ["running", "paused", "cancelled"]
    assert CONTROL_MOVES[Control.RUNNING] == {Control.PAUSED, Control.CANCELLED}
    assert CONTROL_MOVES[Control.PAUSED] == {Control.RUNNING, Control.CANCELLED}
    assert CONTROL_MOVES[Control.CANCELLED] == {Control.RUNNING}  # pausing a cancelled batch is refused
    assert Control.of(None) is Control.RUNNING
    assert Control.of("halted-by-a-newer-version") is Control.PAUSED  # unknown: send nothing


def test_cancelled_counts_are_shown_after_the_usual_states():
    assert counts_text({"completed": 3, "pending": 0, "cancelled": 2}) == "3 completed, 2 cancelled"
    assert counts_text({"completed": 3, "cancelled": 0}) == "3 completed"


def test_stop_reason_cancelled_exits_4():
    assert StopReason.CANCELLED.exit_code == 4
    assert not StopReason.CANCELLED.overriding  # Ctrl-C after a cancel still exits 130


# --- the ledger -----------------------------------------------------------------------------


def staged(ledger_url: str, path: Path) -> Ledger:
    ledger = Ledger(ledger_url)
    api.stage(ledger, load_manifest(path), simulated=True)
    return ledger


def test_cancel_moves_pending_jobs_only_and_resume_brings_them_back(ledger_url, write):
    path = write("m.yaml", small_manifest(n_rows=4))
    with staged(ledger_url, path) as ledger:
        jobs = list(ledger.iter_batch("small"))
        paid = jobs[0]
        ledger.write(ledger.begin_submission(paid.id, S.PENDING, 20))  # in flight: paid for, maybe
        change = ledger.write(ledger.set_control("small", Control.CANCELLED, "`batcher cancel`"))
        assert (change.before, change.after, change.moved, change.in_flight) == (
            Control.RUNNING, Control.CANCELLED, 3, 1)
        assert ledger.batch("small").control == "cancelled" and ledger.batch("small").control_at
        states = {j.id: j.state for j in ledger.iter_batch("small")}
        assert states[paid.id] == "submitting"
        assert sorted(states.values()) == ["cancelled"] * 3 + ["submitting"]
        for job in jobs[1:]:
            [event] = ledger.events(job.id)
            assert (event.kind, event.from_state, event.to_state) == ("cancelled", "pending", "cancelled")
        # again: nothing changes; pausing a cancelled batch is refused, and changes nothing either
        assert not ledger.write(ledger.set_control("small", Control.CANCELLED, "x")).changed
        refused = ledger.write(ledger.set_control("small", Control.PAUSED, "x"))
        assert not refused.allowed and ledger.batch("small").control == "cancelled"
        change = ledger.write(ledger.set_control("small", Control.RUNNING, "`batcher resume`"))
        assert change.moved == 3 and ledger.batch("small").control == "running"
        for job in jobs[1:]:
            assert ledger.get(job.id).state == "pending"
            assert [e.kind for e in ledger.events(job.id)] == ["cancelled", "resumed"]


def test_the_ledger_refuses_an_intent_while_the_batch_is_paused_or_cancelled(ledger_url, write):
    """Whatever a runner has read yet: no intent (so no POST) once the command has committed."""
    path = write("m.yaml", small_manifest(n_rows=2))
    with staged(ledger_url, path) as ledger:
        job, other = ledger.jobs_in("small", [S.PENDING])
        [job] = ledger.write(ledger.claim("small", [S.PENDING], "me:1:x", 60, 1))
        ledger.write(ledger.set_control("small", Control.PAUSED, "`batcher pause`"))
        for budget in (None, 1000.0):
            with pytest.raises(BatchNotRunning, match="paused"):
                ledger.write(ledger.begin_submission(job.id, S.PENDING, 20, token=job.lease_token, batch="small",
                                                     budget=budget))
        assert ledger.get(job.id).state == "pending" and not ledger.attempts(job.id)
        assert ledger.committed("small") == 0
        ledger.write(ledger.set_control("small", Control.CANCELLED, "`batcher cancel`"))
        # the cancel took the job from its runner: its intent is refused by the fence too
        with pytest.raises(LeaseLost):
            ledger.write(ledger.begin_submission(job.id, S.PENDING, 20, token=job.lease_token, batch="small"))
        with pytest.raises(IllegalTransition):
            ledger.begin_submission(other.id, S.CANCELLED, 20)  # a cancelled job is never submitted
        ledger.write(ledger.set_control("small", Control.RUNNING, "`batcher resume`"))
        [job] = ledger.write(ledger.claim("small", [S.PENDING], "me:1:x", 60, 1))
        ledger.write(ledger.begin_submission(job.id, S.PENDING, 20, token=job.lease_token, batch="small"))
        assert ledger.get(job.id).state == "submitting"


def test_a_sweep_cancels_jobs_pending_again_only_while_the_batch_is_cancelled(ledger_url, write):
    path = write("m.yaml", small_manifest(n_rows=2))
    with staged(ledger_url, path) as ledger:
        job = ledger.jobs_in("small", [S.PENDING])[0]
        ledger.write(ledger.begin_submission(job.id, S.PENDING, 20))
        ledger.write(ledger.set_control("small", Control.CANCELLED, "`batcher cancel`"))
        ledger.write(ledger.move(job.id, S.SUBMITTING, S.PENDING, "not-sent", "never left"))
        assert ledger.write(ledger.cancelling("small", "swept")) == 1
        assert ledger.get(job.id).state == "cancelled"
        ledger.write(ledger.set_control("small", Control.RUNNING, "`batcher resume`"))
        assert ledger.write(ledger.cancelling("small", "swept")) == 0  # resumed meanwhile: nothing
        assert Counter(j.state for j in ledger.iter_batch("small")) == {"pending": 2}


# --- runs in-process, the operator acting mid-run -------------------------------------------


class Told(list):
    """What a run said (`on_warning`), and when (time.monotonic)."""

    def __init__(self):
        super().__init__()
        self.times: list[float] = []

    def __call__(self, line: str) -> None:
        self.append(line)
        self.times.append(time.monotonic())

    def when(self, words: str) -> float:
        return next(t for line, t in zip(self, self.times, strict=True) if words in line)


def options(tmp_path: Path, told: Told, **more) -> RunOptions:
    fast = RetryPolicy(base=0.01, cap=0.05, max_attempts=6)
    more.setdefault("concurrency", 4)
    return RunOptions.of(retry=fast, submit_retry=fast, out_dir=tmp_path / "out", seed=1, on_warning=told, **more)


def run_with_operator(path: Path, ledger_url: str, sim: Simulator, opts: RunOptions, operator) -> object:
    """Run the manifest in-process while `operator()` acts beside it; returns the run's report."""
    async def main():
        result = {}

        async def run():
            result["report"] = await api.run_async(path, ledger=ledger_url, options=opts,
                                                   to=api.target(simulate=sim))
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await operator()
        return result["report"]
    return anyio.run(main)


async def posts_reach(sim: Simulator, n: int, timeout: float = 30.0) -> None:
    with anyio.fail_after(timeout):
        while len(sim.run_bodies) < n:
            await anyio.sleep(0.01)


async def set_control(ledger_url: str, word: Control) -> tuple[float, object]:
    """The command's work, from another connection; returns (when it had committed, the change)."""
    def go():
        with Ledger(ledger_url) as led:
            return led.write(led.set_control("small", word, f"`batcher {word}` (test)"))
    change = await anyio.to_thread.run_sync(go)
    return time.monotonic(), change


def posts_after(sim: Simulator, t: float) -> list[float]:
    """Seconds after `t` of each submission the simulator received (and charged) after it."""
    return sorted(j.submitted - t for j in sim.jobs.values() if j.submitted > t)


def test_pause_mid_run_stops_submissions_within_2s_and_resume_finishes(ledger_url, write, tmp_path):
    path = write("m.yaml", small_manifest(n_rows=24))
    sim = Simulator(SimConfig(render_seconds=0.3, render_jitter=0.2))
    told = Told()
    seen: dict = {}

    async def operator():
        await posts_reach(sim, 6)
        seen["paused_at"], seen["pause"] = await set_control(ledger_url, Control.PAUSED)
        await anyio.sleep(OBEYED_WITHIN)
        seen["posts_2s"] = len(sim.run_bodies)
        await anyio.sleep(1.5)  # paused: jobs in flight finish; nothing new is sent
        seen["posts_end"] = len(sim.run_bodies)
        with Ledger(ledger_url) as led:
            seen["during"] = led.counts("small")
        seen["resumed_at"], _ = await set_control(ledger_url, Control.RUNNING)

    report = run_with_operator(path, ledger_url, sim, options(tmp_path, told, expected_render=0.3), operator)
    late = posts_after(sim, seen["paused_at"])
    before_resume = [d for d in late if d < seen["resumed_at"] - seen["paused_at"]]
    noticed = told.when("paused (`batcher pause`") - seen["paused_at"]
    print(f"\n[{ledger_url.split(':')[0]}] pause: the runner obeyed {noticed * 1000:.0f} ms after the command; "
          f"{len(before_resume)} POST(s) between the command and the resume "
          f"{seen['resumed_at'] - seen['paused_at']:.1f} s later")
    assert noticed <= OBEYED_WITHIN
    assert all(d <= OBEYED_WITHIN for d in before_resume), before_resume
    assert seen["posts_2s"] == seen["posts_end"]  # nothing sent while paused
    during = seen["during"]
    assert during["pending"] > 0  # the pause came mid-run
    # jobs in flight went on: polled and downloaded while paused
    assert during["submitting"] == during["submitted"] == during["rendered"] == 0
    assert during["completed"] == seen["posts_end"]
    assert report.exit_code == 0 and report.counts["completed"] == 24
    bodies = Counter(json.dumps(j.body, sort_keys=True) for j in sim.jobs.values())
    assert len(bodies) == 24 and set(bodies.values()) == {1}
    assert sum("paused (`batcher pause`" in line for line in told) == 1
    assert sum("resumed (`batcher resume`" in line for line in told) == 1


def test_cancel_with_jobs_in_flight_downloads_every_paid_clip_and_exits_4(ledger_url, write, tmp_path):
    path = write("m.yaml", small_manifest(n_rows=20))
    sim = Simulator(SimConfig(render_seconds=0.8, render_jitter=0.2))
    told = Told()
    seen: dict = {}

    async def operator():
        await posts_reach(sim, 6)
        seen["at"], seen["change"] = await set_control(ledger_url, Control.CANCELLED)

    report = run_with_operator(path, ledger_url, sim, options(tmp_path, told, expected_render=0.8), operator)
    late = posts_after(sim, seen["at"])
    noticed = told.when("cancelled (`batcher cancel`") - seen["at"]
    print(f"\n[{ledger_url.split(':')[0]}] cancel: {seen['change'].in_flight} job(s) in flight, "
          f"{seen['change'].moved} cancelled; the runner obeyed {noticed * 1000:.0f} ms after the command; "
          f"{len(late)} POST(s) after it")
    assert noticed <= OBEYED_WITHIN
    assert seen["change"].in_flight > 0  # paid work was in flight when the cancel came
    assert all(d <= OBEYED_WITHIN for d in late), late
    assert report.stop_reason is StopReason.CANCELLED and report.exit_code == 4
    paid = len(sim.jobs)
    with Ledger(ledger_url) as led:
        jobs = list(led.iter_batch("small"))
        states = Counter(j.state for j in jobs)
        assert states == {"completed": paid, "cancelled": 20 - paid}, states  # no paid clip abandoned
        assert {j.remote_job_id for j in jobs if j.state == "completed"} == set(sim.jobs)
        for job in jobs:
            if job.state == "completed":
                assert Path(job.file_path).stat().st_size == job.size
            else:
                assert "cancelled" in [e.kind for e in led.events(job.id)] and job.remote_job_id is None
    assert any("cancelled (`batcher cancel`" in line for line in told)

    # `run` on the cancelled batch says so and sends nothing
    told.clear()
    again = run_with_operator(path, ledger_url, sim, options(tmp_path, told), lambda: anyio.sleep(0))
    assert again.exit_code == 4 and len(sim.run_bodies) == paid and again.counts["cancelled"] == 20 - paid
    assert sum("is cancelled" in line for line in told) == 1

    # until `resume`: the cancelled jobs are rendered, none of the others again
    anyio.run(set_control, ledger_url, Control.RUNNING)
    done = run_with_operator(path, ledger_url, sim, options(tmp_path, told), lambda: anyio.sleep(0))
    assert done.exit_code == 0 and done.counts["completed"] == 20
    bodies = Counter(json.dumps(j.body, sort_keys=True) for j in sim.jobs.values())
    assert len(bodies) == 20 and set(bodies.values()) == {1}


def test_a_refunded_failure_after_a_cancel_is_not_sent_again(ledger_url, write, tmp_path):
    path = write("m.yaml", small_manifest(n_rows=8))
    sim = Simulator(SimConfig(render_seconds=0.5, render_jitter=0.0, fail_rate=1.0))  # every render fails
    seen: dict = {}

    async def operator():
        await posts_reach(sim, 4)
        seen["at"], _ = await set_control(ledger_url, Control.CANCELLED)

    report = run_with_operator(path, ledger_url, sim, options(tmp_path, Told(), expected_render=0.5, max_attempts=3),
                               operator)
    assert report.exit_code == 4
    assert all(d <= OBEYED_WITHIN for d in posts_after(sim, seen["at"]))
    with Ledger(ledger_url) as led:
        jobs = list(led.iter_batch("small"))
    states = Counter(j.state for j in jobs)
    # The renders in flight failed (refunded) after the cancel: not sent again (left failed, for
    # `batcher retry --failed`, as when a run stops for its budget); no job is left pending.
    assert set(states) <= {"failed", "cancelled"} and states["cancelled"] >= 8 - len(sim.jobs), states
    sent = Counter(j.body["prompt"] for j in sim.jobs.values())
    assert set(sent.values()) == {1}  # none sent a second time
    assert states["failed"] <= len(sim.jobs)


def test_a_runner_started_while_paused_waits_and_says_so_once(ledger_url, write, tmp_path):
    path = write("m.yaml", small_manifest(n_rows=6))
    staged(ledger_url, path).close()
    anyio.run(set_control, ledger_url, Control.PAUSED)
    sim = Simulator(SimConfig(render_seconds=0.1))
    told = Told()

    async def operator():
        await anyio.sleep(1.5)
        assert len(sim.run_bodies) == 0  # waiting, not exiting
        await set_control(ledger_url, Control.RUNNING)

    report = run_with_operator(path, ledger_url, sim, options(tmp_path, told, expected_render=0.1), operator)
    assert report.exit_code == 0 and report.counts["completed"] == 6
    assert sum("is paused (`batcher pause`" in line for line in told) == 1
    assert sum("resumed" in line for line in told) == 1


# --- the commands -----------------------------------------------------------------------------


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_the_commands_say_what_every_runner_will_do(ledger_url, write):
    path = write("m.yaml", small_manifest(n_rows=3))
    staged(ledger_url, path).close()
    out = invoke("pause", str(path), "--ledger", ledger_url)
    assert out.exit_code == 0 and out.output.count("\n") == 1
    assert out.output.startswith("batch 'small' paused: every runner stops sending new jobs within 2 s")
    assert invoke("pause", "--batch", "small", "--ledger", ledger_url).output.startswith(
        "batch 'small' is already paused: nothing changed")
    status = invoke("status", str(path), "--ledger", ledger_url)
    assert "  control: paused since " in status.output
    assert json.loads(invoke("status", str(path), "--ledger", ledger_url, "--json").output)["control"] == "paused"
    out = invoke("cancel", "--batch", "small", "--ledger", ledger_url)
    assert out.exit_code == 0 and "3 pending job(s) cancelled" in out.output and "exits 4" in out.output
    assert "3 cancelled" in invoke("status", str(path), "--ledger", ledger_url).output
    refused = invoke("pause", "--batch", "small", "--ledger", ledger_url)
    assert refused.exit_code == 2 and "`batcher resume`" in refused.output
    out = invoke("resume", str(path), "--ledger", ledger_url)
    assert out.exit_code == 0 and "3 cancelled job(s) are pending again" in out.output
    data = json.loads(invoke("status", str(path), "--ledger", ledger_url, "--json").output)
    assert data["control"] == "running" and data["counts"]["pending"] == 3
    assert "control" not in invoke("status", str(path), "--ledger", ledger_url).output  # running: as before
    assert invoke("cancel", "--ledger", ledger_url).exit_code == 2  # which batch?
    assert invoke("cancel", "--batch", "nope", "--ledger", ledger_url).exit_code == 2
    assert invoke("cancel", str(path), "--batch", "other", "--ledger", ledger_url).exit_code == 2


# --- several runner processes, one ledger, the CLI ------------------------------------------

JOBS = 36


def runner(url: str, ledger_url: str, path: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PIXELDOJO_API_KEY="sim-key")
    env.pop("BATCHER_FAILPOINT", None)
    return subprocess.Popen([sys.executable, "-m", "batcher", "run", str(path), "--api-base", url, "--ledger",
                             ledger_url, "--out", str(out), "--concurrency", "3", "--expected-render", "0.8", *extra],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def command(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "batcher", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1, done.stdout  # one line
    return done.stdout


def watch_posts(url: str, since: float, seconds: float) -> tuple[int, float]:
    """Follow the simulator's count of POSTs for `seconds`; returns the count and how long after
    `since` it last grew (0 if it did not)."""
    count, last = record(url)["run_bodies"], 0.0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.1)
        now = record(url)["run_bodies"]
        if now != count:
            count, last = now, time.monotonic() - since
    return count, last


def in_flight(ledger_url: str) -> int:
    with Ledger(ledger_url) as led:
        counts = led.counts("shared")
    return counts["submitting"] + counts["submitted"] + counts["rendered"]


def test_runner_processes_obey_pause_resume_and_cancel(ledger_url, tmp_path):
    proc, url = start_simulator("--render-seconds", "0.8", "--seed", "9")
    try:
        rows = "".join(f"  - prompt: 'fleet shot {i}'\n    references: hero\n" for i in range(JOBS))
        path = tmp_path / "shared.yaml"
        path.write_text("version: 1\nbatch: shared\ndefaults:\n  duration: 5\nreference_sets:\n"
                        "  hero: [https://example.com/hero.png]\nrows:\n" + rows)
        # The second runner starts (and stages the manifest again) while the first works: both are
        # mid-work when the commands come.
        assert runner(url, ledger_url, path, tmp_path / "out", "--budget", "0").wait(timeout=60) == 3  # staged
        runners = [runner(url, ledger_url, path, tmp_path / "out0")]
        wait_until_in_flight(ledger_url, runners[0].pid)
        runners.append(runner(url, ledger_url, path, tmp_path / "out1"))
        wait_until_in_flight(ledger_url, runners[1].pid)

        assert "paused" in command("pause", "--batch", "shared", "--ledger", ledger_url)
        paused_at = time.monotonic()
        posts, last = watch_posts(url, paused_at, OBEYED_WITHIN)
        deadline = time.monotonic() + 20
        while in_flight(ledger_url) and time.monotonic() < deadline:  # jobs in flight finish, paused
            time.sleep(0.1)
        assert in_flight(ledger_url) == 0
        still, _ = watch_posts(url, paused_at, 1.0)
        assert still == posts, "a POST while paused"
        gone = [(r.returncode, r.stderr.read()) for r in runners if r.poll() is not None]
        assert not gone, gone  # paused runners wait
        print(f"\n[{ledger_url.split(':')[0]}] pause: last POST seen {last:.2f} s after the command returned")

        assert "resumed" in command("resume", "--batch", "shared", "--ledger", ledger_url)
        deadline = time.monotonic() + 20
        while record(url)["run_bodies"] < posts + 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert record(url)["run_bodies"] >= posts + 3  # sending again

        line = command("cancel", "--batch", "shared", "--ledger", ledger_url)
        assert "cancelled" in line and "exits 4" in line
        cancelled_at = time.monotonic()
        at_2s, last = watch_posts(url, cancelled_at, OBEYED_WITHIN)
        codes = [r.wait(timeout=60) for r in runners]
        errors = [r.stderr.read() for r in runners]
        assert codes == [4, 4], errors
        assert all("cancelled (`batcher cancel`" in e for e in errors)
        rec = record(url)
        assert rec["run_bodies"] == at_2s, "a POST more than 2 s after the cancel"
        print(f"[{ledger_url.split(':')[0]}] cancel: last POST seen {last:.2f} s after the command returned; "
              f"runners exited 4 {time.monotonic() - cancelled_at:.1f} s after it")

        again = runner(url, ledger_url, path, tmp_path / "out9")
        assert again.wait(timeout=60) == 4 and "is cancelled" in again.stderr.read()
        assert record(url)["run_bodies"] == rec["run_bodies"]  # `run` on a cancelled batch sends nothing
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    bodies = Counter(json.dumps(j["body"], sort_keys=True) for j in rec["jobs"])
    assert max(bodies.values()) == 1, "a job was submitted twice"
    with Ledger(ledger_url) as led:
        jobs = list(led.iter_batch("shared"))
    by_body = {json.dumps(HAPPYHORSE_R2V.to_wire(j.parameters()), sort_keys=True): j for j in jobs}
    states = Counter(j.state for j in jobs)
    assert states["completed"] == len(bodies) and states["cancelled"] == JOBS - len(bodies) > 0, states
    for body in bodies:  # every paid clip downloaded
        job = by_body[body]
        assert job.state == "completed" and Path(job.file_path).exists(), (job.key, job.state)
