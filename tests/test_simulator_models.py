"""The simulator serves several models, each from its description (batcher/simmodels.py): the
built-ins from their ModelSpec, and wan-2.5-t2v, a model batcher does not know, from a raw JSON
schema. Every submission is checked strictly against its model's schema and charged its own price."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batcher.models import HAPPYHORSE_11_R2V, HAPPYHORSE_R2V, MODELS, ModelSpec
from batcher.simulator import (
    WAN_T2V_SCHEMA,
    SimConfig,
    Simulator,
    SimulatorTransport,
    make_server,
    served_models,
)

BASE = "https://pixeldojo.ai"
AUTH = {"authorization": "Bearer sim-key"}
H10, H11, WAN = "happyhorse-1.0-r2v", "happyhorse-1.1-r2v", "wan-2.5-t2v"
REF = ["https://example.com/hero.png"]  # a placeholder: accepted unfetched


def get(sim: Simulator, path: str, headers: dict[str, str] = AUTH) -> tuple[int, Any]:
    answer = sim.handle("GET", BASE + path, headers, b"")
    return answer.status, json.loads(answer.body)


def run(sim: Simulator, model: str, body: Any) -> tuple[int, dict]:
    answer = sim.handle("POST", f"{BASE}/api/v1/models/{model}/run", AUTH, json.dumps(body).encode())
    return answer.status, json.loads(answer.body)


# --- listing and model info ----------------------------------------------------------------------

def test_the_list_names_every_model_and_detailed_adds_prices():
    sim = Simulator()
    status, plain = get(sim, "/api/v1/models")
    assert status == 200 and plain == {"models": [
        {"apiId": H10, "name": "Happy Horse 1.0 Reference to Video", "type": "video"},
        {"apiId": H11, "name": "Happy Horse 1.1 Reference to Video", "type": "video"},
        {"apiId": WAN, "name": "Wan 2.5 Text to Video", "type": "video"}]}
    status, detailed = get(sim, "/api/v1/models?detailed=true")
    assert status == 200
    assert [m["creditCost"] for m in detailed["models"]] == [
        {"default": 20, "type": "per_second", "amount": 4},
        {"default": 25, "type": "per_second", "amount": 5},
        {"default": 15, "type": "per_second", "amount": 3}]
    assert [{k: v for k, v in m.items() if k != "creditCost"} for m in detailed["models"]] == plain["models"]
    assert get(sim, "/api/v1/models?detailed=false")[1] == plain  # only `true` asks for prices
    assert get(sim, "/api/v1/models", headers={})[0] == 401


@pytest.mark.parametrize("api_id, schema", [
    (H10, HAPPYHORSE_R2V.json_schema()), (H11, HAPPYHORSE_11_R2V.json_schema()), (WAN, WAN_T2V_SCHEMA)])
def test_model_info_carries_its_request_schema(api_id, schema):
    sim = Simulator()
    status, info = get(sim, f"/api/v1/models/{api_id}")
    assert status == 200 and info["apiId"] == api_id and info["type"] == "video" and info["name"]
    assert info["creditCost"]["type"] == "per_second"
    assert info["requestSchema"] == schema and info["requestSchema"]["additionalProperties"] is False
    assert get(sim, f"/api/v1/models/{api_id}/schema") == (200, schema)
    assert (api_id in MODELS) == (api_id != WAN)  # batcher itself does not know wan-2.5-t2v
    assert get(sim, f"/api/v1/models/{api_id}", headers={})[0] == 401


def test_the_unknown_models_info_is_exactly_its_description():
    status, info = get(Simulator(), f"/api/v1/models/{WAN}")
    assert status == 200 and {k: v for k, v in info.items() if k != "requestSchema"} == {
        "apiId": WAN, "name": "Wan 2.5 Text to Video", "type": "video",
        "creditCost": {"default": 15, "type": "per_second", "amount": 3}}
    assert info["requestSchema"]["properties"]["cameraMotion"] == {"$ref": "#/$defs/motion"}


def test_an_unknown_model_is_404_model_not_found_everywhere():
    sim = Simulator()
    for status, answer in (get(sim, "/api/v1/models/wan-9-t2v"), get(sim, "/api/v1/models/wan-9-t2v/schema"),
                           run(sim, "wan-9-t2v", {"prompt": "a"})):
        assert status == 404 and answer["error"]["code"] == "model_not_found"
        assert "wan-9-t2v" in answer["error"]["message"]
    assert sim.record()["charged"] == 0 and sim.record()["runs_by_model"] == {}


def test_listed_prices_are_what_the_default_clip_is_charged():
    for model in served_models().values():
        schema = model.request_schema()
        minimal = {"prompt": "a", **({"reference_urls": REF} if "reference_urls" in schema["properties"] else {})}
        cost = model.info()["creditCost"]
        assert model.check(minimal) is None
        assert model.charge(minimal) == cost["default"] == cost["amount"] * 5, model.api_id


# --- submissions: each model accepted and charged its own price ----------------------------------

@pytest.mark.parametrize("model, body, cost", [
    (H10, {"prompt": "a", "reference_urls": REF}, 20),
    (H10, {"prompt": "a", "reference_urls": REF, "resolution": "1080p"}, 36),
    (H10, {"prompt": "a", "reference_urls": REF, "duration": 10}, 40),
    (H11, {"prompt": "a", "reference_urls": REF}, 25),
    (H11, {"prompt": "a", "reference_urls": REF, "resolution": "1080p", "duration": 8}, 72),
    (H11, {"prompt": "a", "reference_urls": REF, "duration": 3, "aspectRatio": "4:3", "seed": 7}, 15),
    (WAN, {"prompt": "a"}, 15),
    (WAN, {"prompt": "a", "resolution": "480p", "duration": 10}, 20),
    (WAN, {"prompt": "a", "resolution": "720p", "duration": 10}, 30),
    (WAN, {"prompt": "a", "resolution": "1080p"}, 30),
    (WAN, {"prompt": "a", "resolution": "1080p", "duration": 10, "negativePrompt": "blur", "aspectRatio": "9:16",
           "guidanceScale": 7.5, "enhancePrompt": False, "seed": None, "cameraMotion": "zoom-in",
           "styleTags": ["noir", "slow-motion"]}, 60),
])
def test_each_model_is_accepted_and_charged_its_own_price(model, body, cost):
    sim = Simulator(SimConfig(credits=1000))
    status, answer = run(sim, model, body)
    assert status == 202 and answer["creditCost"] == cost and answer["creditsRemaining"] == 1000 - cost
    record = sim.record()
    assert record["charged"] == cost and record["runs_by_model"] == {model: 1}
    assert [(j["model"], j["body"]) for j in record["jobs"]] == [(model, body)]


def test_sim_config_rates_still_price_happyhorse_10_only():
    sim = Simulator(SimConfig(rates={"720p": 10.0, "1080p": 20.0}))
    assert run(sim, H10, {"prompt": "a", "reference_urls": REF})[1]["creditCost"] == 50
    assert run(sim, H11, {"prompt": "a", "reference_urls": REF})[1]["creditCost"] == 25
    assert run(sim, WAN, {"prompt": "a"})[1]["creditCost"] == 15
    listed = {m["apiId"]: m["creditCost"] for m in get(sim, "/api/v1/models?detailed=true")[1]["models"]}
    assert listed[H10] == {"default": 50, "type": "per_second", "amount": 10}
    assert sim.record()["runs_by_model"] == {H10: 1, H11: 1, WAN: 1}


def test_references_are_judged_for_models_that_take_them_only():
    sim = Simulator()  # in-process: a host other than the simulator's cannot be reached
    status, answer = run(sim, H11, {"prompt": "a", "reference_urls": ["https://images.invalid.org/a.png"]})
    assert status == 400 and answer["error"]["code"] == "invalid_request"
    assert answer["error"]["message"].startswith("reference_urls[0]: ")
    assert served_models()[WAN].url_lists() == () and served_models()[H11].url_lists() == ("reference_urls",)
    assert run(sim, WAN, {"prompt": "https://images.invalid.org/a.png"})[0] == 202
    record = sim.record()
    assert record["charged"] == 15 and record["reference_fetches"] == 0 and record["runs_by_model"] == {H11: 1, WAN: 1}


# --- strict refusals of the model batcher does not know -------------------------------------------

@pytest.mark.parametrize("extra, field, fragment", [
    ({"aspect_ratio": "16:9"}, "aspect_ratio", "did you mean aspectRatio?"),
    ({"duration": 7}, "duration", "duration: 7 is not one of 5, 10"),
    ({"duration": 5.0}, "duration", "must be a whole number"),
    ({"resolution": "4k"}, "resolution", "'4k' is not one of 480p, 720p, 1080p"),
    ({"guidanceScale": 2.3}, "guidanceScale", "2.3 is not a multiple of 0.5"),
    ({"guidanceScale": 11}, "guidanceScale", "11 is above the maximum 10"),
    ({"enhancePrompt": "yes"}, "enhancePrompt", "must be true/false, got text 'yes'"),
    ({"styleTags": ["noir", "noir"]}, "styleTags", "'noir' appears more than once"),
    ({"styleTags": ["Noir!"]}, "styleTags[0]", "does not match the pattern"),
    ({"styleTags": ["a", "b", "c", "d", "e"]}, "styleTags", "the most is 4"),
    ({"cameraMotion": "spin"}, "cameraMotion", "'spin' is not one of static, pan-left, pan-right, zoom-in"),
    ({"seed": -1}, "seed", "below the minimum 0"),
    ({"seed": "42"}, "seed", "must be a whole number or nothing"),
    ({"prompt": ""}, "prompt", "must not be empty"),
    ({"prompt": "x" * 2001}, "prompt", "the most is 2000"),
])
def test_the_unknown_model_refuses_what_its_schema_refuses(extra, field, fragment):
    sim = Simulator()
    status, answer = run(sim, WAN, {"prompt": "a dog runs", **extra})
    message = answer["error"]["message"]
    assert status == 422 and answer["error"]["code"] == "invalid_request", answer
    assert field in message and fragment in message and "\n" not in message and len(message) < 200, message
    assert sim.record()["charged"] == 0 and sim.record()["jobs"] == []


def test_the_unknown_models_missing_prompt_and_non_object_body():
    sim = Simulator()
    assert run(sim, WAN, {"duration": 5})[1]["error"]["message"] == "Missing required parameter 'prompt'"
    assert run(sim, WAN, ["a dog"])[1]["error"]["message"] == "Body must be a JSON object"
    assert sim.record()["runs_by_model"] == {WAN: 2} and sim.record()["charged"] == 0


def test_one_rule_the_schema_for_every_model():
    """A built-in refuses a wan-only key, and wan refuses a built-in's key: each by its own schema."""
    models = served_models()
    assert "not accepted" in models[H10].check({"prompt": "a", "reference_urls": REF, "cameraMotion": "static"})
    assert "Unknown parameter 'reference_urls'" in models[WAN].check({"prompt": "a", "reference_urls": REF})
    assert models[H11].check({"prompt": "a", "reference_urls": REF, "duration": 16}) == \
        "duration must be at most 15, got 16"  # a built-in words it with its parameter table


