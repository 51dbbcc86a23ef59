"""The simulator speaks the documented protocol, bills, refunds and breaks on demand."""
from __future__ import annotations

import json

import pytest

from batcher.simulator import Dropped, Refused, SimConfig, Simulator

BASE = "https://pixeldojo.ai"
AUTH = {"authorization": "Bearer sim-key"}
BODY = {"prompt": "a", "reference_urls": ["https://example.com/a.png"], "duration": 5, "resolution": "720p"}


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def submit(sim, body=BODY, headers=AUTH):
    return sim.handle("POST", f"{BASE}/api/v1/models/happyhorse-1.0-r2v/run", headers, json.dumps(body).encode())


def test_auth_is_required():
    answer = submit(Simulator(), headers={})
    assert answer.status == 401 and json.loads(answer.body)["error"]["code"] == "invalid_api_key"


def test_submit_answer_and_billing():
    sim = Simulator(SimConfig(credits=100))
    answer = submit(sim)
    data = json.loads(answer.body)
    assert answer.status == 202
    assert set(data) == {"jobId", "status", "statusUrl", "creditCost", "creditsRemaining", "expiresAt"}
    assert data["status"] == "pending" and data["creditCost"] == 20 and data["creditsRemaining"] == 80
    assert submit(sim, {**BODY, "resolution": "1080p"}).status == 202
    assert sim.record()["charged"] == 20 + 36


@pytest.mark.parametrize("body, fragment", [
    ({**BODY, "aspect_ratio": "16:9"}, "Unknown parameter 'aspect_ratio'"),
    ({k: v for k, v in BODY.items() if k != "prompt"}, "Missing required parameter 'prompt'"),
    ({**BODY, "duration": 20}, "at most 15"),
    ({**BODY, "reference_urls": []}, "at least 1"),
])
def test_strict_validation(body, fragment):
    answer = submit(Simulator(), body)
    assert answer.status == 422 and fragment in json.loads(answer.body)["error"]["message"]


def test_insufficient_credits_402_and_403():
    assert submit(Simulator(SimConfig(credits=10))).status == 402
    answer = submit(Simulator(SimConfig(credits=10, insufficient_status=403)))
    assert answer.status == 403 and json.loads(answer.body)["error"]["code"] == "insufficient_credits"


def test_lifecycle_and_expiring_output():
    clock = Clock()
    wall = Clock()
    sim = Simulator(SimConfig(render_seconds=10, render_jitter=0, url_ttl=60), clock=clock, wall=wall)
    job = json.loads(submit(sim).body)

    def status():
        return json.loads(sim.handle("GET", job["statusUrl"], AUTH, b"").body)

    assert status()["status"] == "pending"
    clock.t += 5
    assert status()["status"] == "processing"
    clock.t += 6
    done = status()
    assert done["status"] == "completed" and done["output"]["video"].startswith(f"{BASE}/pixeldojotemp/")
    video = sim.handle("GET", done["output"]["video"], {}, b"")
    assert video.status == 200 and video.body == sim.clip(job["jobId"]) and video.body[4:8] == b"ftyp"
    wall.t += 61
    assert sim.handle("GET", done["output"]["video"], {}, b"").status == 403
    fresh = status()["output"]["video"]
    assert fresh != done["output"]["video"] and sim.handle("GET", fresh, {}, b"").status == 200


def test_failed_renders_are_refunded():
    clock = Clock()
    sim = Simulator(SimConfig(render_seconds=1, render_jitter=0, fail_rate=1.0, credits=100), clock=clock)
    job = json.loads(submit(sim).body)
    assert sim.record()["credits"] == 80
    clock.t += 2
    data = json.loads(sim.handle("GET", job["statusUrl"], AUTH, b"").body)
    assert data["status"] == "failed" and data["error"]
    record = sim.record()
    assert record["credits"] == 100 and record["refunded"] == 20


def test_rate_limit_answers_429_with_retry_after():
    clock = Clock()
    sim = Simulator(SimConfig(rpm=3), clock=clock)
    answers = [sim.handle("GET", f"{BASE}/api/v1/models", AUTH, b"") for _ in range(4)]
    assert [a.status for a in answers] == [200, 200, 200, 429]
    assert int(answers[-1].headers["retry-after"]) >= 1
    clock.t += 61
    assert sim.handle("GET", f"{BASE}/api/v1/models", AUTH, b"").status == 200


def test_lost_answer_is_charged():
    sim = Simulator(SimConfig(lost_answer_rate=1.0))
    with pytest.raises(Dropped):
        submit(sim)
    record = sim.record()
    assert len(record["jobs"]) == 1 and record["charged"] == 20 and record["jobs"][0]["answer_lost"]


def test_faults_do_nothing_but_fail():
    for cfg, exc in ((SimConfig(drop_rate=1.0), Dropped), (SimConfig(refuse_rate=1.0), Refused)):
        sim = Simulator(cfg)
        with pytest.raises(exc):
            submit(sim)
        assert sim.record()["charged"] == 0
    sim = Simulator(SimConfig(error_rate=1.0))
    assert submit(sim).status == 503 and sim.record()["charged"] == 0
    sim = Simulator(SimConfig(malformed_rate=1.0))
    answer = submit(sim)
    assert answer.status == 200 and answer.body.startswith(b"<html") and sim.record()["charged"] == 0


def test_schema_endpoint_is_strict():
    answer = Simulator().handle("GET", f"{BASE}/api/v1/models/happyhorse-1.0-r2v/schema", AUTH, b"")
    schema = json.loads(answer.body)
    assert schema["additionalProperties"] is False
    assert schema["properties"]["aspectRatio"]["enum"] == ["16:9", "9:16", "1:1", "4:3", "3:4"]
    assert schema["required"] == ["prompt", "reference_urls"]
