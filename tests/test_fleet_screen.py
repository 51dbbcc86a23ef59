"""The runner's screen while the fleet is controlled (issue 27, item 4), in real terminals: two
runner processes, each in a tmux pane of its own, one batch paused and resumed under them. Each
message of `batcher pause / resume` gets a line of its own, once (never glued to the progress line,
never said again after the summary); while paused the ETA says so; and each runner's credit
figure is what it spent, the two adding up to the ledger's."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from decimal import Decimal

import pytest

from batcher.ledger import Ledger

from .test_control import JOBS, command, in_flight, runner
from .test_e2e import record, start_simulator
from .test_multirunner import wait_until_in_flight

pytestmark = pytest.mark.skipif(not shutil.which("tmux") and not os.environ.get("CI"), reason="tmux is not installed")


class Panes:
    """tmux sessions on a server of their own (its socket named for this test): one runner a pane."""

    def __init__(self) -> None:
        self.socket = f"batcher-fleet-{uuid.uuid4().hex[:8]}"

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True,
                              check=True).stdout

    def start(self, name: str, words: list[str]) -> int:
        """A runner in a 200x50 pane that stays (dead) when it exits; its process id."""
        line = " ".join(shlex.quote(w) for w in words)
        self.tmux("new-session", "-d", "-s", name, "-x", "200", "-y", "50",
                  f"exec env PIXELDOJO_API_KEY=sim-key {line}")
        self.tmux("set-option", "-t", name, "remain-on-exit", "on")
        return int(self.tmux("display-message", "-p", "-t", name, "#{pane_pid}"))

    def screen(self, name: str) -> list[str]:
        """What the pane shows now."""
        return self.tmux("capture-pane", "-p", "-t", name).splitlines()

    def history(self, name: str) -> list[str]:
        """Everything the pane showed, wrapped lines joined."""
        return self.tmux("capture-pane", "-p", "-J", "-S", "-", "-t", name).splitlines()

    def dead(self, name: str) -> bool:
        return self.tmux("display-message", "-p", "-t", name, "#{pane_dead}").strip() == "1"

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


def bars(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith(("[#", "[."))]


def credits_of(lines: list[str]) -> Decimal:
    """The credit figure of a runner's summary: `credits: 390 spent ...`."""
    found = [re.match(r"credits: ([\d,.]+) spent", line) for line in lines]
    figures = [Decimal(m.group(1).replace(",", "")) for m in found if m]
    assert len(figures) == 1, lines
    return figures[0]


def test_two_runner_screens_while_the_batch_is_paused_and_resumed(ledger_url, tmp_path):
    rows = "".join(f"  - prompt: 'fleet shot {i}'\n    references: hero\n" for i in range(JOBS))
    path = tmp_path / "shared.yaml"
    path.write_text("version: 1\nbatch: shared\ndefaults:\n  duration: 5\nreference_sets:\n"
                    "  hero: [https://example.com/hero.png]\nrows:\n" + rows)
    server, url = start_simulator("--render-seconds", "0.8", "--seed", "9")
    panes = Panes()
    names = ("first", "second")
    try:
        assert runner(url, ledger_url, path, tmp_path / "out", "--budget", "0").wait(timeout=60) == 3  # staged
        for name in names:
            pid = panes.start(name, [sys.executable, "-m", "batcher", "run", str(path), "--api-base", url,
                                     "--ledger", ledger_url, "--out", str(tmp_path / name), "--concurrency", "3",
                                     "--expected-render", "0.8"])
            wait_until_in_flight(ledger_url, pid)  # both mid-work when the pause comes
        assert "paused" in command("pause", "--batch", "shared", "--ledger", ledger_url)
        deadline = time.monotonic() + 20
        while in_flight(ledger_url) and time.monotonic() < deadline:  # jobs in flight finish, paused
            time.sleep(0.1)
        time.sleep(1.5)  # the lines are redrawn twice a second
        while_paused = {name: panes.screen(name) for name in names}
        assert "resumed" in command("resume", "--batch", "shared", "--ledger", ledger_url)
        deadline = time.monotonic() + 90
        while not all(panes.dead(name) for name in names) and time.monotonic() < deadline:
            time.sleep(0.2)
        screens = {name: panes.history(name) for name in names}
        sent = record(url)["run_bodies"]
    finally:
        panes.close()
        server.terminate()
        server.wait(timeout=10)

    for name in names:
        paused, screen = while_paused[name], screens[name]
        assert len(bars(paused)) == 1 and "ETA paused" in bars(paused)[0], paused
        for word, command_name in (("paused", "pause"), ("resumed", "resume")):
            said = [line for line in screen if f"{word} (`batcher {command_name}`" in line]
            assert len(said) == 1, screen  # once: not again after the summary
            assert said[0].startswith(f"batch 'shared' {word} ("), said  # on a line of its own
        assert any("36 completed" in line for line in screen), screen
    with Ledger(ledger_url) as led:
        spent = led.spend("shared").spent
    assert spent == 20 * sent
    figures = [credits_of(screens[name]) for name in names]
    assert sum(figures) == spent and all(0 < f < spent for f in figures), figures


# --- the parts, without a terminal ----------------------------------------------------------------

def progress(**kw):
    from batcher.run import Progress
    base = dict(batch="fleet", counts={"completed": 30, "pending": 30}, spent=Decimal(780), reserved=Decimal(0),
                budget=Decimal(1000), elapsed=30.0, completed_this_run=15, total=60)
    return Progress(**{**base, **kw})


def test_a_paused_batch_has_no_eta_and_a_runner_shows_its_own_spend():
    from batcher.views import progress_line
    running = progress_line(progress(), 200)
    assert "ETA 1m00s" in running and "780/1,000 cr" in running  # (alone: its spend is the batch's)
    paused = progress_line(progress(paused=True, elapsed=300.0), 200)
    assert "ETA paused" in paused and "ETA 1" not in paused
    shared = progress_line(progress(run_spent=Decimal(390)), 200)
    assert "390 cr, batch 780/1,000" in shared


def test_the_summary_says_what_this_run_spent_and_does_not_repeat_what_it_said():
    from batcher.run import RunReport
    from batcher.views import summary, summary_json
    said = "batch 'fleet' paused (`batcher pause` at 05:00:00): no new submissions until `batcher resume`"
    report = RunReport(batch="fleet", counts={"completed": 60}, spent=Decimal(780), held_jobs=0, held_cost=Decimal(0),
                       budget=None, elapsed=9.0, submitted=20, completed=20, stop_reason=None,
                       messages=[said, "a note said only here"], run_spent=Decimal(400), told=frozenset([said]))
    lines = summary(report, "out")
    assert lines[1].startswith("credits: 400 spent by this run (the batch: 780 spent); 20 submitted this run")
    assert said not in lines and "a note said only here" in lines
    data = summary_json(report, "out")
    assert data["credits_spent_this_run"] == 400 and data["credits_spent"] == 780 and said in data["messages"]
