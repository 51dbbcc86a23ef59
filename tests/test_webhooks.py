"""Webhooks as an accelerator, polling as the safety net: runs against the simulator, which
delivers each job's webhook over loopback to the run's own listener (lost, late or twice on demand)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading

import httpx
import pytest

from batcher.ledger import Ledger
from batcher.run.webhooks import Webhooks, make_secret
from batcher.simulator import SimConfig, Simulator

from .conftest import small_manifest

HOOKS = Webhooks("127.0.0.1", 0)  # any free port; the listen address is the base the simulator posts to


def sim(**config) -> Simulator:
    return Simulator(SimConfig(**{"render_seconds": 0.3, "render_jitter": 0.2, "seed": 3, **config}))


def nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {state: n for state, n in counts.items() if n}


def polls(record: dict) -> int:
    return record["requests"].get("job", 0)


def test_webhooks_announce_every_job_and_save_polls(simrun, write, tmp_path):
    manifest = write("m.yaml", small_manifest(n_rows=16))
    hooked, s1, _ = simrun(manifest, simulator=sim(), concurrency=4, webhooks=HOOKS)
    polled, s2, _ = simrun(manifest, simulator=sim(), concurrency=4, ledger=tmp_path / "polled.db",
                           out_dir=tmp_path / "polled")
    assert nonzero(hooked.counts) == {"completed": 16} and nonzero(polled.counts) == {"completed": 16}
    r1, r2 = s1.record(), s2.record()
    assert r1["webhooks"]["delivered"] == 16
    assert hooked.webhooks is not None and hooked.webhooks.pokes >= 16
    assert hooked.webhooks.announced + hooked.webhooks.missed == 16 and hooked.webhooks.announced >= 12
    assert polls(r1) < polls(r2)  # the pokes replaced polls ...
    assert polls(r1) <= 16 * 1.5  # ... down to about one status request a job
    assert r1["charged"] == r2["charged"] and len(r1["jobs"]) == 16  # each job paid once
    body = r1["jobs"][0]["body"]
    assert "webhook_url" not in body  # the simulator keeps the URL apart from the parameters


def test_every_job_completes_when_every_webhook_is_lost(simrun, write):
    manifest = write("m.yaml", small_manifest(n_rows=8))
    report, s, _ = simrun(manifest, simulator=sim(webhook_loss=1.0), concurrency=4, webhooks=HOOKS)
    assert nonzero(report.counts) == {"completed": 8}
    assert s.record()["webhooks"]["lost"] == 8 and report.webhooks is not None
    assert report.webhooks.pokes == 0 and report.webhooks.missed == 8  # the safety polls found them all


def test_duplicate_and_late_webhooks_are_harmless(simrun, write, tmp_path):
    manifest = write("m.yaml", small_manifest(n_rows=8))
    report, s, _ = simrun(manifest, simulator=sim(webhook_duplicate=1.0, webhook_delay=0.2), concurrency=4,
                          webhooks=HOOKS)
    rec = s.record()
    assert nonzero(report.counts) == {"completed": 8} and len(rec["jobs"]) == 8  # nothing sent twice
    assert rec["webhooks"]["duplicated"] == 8
    assert len(list((tmp_path / "out").glob("*.mp4"))) == 8  # each video once


def test_an_api_that_refuses_the_field_is_polled_and_the_run_says_so_once(simrun, write):
    manifest = write("m.yaml", small_manifest(n_rows=6))
    report, s, _ = simrun(manifest, simulator=sim(webhooks=False), concurrency=3, webhooks=HOOKS)
    rec = s.record()
    assert nonzero(report.counts) == {"completed": 6}
    assert len(rec["jobs"]) == 6 and rec["charged"] == 6 * 20  # refusals cost nothing, each job paid once
    said = [m for m in report.messages if "webhook" in m]
    assert len(said) == 1 and "happyhorse-1.0-r2v" in said[0] and "polled instead" in said[0]
    assert report.webhooks is not None and report.webhooks.refused == ("happyhorse-1.0-r2v",)
    # at most one refused POST per job in flight before the first acceptance without the field
    assert rec["run_bodies"] <= 6 + 3


def test_a_job_refused_for_its_own_sake_fails_and_the_model_keeps_its_webhooks(simrun, write):
    """A job the API refuses for itself (a reference it cannot fetch) is sent once more without the
    URL, refused again, and fails with the API's reason; the other jobs keep their webhooks."""
    manifest = write("m.yaml", small_manifest(n_rows=4) + "  - prompt: 'the bad one'\n"
                                                          "    references: [http://127.0.0.1:9/gone.png]\n")
    report, s, _ = simrun(manifest, simulator=sim(), concurrency=1, webhooks=HOOKS, preflight=False)
    rec = s.record()
    assert nonzero(report.counts) == {"completed": 4, "failed": 1}
    assert rec["run_bodies"] == 4 + 2 and rec["charged"] == 4 * 20  # the refusals cost nothing
    assert report.webhooks is not None and report.webhooks.refused == ()
    assert report.webhooks.announced >= 1 and not [m for m in report.messages if "webhook" in m]
    (reason,) = [r for st, r, _, _ in report.failures if st == "failed"]
    assert "gone.png: cannot be reached" in reason


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_forged_pokes_get_404_and_cost_nothing(simrun, write, tmp_path):
    """Pokes with a real job's key and a wrong token, sent all through a run whose webhooks are all
    lost: every one is answered 404, and the run counts no poke."""
    manifest = write("m.yaml", small_manifest(n_rows=4))
    port = free_port()
    answers: list[int] = []
    stop = threading.Event()

    def forge() -> None:
        with httpx.Client(timeout=2) as http:
            while not stop.is_set():
                try:
                    answers.append(http.post(f"http://127.0.0.1:{port}/hooks/{'0' * 20}/{'a' * 32}",
                                             content=b"{}").status_code)
                    answers.append(http.post(f"http://127.0.0.1:{port}/anything", content=b"x").status_code)
                except httpx.HTTPError:
                    pass
                stop.wait(0.02)
    thread = threading.Thread(target=forge, daemon=True)
    thread.start()
    try:
        report, _, _ = simrun(manifest, simulator=sim(webhook_loss=1.0, render_seconds=0.5), concurrency=4,
                              webhooks=Webhooks("127.0.0.1", port))
    finally:
        stop.set()
        thread.join(5)
    assert nonzero(report.counts) == {"completed": 4}
    assert answers and set(answers) == {404}
    assert report.webhooks is not None and report.webhooks.pokes == 0