# --- the built-ins: the schema check agrees with the simulator's former validate_body ----------

def former_validate_body(spec: ModelSpec, data: Any) -> str | None:
    """The simulator's validate_body before the schema check replaced it (kept here to compare)."""
    if not isinstance(data, dict):
        return "Body must be a JSON object"
    wire_names = {p.wire for p in spec.params}
    for key in data:
        if key not in wire_names:
            return f"Unknown parameter '{key}' (additional properties are not allowed)"
    for p in spec.params:
        if p.wire not in data:
            if p.required:
                return f"Missing required parameter '{p.wire}'"
            continue
        problem = p.check(data[p.wire])
        if problem:
            return problem.replace(p.name, p.wire, 1)
    return None


VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 20), st.sampled_from([2**31, 2**31 - 1, 5.0, 1.5]),
                   st.sampled_from(["", " ", "a", "720p", "1080p", "4k", "16:9", "4:3", "x" * 5001]),
                   st.lists(st.sampled_from(["https://example.com/a.png", "ftp://x/a.png", "a.png", 3]), max_size=10))
KEYS = st.sampled_from(["prompt", "reference_urls", "duration", "resolution", "aspectRatio", "negative_prompt",
                        "seed", "aspect_ratio", "references"])


@settings(max_examples=400, deadline=None)
@given(body=st.dictionaries(KEYS, VALUES, max_size=7), spec=st.sampled_from([HAPPYHORSE_R2V, HAPPYHORSE_11_R2V]))
def test_the_schema_check_accepts_and_refuses_as_the_former_validate_body(body, spec):
    former = former_validate_body(spec, body)
    if isinstance(body.get("prompt"), str) and body["prompt"] and not body["prompt"].strip():
        former = former_validate_body(spec, {**body, "prompt": "a"})  # the one difference: see below
    assert (served_models()[spec.api_id].check(body) is None) == (former is None), (body, former)


