"""The simulator delivers webhooks as a real service would: at least once, lost, late, twice or
replayed on demand, retried when the receiver fails; a webhook_url never costs a strict schema."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from batcher.simulator import Journal, SimConfig, Simulator, SimulatorTransport, make_server

from .conftest import serving

BASE = "https://pixeldojo.ai"
AUTH = {"authorization": "Bearer sim-key"}
BODY = {"prompt": "a", "reference_urls": ["https://example.com/a.png"], "duration": 5, "resolution": "720p"}
WAIT = 20.0  # the most any test waits for something to arrive: a hang bound, not a speed claim


class Receiver:
    """A webhook receiver on 127.0.0.1 recording every request; answers 500 to its first `failures`."""

    def __init__(self, failures: int = 0):
        self.failures = failures
        self.got: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                at = time.monotonic()
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver.cond:
                    status = 500 if len(receiver.got) < receiver.failures else 200
                    receiver.got.append({"at": at, "path": self.path, "status": status, "body": json.loads(body),
                                         "content_type": self.headers.get("content-type")})
                    receiver.cond.notify_all()
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def wait(self, n: int) -> list[dict[str, Any]]:
        """The first `n` requests received (fails if they do not come)."""
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.got) >= n, WAIT), f"{len(self.got)} of {n} webhooks came"
            return list(self.got)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def _make(failures: int = 0) -> Receiver:
        made.append(Receiver(failures))
        return made[-1]
    yield _make
    for r in made:
        r.close()


@pytest.fixture
def sim():
    made: list[Simulator] = []

    def _make(**config: Any) -> Simulator:
        config.setdefault("render_seconds", 0.05)
        config.setdefault("render_jitter", 0.0)
        made.append(Simulator(SimConfig(**config)))
        return made[-1]
    yield _make
    for s in made:
        s.close()


def submit(sim: Simulator, body: dict[str, Any], model: str = "happyhorse-1.0-r2v") -> tuple[int, dict[str, Any]]:
    answer = sim.handle("POST", f"{BASE}/api/v1/models/{model}/run", AUTH, json.dumps(body).encode())
    return answer.status, json.loads(answer.body)


def replay(sim: Simulator, job_id: str, headers: dict[str, str] = AUTH) -> tuple[int, dict[str, Any]]:
    answer = sim.handle("POST", f"{BASE}/api/v1/jobs/{job_id}/replay-webhook", headers, b"")
    return answer.status, json.loads(answer.body)


def wait_until(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, "the simulator never got there"
        time.sleep(0.02)


def wait_ended(sim: Simulator, job_id: str) -> None:
    wait_until(lambda: sim.clock() >= sim.jobs[job_id].ends)


@pytest.mark.parametrize("fail_rate, status", [(0.0, "completed"), (1.0, "failed")])
def test_delivered_once_when_the_render_ends(sim, receiver, fail_rate, status):
    s, r = sim(fail_rate=fail_rate), receiver()
    code, job = submit(s, {**BODY, "webhook_url": r.url("/hooks/k1?t=abc")})
    assert code == 202
    (got,) = r.wait(1)
    assert got["path"] == "/hooks/k1?t=abc" and got["content_type"] == "application/json"
    assert got["body"]["jobId"] == job["jobId"] and got["body"]["status"] == status
    assert got["body"]["creditCost"] == job["creditCost"] == 20
    assert got["at"] >= s.jobs[job["jobId"]].ends  # never before the render ends (one clock: monotonic)
    if status == "completed":
        video = s.handle("GET", got["body"]["output"]["video"], {}, b"")  # a fresh URL that serves the clip
        assert video.status == 200 and video.body[4:8] == b"ftyp"
    else:
        assert got["body"]["error"] and "output" not in got["body"]
    wait_until(lambda: s.record()["webhooks"]["delivered"] == 1)
    counts = s.record()["webhooks"]
    assert counts == {"scheduled": 1, "delivered": 1, "lost": 0, "duplicated": 0, "retried": 0, "given_up": 0,
                      "replayed": 0}


def test_a_delay_holds_the_delivery_after_the_render_end(sim, receiver):
    s, r = sim(webhook_delay=0.3), receiver()
    _, job = submit(s, {**BODY, "webhook_url": r.url()})
    (got,) = r.wait(1)
    assert got["at"] >= s.jobs[job["jobId"]].ends + 0.3 * 0.8


@pytest.mark.parametrize("model, body", [
    ("happyhorse-1.0-r2v", BODY),
    ("wan-2.5-t2v", {"prompt": "a river", "duration": 5}),
])
def test_a_strict_schema_still_takes_the_body_and_charges_once(sim, receiver, model, body):
    s, r = sim(), receiver()
    schema = json.loads(s.handle("GET", f"{BASE}/api/v1/models/{model}/schema", AUTH, b"").body)
    assert schema["additionalProperties"] is False and "webhook_url" not in schema["properties"]
    code, job = submit(s, {**body, "webhook_url": r.url()}, model)
    assert code == 202
    record = s.record()
    assert len(record["jobs"]) == 1 and record["charged"] == job["creditCost"]
    assert "webhook_url" not in record["jobs"][0]["body"] and s.jobs[job["jobId"]].webhook_url == r.url()
    assert r.wait(1)[0]["body"]["jobId"] == job["jobId"]


@pytest.mark.parametrize("url, fragment", [
    ("ftp://127.0.0.1/hook", "http or https"),
    ("/hooks/relative", "http or https"),
    ("http://", "http or https"),
    ("http://127.0.0.1/" + "a" * 2040, "over 2048"),
    ("http://127.0.0.1/a b", "spaces or control"),
    (42, "must be a string"),
    (None, "must be a string"),
    (["http://127.0.0.1/"], "must be a string"),
])
def test_a_bad_webhook_url_is_refused_and_costs_nothing(sim, url, fragment):
    s = sim()
    code, answer = submit(s, {**BODY, "webhook_url": url})
    assert code == 422 and answer["error"]["code"] == "invalid_request"
    assert "webhook_url" in answer["error"]["message"] and fragment in answer["error"]["message"]
    record = s.record()
    assert record["charged"] == 0 and record["jobs"] == [] and record["webhooks"]["scheduled"] == 0


def test_without_webhooks_the_field_is_an_unknown_parameter(sim, receiver):
    s = sim(webhooks=False)
    code, answer = submit(s, {**BODY, "webhook_url": receiver().url()})
    assert code == 422 and answer["error"]["code"] == "invalid_request"
    assert "Unknown parameter 'webhook_url'" in answer["error"]["message"]
    assert s.record()["charged"] == 0
    assert submit(s, BODY)[0] == 202  # the same body without it is taken


def test_lost_webhooks_are_never_sent(sim, receiver):
    s, r = sim(webhook_loss=1.0), receiver()
    jobs = [submit(s, {**BODY, "webhook_url": r.url(f"/hook/{i}")})[1]["jobId"] for i in range(3)]
    for job_id in jobs:
        wait_ended(s, job_id)
    assert replay(s, jobs[1])[0] == 202  # a replay is never lost: it comes after any first delivery would
    got = r.wait(1)
    wait_until(lambda: s.record()["webhooks"]["delivered"] == 1)
    assert [g["body"]["jobId"] for g in r.got] == [jobs[1]] and got[0]["path"] == "/hook/1"
    counts = s.record()["webhooks"]
    assert counts["scheduled"] == 3 and counts["lost"] == 3 and counts["replayed"] == 1


def test_duplicated_webhooks_come_twice(sim, receiver):
    s, r = sim(webhook_duplicate=1.0), receiver()
    _, job = submit(s, {**BODY, "webhook_url": r.url()})
    got = r.wait(2)
    assert [g["body"]["jobId"] for g in got] == [job["jobId"]] * 2
    assert got[0]["body"]["output"]["video"] != got[1]["body"]["output"]["video"]  # each minted afresh
    wait_until(lambda: s.record()["webhooks"]["delivered"] == 2)
    assert s.record()["webhooks"]["duplicated"] == 1


def test_a_failing_receiver_gets_it_on_a_later_try(sim, receiver):
    s, r = sim(), receiver(failures=2)
    _, job = submit(s, {**BODY, "webhook_url": r.url()})
    got = r.wait(3)
    assert [g["status"] for g in got] == [500, 500, 200] and {g["body"]["jobId"] for g in got} == {job["jobId"]}
    assert got[1]["at"] - got[0]["at"] >= 0.5 * 0.9  # backed off, not hammered
    wait_until(lambda: s.record()["webhooks"]["delivered"] == 1)
    counts = s.record()["webhooks"]
    assert counts["retried"] == 2 and counts["given_up"] == 0


def test_a_receiver_that_never_takes_it_is_given_up_after_six_tries(sim, receiver):
    s, r = sim(), receiver(failures=1000)
    s.webhooks.backoff = (0.01,) * 5  # the same six tries, sooner
    submit(s, {**BODY, "webhook_url": r.url()})
    wait_until(lambda: s.record()["webhooks"]["given_up"] == 1)
    counts = s.record()["webhooks"]
    assert len(r.got) == 6 and counts["retried"] == 5 and counts["delivered"] == 0


def test_an_unreachable_receiver_is_retried_then_given_up(sim, receiver):
    r = receiver()
    url = r.url()
    r.close()  # nothing listens there any more: connection refused
    s = sim()
    s.webhooks.backoff = (0.01,) * 5
    submit(s, {**BODY, "webhook_url": url})
    wait_until(lambda: s.record()["webhooks"]["given_up"] == 1)
    assert s.record()["webhooks"]["retried"] == 5


def test_replay_delivers_once_more(sim, receiver):
    s, r = sim(), receiver()
    _, job = submit(s, {**BODY, "webhook_url": r.url()})
    r.wait(1)
    code, answer = replay(s, job["jobId"])
    assert code == 202 and answer == {"jobId": job["jobId"], "replayed": True}
    got = r.wait(2)
    assert got[1]["body"]["jobId"] == job["jobId"] and got[1]["body"]["status"] == "completed"
    assert replay(s, job["jobId"], headers={})[0] == 401
    wait_until(lambda: s.record()["webhooks"]["delivered"] == 2)
    counts = s.record()["webhooks"]
    assert counts["replayed"] == 1 and counts["scheduled"] == 1
    assert s.record()["requests"]["replay"] == 2


def test_replay_refusals(sim, receiver):
    s, r = sim(render_seconds=600), receiver()
    _, rendering = submit(s, {**BODY, "webhook_url": r.url()})
    code, answer = replay(s, rendering["jobId"])
    assert code == 409 and "not finished" in answer["error"]["message"]
    assert replay(s, "job_0000000000000000")[0] == 404
    quick = sim()
    _, plain = submit(quick, BODY)
    wait_ended(quick, plain["jobId"])
    code, answer = replay(quick, plain["jobId"])
    assert code == 400 and "without a webhook_url" in answer["error"]["message"]
    assert s.record()["webhooks"]["replayed"] == quick.record()["webhooks"]["replayed"] == 0


def test_a_restarted_simulator_still_delivers_for_jobs_rendering(tmp_path: Path, receiver):
    r = receiver()
    path = tmp_path / "sim.jsonl"
    first = Simulator(SimConfig(render_seconds=1.0, render_jitter=0.0))
    first.journal = Journal(path)
    _, job = submit(first, {**BODY, "webhook_url": r.url()})
    first.close()  # stopped before the render ends: its delivery goes with it
    first.journal.close()
    again = Simulator(SimConfig())
    try:
        assert Journal(path).replay(again) == 1
        (got,) = r.wait(1)
        assert got["body"]["jobId"] == job["jobId"] and got["at"] >= again.jobs[job["jobId"]].ends - 0.01
        assert again.record()["webhooks"]["scheduled"] == 1
    finally:
        again.close()


def test_in_process_transport_delivers(sim, receiver):
    s, r = sim(), receiver()

    async def go() -> dict[str, Any]:
        async with httpx.AsyncClient(transport=SimulatorTransport(s), base_url=BASE, headers=AUTH) as client:
            answer = await client.post("/api/v1/models/happyhorse-1.0-r2v/run", json={**BODY, "webhook_url": r.url()})
            assert answer.status_code == 202
            return answer.json()

    job = anyio.run(go)
    assert r.wait(1)[0]["body"]["jobId"] == job["jobId"]


def test_over_http_delivery_replay_and_record(sim, receiver):
    s, r = sim(), receiver()
    with serving(s) as base, httpx.Client(base_url=base, headers=AUTH, trust_env=False) as client:
        answer = client.post("/api/v1/models/happyhorse-1.0-r2v/run", json={**BODY, "webhook_url": r.url()})
        assert answer.status_code == 202
        job_id = answer.json()["jobId"]
        (got,) = r.wait(1)
        assert got["body"]["jobId"] == job_id and got["body"]["output"]["video"].startswith(f"{base}/pixeldojotemp/")
        assert client.get(got["body"]["output"]["video"]).status_code == 200
        replayed = client.post(f"/api/v1/jobs/{job_id}/replay-webhook")
        assert replayed.status_code == 202 and replayed.json()["replayed"] is True
        assert r.wait(2)[1]["body"]["jobId"] == job_id
        wait_until(lambda: client.get("/_sim/record").json()["webhooks"]["delivered"] == 2)


def test_a_server_closes_with_deliveries_pending(receiver):
    r = receiver()
    s = Simulator(SimConfig(render_seconds=600))
    server = make_server(s)
    serve = threading.Thread(target=server.serve_forever, daemon=True)
    serve.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    with httpx.Client(base_url=base, headers=AUTH, trust_env=False) as client:
        for _ in range(3):
            assert client.post("/api/v1/models/happyhorse-1.0-r2v/run",
                               json={**BODY, "webhook_url": r.url()}).status_code == 202
    workers = list(s.webhooks._threads)
    assert workers and all(t.is_alive() for t in workers)
    server.shutdown()
    server.server_close()
    serve.join(WAIT)
    assert not serve.is_alive() and not any(t.is_alive() for t in workers)
    assert s.record()["webhooks"]["scheduled"] == 3 and r.got == []