@pytest.mark.slow
def test_webhooks_on_both_backends_share_one_secret(ledger_url, simrun, write):
    manifest = write("m.yaml", small_manifest(n_rows=6))
    report, s, _ = simrun(manifest, simulator=sim(), concurrency=3, webhooks=HOOKS, ledger=ledger_url)
    assert nonzero(report.counts) == {"completed": 6} and s.record()["webhooks"]["delivered"] == 6
    with Ledger(ledger_url) as ledger:
        first = ledger.write(ledger.webhook_secret("small", make_secret))
        assert ledger.write(ledger.webhook_secret("small", make_secret)) == first  # every runner gets the first one
        batch = ledger.batch("small")
        assert batch is not None and first not in repr(batch)
    hooks = {j["job_id"]: j for j in s.record()["jobs"]}
    assert len(hooks) == 6


def test_the_secret_is_in_no_output_log_or_export(tmp_path, write):
    """A whole `batcher run --simulate` with webhooks: its secret (in the ledger) appears in nothing
    it prints, logs or exports."""
    manifest = write("m.yaml", small_manifest(n_rows=3))
    ledger = tmp_path / "l.db"
    base = [sys.executable, "-m", "batcher"]
    done = subprocess.run([*base, "run", str(manifest), "--simulate", "--ledger", str(ledger), "--out",
                           str(tmp_path / "out"), "--sim-render-seconds", "0.2", "--expected-render", "0.2",
                           "--webhook-listen", "127.0.0.1:0", "-v", "--log-json", str(tmp_path / "log.jsonl"),
                           "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["webhooks"]["announced"] + summary["webhooks"]["missed"] == 3
    with Ledger(ledger) as led:
        secret = led.write(led.webhook_secret("small", make_secret))
    exported = subprocess.run([*base, "export", str(manifest), "--ledger", str(ledger), "--format", "jsonl"],
                              capture_output=True, text=True, timeout=60)
    status = subprocess.run([*base, "status", str(manifest), "--ledger", str(ledger), "--json"],
                            capture_output=True, text=True, timeout=60)
    for text in (done.stdout, done.stderr, (tmp_path / "log.jsonl").read_text(), exported.stdout,
                 exported.stderr, status.stdout):
        assert secret not in text


def test_a_remote_api_needs_a_public_url(tmp_path, write):
    """The listen address cannot be reached by an API on another host: refused before anything."""
    manifest = write("m.yaml", small_manifest(n_rows=1))
    env = {**os.environ, "PIXELDOJO_API_KEY": "k"}
    done = subprocess.run([sys.executable, "-m", "batcher", "run", str(manifest), "--api-base",
                           "https://api.example.com", "--ledger", str(tmp_path / "l.db"), "--webhook-listen",
                           "127.0.0.1:0"], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2
    assert "needs --webhook-url" in done.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("args, says", [
    (["--webhook-url", "https://p.example/h"], "--webhook-url needs --webhook-listen"),
    (["--webhook-listen", "nonsense"], "--webhook-listen"),
    (["--webhook-listen", "127.0.0.1:0", "--webhook-url", "ftp://p.example/h"], "--webhook-url"),
    (["--webhook-listen", "0.0.0.0:0"], "needs --webhook-url"),  # all interfaces: no address to give the API
])
def test_bad_webhook_options_are_one_line_and_exit_2(tmp_path, write, args, says):
    manifest = write("m.yaml", small_manifest(n_rows=1))
    done = subprocess.run([sys.executable, "-m", "batcher", "run", str(manifest), "--simulate", "--ledger",
                           str(tmp_path / "l.db"), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert says in last and "Traceback" not in done.stderr