def test_whitespace_only_prompt_is_the_one_difference_from_the_former_check():
    """The served schema says `minLength: 1`; the former check also refused a prompt of spaces. The
    simulator now refuses only what the schema it serves refuses (batcher's manifest check still does)."""
    body = {"prompt": "   ", "reference_urls": REF}
    assert former_validate_body(HAPPYHORSE_R2V, body) == "prompt must not be empty"
    assert served_models()[H10].check(body) is None


# --- round trips for wan-2.5-t2v: over HTTP, and in-process through httpx ------------------------

@pytest.fixture
def served_sim() -> Iterator[tuple[Simulator, str]]:
    sim = Simulator(SimConfig(credits=100, render_seconds=0.05, render_jitter=0))
    server = make_server(sim)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield sim, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_wan_round_trip_over_http(served_sim):
    sim, base = served_sim
    with httpx.Client(base_url=base, headers=AUTH, timeout=10) as client:
        listed = client.get("/api/v1/models", params={"detailed": "true"}).json()["models"]
        assert {m["apiId"]: m["creditCost"]["amount"] for m in listed} == {H10: 4, H11: 5, WAN: 3}
        assert client.get(f"/api/v1/models/{WAN}").json()["requestSchema"] == WAN_T2V_SCHEMA
        refused = client.post(f"/api/v1/models/{WAN}/run", json={"prompt": "a fox", "aspect_ratio": "1:1"})
        assert refused.status_code == 422 and "aspect_ratio" in refused.json()["error"]["message"]
        submitted = client.post(f"/api/v1/models/{WAN}/run", json={"prompt": "a fox", "resolution": "480p"})
        assert submitted.status_code == 202 and submitted.json()["creditCost"] == 10
        job = submitted.json()
        assert job["statusUrl"] == f"{base}/api/v1/jobs/{job['jobId']}"
        deadline = time.monotonic() + 10
        while (status := client.get(job["statusUrl"]).json())["status"] != "completed":
            assert status["status"] in ("pending", "processing") and time.monotonic() < deadline, status
            time.sleep(0.02)
        video = httpx.get(status["output"]["video"], timeout=10)
        assert video.status_code == 200 and video.content == sim.clip(job["jobId"])
        record = client.get("/_sim/record").json()
    assert record["runs_by_model"] == {WAN: 2} and record["charged"] == 10 and record["credits"] == 90
    assert [j["model"] for j in record["jobs"]] == [WAN] and sim.record()["jobs"] == record["jobs"]


