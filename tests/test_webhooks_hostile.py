"""Webhooks under attack and under an API that behaves badly: replayed pokes, a refusal that quotes
the job's URL, a poke path with a trailing slash in the log, and a model rendering far longer than
its guess. Each test pins a finding of the hostile review of issue 17."""
from __future__ import annotations

import contextlib
import logging
import re
import threading

import anyio
import httpx
import pytest

import batcher.simulator.jobs as simulator_module
from batcher.policy import PollPlanner
from batcher.run.listener import ListenerLimits, PokeListener
from batcher.run.pokes import PokeBoard
from batcher.run.webhooks import Webhooks, job_url, key_of, make_secret
from batcher.simulator import SimConfig, Simulator

from .conftest import small_manifest
from .test_webhooks import free_port

KEY = "0123456789abcdef0123"
TOKEN_AFTER_KEY = re.compile(r"[0-9a-f]{20}(?:/|%2F|\\/)[0-9a-f]{8}")  # a job key, then (part of) its token


def test_a_burst_of_pokes_wakes_a_follower_a_few_times_not_once_each():
    async def main() -> int:
        board, wakes = PokeBoard(), [0]

        async def follow() -> None:
            while True:
                if await board.wait(KEY, 30.0):
                    wakes[0] += 1
        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            await anyio.sleep(0.01)
            for _ in range(100):
                board.poke(KEY)
                await anyio.sleep(0)
            await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
        return wakes[0]
    assert anyio.run(main) <= 2  # the first wakes at once; the rest wait out the gap together


def test_a_replayed_poke_url_costs_a_few_status_requests_not_one_per_poke(simrun, write):
    """A job's URL seen by someone (a reverse proxy's access log) and replayed as fast as they can
    all through its render: the run still asks the API about the job only a few times."""
    manifest = write("m.yaml", small_manifest(n_rows=1))
    sim = Simulator(SimConfig(render_seconds=1.5, render_jitter=0.0, seed=3, webhook_loss=1.0))
    answered: list[int] = []
    stop = threading.Event()

    def replay() -> None:
        with httpx.Client(timeout=2) as http:
            while not stop.is_set():
                for url in [j.webhook_url for j in list(sim.jobs.values()) if j.webhook_url]:
                    with contextlib.suppress(httpx.HTTPError):
                        answered.append(http.post(url, content=b"{}").status_code)
                stop.wait(0.005)
    thread = threading.Thread(target=replay, daemon=True)
    thread.start()
    try:
        report, s, _ = simrun(manifest, simulator=sim, concurrency=1, webhooks=Webhooks("127.0.0.1", free_port()))
    finally:
        stop.set()
        thread.join(5)
    assert report.counts["completed"] == 1
    assert answered.count(200) >= 20  # the replays were valid pokes ...
    assert s.record()["requests"].get("job", 0) <= 8  # ... yet cost a handful of status requests


def test_a_refusal_that_quotes_the_webhook_url_leaks_no_token(simrun, write, monkeypatch, caplog, tmp_path):
    """An API refusing the field may quote it (`webhook_url 'https://...' is not reachable`): the
    job's token must not reach the ledger, the log or the run's summary."""
    real = simulator_module.split_webhook

    def quoting(data):
        body, url, problem = real(data)
        if url is not None:
            return body, None, f"webhook_url {url!r} is not reachable from our network"
        return body, url, problem
    monkeypatch.setattr(simulator_module, "split_webhook", quoting)
    manifest = write("m.yaml", small_manifest(n_rows=2))
    sim = Simulator(SimConfig(render_seconds=0.1, render_jitter=0.0, seed=3))
    with caplog.at_level(logging.DEBUG, logger="batcher"):
        report, s, ledger = simrun(manifest, simulator=sim, concurrency=1, webhooks=Webhooks("127.0.0.1", 0))
    assert report.counts["completed"] == 2 and s.record()["run_bodies"] == 3  # refused once, then polled
    said = [m for m in report.messages if "refused a webhook URL" in m]
    assert len(said) == 1 and "[token]" in said[0]
    stored = b"".join(p.read_bytes() for p in tmp_path.glob(ledger.name + "*")).decode("latin-1")
    for text in (*report.messages, caplog.text, stored):
        assert not TOKEN_AFTER_KEY.search(text)


def test_a_poke_with_a_trailing_slash_keeps_its_token_out_of_the_log(caplog):
    secret = make_secret()
    path = job_url("/hooks", secret, "b", KEY) + "/"

    async def main() -> int:
        listener = PokeListener("127.0.0.1", 0, lambda p: key_of(p, secret, "b"), lambda key: None,
                                ListenerLimits(read_timeout=1.0))
        async with anyio.create_task_group() as tg:
            port = await tg.start(listener.serve)
            async with httpx.AsyncClient() as client:
                answer = await client.post(f"http://127.0.0.1:{port}{path}", content=b"{}")
            tg.cancel_scope.cancel()
        return answer.status_code
    with caplog.at_level(logging.DEBUG, logger="batcher.webhooks"):
        assert anyio.run(main) == 200  # a valid poke (the check ignores the slash) ...
    assert "webhook poke" in caplog.text
    assert path.rstrip("/").rpartition("/")[2] not in caplog.text  # ... logged without its token


def polls_until(render: float, due) -> int:
    t, n = 0.0, 0
    while t < render:
        t, n = due(t, n), n + 1
    return n


@pytest.mark.parametrize("guess", [5.0, 10.0, 60.0])
def test_an_unmeasured_model_rendering_ten_times_its_guess_is_polled_no_more_than_without_webhooks(guess):
    """Nothing learned yet and renders ten times the guess, webhooks arriving: the safety net must
    not poll more than polling mode would with no webhooks at all."""
    planner = PollPlanner(guesses={"m": guess})
    polling = polls_until(10 * guess, lambda t, n: planner.next_poll(("m",), t, n))
    fresh = PollPlanner(guesses={"m": guess})  # (next_poll above counts running renders in its planner)
    safety = polls_until(10 * guess, lambda t, n: fresh.safety_poll(("m",), t, 0.05))
    assert safety <= polling