def test_wan_round_trip_in_process_through_httpx():
    clock = [0.0]
    sim = Simulator(SimConfig(credits=100, render_seconds=10, render_jitter=0), clock=lambda: clock[0])

    async def go() -> tuple[dict, dict, httpx.Response, dict]:
        async with httpx.AsyncClient(transport=SimulatorTransport(sim), base_url=BASE, headers=AUTH) as client:
            listed = (await client.get("/api/v1/models?detailed=true")).json()
            job = (await client.post(f"/api/v1/models/{WAN}/run",
                                     json={"prompt": "a fox", "duration": 10, "resolution": "1080p"})).json()
            assert (await client.get(job["statusUrl"])).json()["status"] == "pending"
            clock[0] += 11
            done = (await client.get(job["statusUrl"])).json()
            video = await client.get(done["output"]["video"])
            record = (await client.get("/_sim/record")).json()
            return listed, job, video, record

    listed, job, video, record = anyio.run(go)
    assert listed["models"][2] == {"apiId": WAN, "name": "Wan 2.5 Text to Video", "type": "video",
                                   "creditCost": {"default": 15, "type": "per_second", "amount": 3}}
    assert job["creditCost"] == 60 and job["creditsRemaining"] == 40
    assert video.status_code == 200 and video.content == sim.clip(job["jobId"])
    assert record["runs_by_model"] == {WAN: 1} and record["jobs"][0]["model"] == WAN
