"""A finished job's output is read as PixelDojo's own scripts read it (output.video, else
output.videos[0]; output.image, else output.images[0]), and any other shape fails loudly, redacted."""
from __future__ import annotations

import json
import re

import anyio
import httpx
import pytest

from batcher import api
from batcher.client import OUTPUT_SHAPES, OutputURL, PixelDojoClient, output_url
from batcher.errors import MalformedAnswer
from batcher.ledger import Ledger
from batcher.policy import RetryPolicy
from batcher.run import RunOptions
from batcher.simulator import SimConfig, Simulator, SimulatorTransport

from .conftest import small_manifest

V = "https://temp.pixeldojo.ai/pixeldojotemp/v.mp4"
IMG = "https://temp.pixeldojo.ai/pixeldojotemp/i.png"
KEY = "sk-test/9f8e+7d6c=5b4a"
BASE = "https://pixeldojo.ai"


# --- the rule, pure ---------------------------------------------------------------------------

@pytest.mark.parametrize("output, url, where", [
    ({"video": V}, V, "output.video"),
    ({"videos": [V, "https://other.example/2.mp4"]}, V, "output.videos[0]"),
    ({"videos": [{"url": V, "width": 1280}]}, V, "output.videos[0].url"),
    ({"image": IMG}, IMG, "output.image"),
    ({"images": [IMG]}, IMG, "output.images[0]"),
    ({"images": [{"url": IMG}]}, IMG, "output.images[0].url"),
    ({"video": V, "videos": ["https://x.example/no.mp4"]}, V, "output.video"),  # video first
    ({"video": V, "image": IMG}, V, "output.video"),
    ({"videos": [V], "image": IMG}, V, "output.videos[0]"),
    ({"video": None, "videos": [V]}, V, "output.videos[0]"),  # null is absent
    ({"video": "http://127.0.0.1:8080/v.mp4"}, "http://127.0.0.1:8080/v.mp4", "output.video"),
])
def test_the_documented_shapes_give_their_url(output, url, where):
    assert output_url(output) == OutputURL(url, where)


@pytest.mark.parametrize("output, problem", [
    (None, "the answer has no output"),
    ("https://x.example/v.mp4", "output is text, not an object"),
    ([V], "output is a list, not an object"),
    ({}, "output has no video, videos, image or images"),
    ({"url": V, "file": V}, "output has no video, videos, image or images"),
    ({"video": 5}, "output.video is a number, not a URL"),
    ({"video": {"url": V}}, "output.video is a mapping, not a URL"),
    ({"video": ""}, "output.video is not an http or https URL"),
    ({"video": "file:///etc/passwd"}, "output.video is not an http or https URL"),
    ({"video": "/pixeldojotemp/v.mp4"}, "output.video is not an http or https URL"),
    ({"videos": []}, "output.videos is empty"),
    ({"videos": V}, "output.videos is text, not a list"),
    ({"videos": {"0": V}}, "output.videos is a mapping, not a list"),
    ({"videos": [5, V]}, "output.videos[0] is a number, not a URL"),
    ({"videos": [None, V]}, "output.videos[0] is nothing, not a URL"),
    ({"videos": [{"href": V}]}, "output.videos[0].url is nothing, not a URL"),
    ({"videos": [{"url": 7}]}, "output.videos[0].url is a number, not a URL"),
    ({"video": 5, "videos": [V]}, "output.video is a number, not a URL"),  # a wrong video is not skipped
    ({"videos": [], "image": IMG}, "output.videos is empty"),
    ({"images": [[IMG]]}, "output.images[0] is a list, not a URL"),
])
def test_any_other_shape_is_a_problem_named(output, problem):
    found = output_url(output)
    assert found.url is None and found.problem == problem


# --- through the client ---------------------------------------------------------------------------

class Answering(httpx.AsyncBaseTransport):
    """Answers every request with one status body (as JSON unless it is bytes)."""

    def __init__(self, body):
        self.body = body

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if isinstance(self.body, bytes):
            return httpx.Response(200, content=self.body, headers={"content-type": "application/json"})
        return httpx.Response(200, json=self.body)


def poll(body):
    async def go():
        async with PixelDojoClient(KEY, BASE, transport=Answering(body)) as client:
            return await client.status("job_1", f"{BASE}/api/v1/jobs/job_1")
    return anyio.run(go)


def completed(output) -> dict:
    return {"jobId": "job_1", "status": "completed", "output": output, "creditCost": 20}


@pytest.mark.parametrize("output", [{"video": V}, {"videos": [V]}, {"videos": [{"url": V}]}, {"images": [IMG]}])
def test_a_completed_answer_in_any_documented_shape_gives_the_url(output):
    status = poll(completed(output))
    assert status.done and status.video_url in (V, IMG)


@pytest.mark.parametrize("body", [
    {"jobId": "job_1", "status": "completed"},
    completed(None), completed({}), completed([V]), completed({"videos": []}), completed({"videos": [3]}),
    completed({"video": {"url": V}}),
])
def test_a_completed_answer_without_a_usable_url_fails_loudly(body):
    status = poll(body)
    assert status.video_url is None and status.output_problem is not None
    message = status.output_problem
    assert "the completed job's output is unusable (" in message and OUTPUT_SHAPES in message
    assert "HTTP 200 application/json: " in message and "completed" in message  # the body, shortly
    assert "\n" not in message and len(message) < 600


def test_the_body_named_in_the_error_is_redacted():
    body = completed({"videos": [], "debug": f"Authorization: Bearer {KEY}"})
    problem = poll(body).output_problem or ""
    assert KEY not in problem and "[redacted]" in problem
    assert "output.videos is empty" in problem


@pytest.mark.parametrize("output, where", [
    ({"video": f"{V}?k={KEY}"}, "output.video"),
    ({"videos": [{"url": f"{V}?token={KEY}"}]}, "output.videos[0].url"),
    ({"images": [f"{IMG}?sig={KEY}"]}, "output.images[0]"),
])
def test_an_output_url_carrying_the_key_is_refused_in_every_shape(output, where):
    with pytest.raises(MalformedAnswer, match=rf"^{re.escape(where)} carries the API key") as info:
        poll(completed(output))
    assert KEY not in str(info.value)


@pytest.mark.parametrize("status", ["pending", "processing", "failed", "queued_upstream"])
def test_output_is_not_read_before_a_job_completes(status):
    answer = poll({"jobId": "job_1", "status": status, "output": {"videos": []}, "error": "boom"})
    assert answer.video_url is None


# --- a whole run, the simulator's answers reshaped -------------------------------------------------

class Reshaping(httpx.AsyncBaseTransport):
    """The simulator, with each completed job's `output: {video: URL}` rewritten by `reshape`."""

    def __init__(self, simulator: Simulator, reshape):
        self.inner, self.reshape = SimulatorTransport(simulator), reshape

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method != "GET" or not request.url.path.startswith("/api/v1/jobs/"):
            return response
        body = json.loads(await response.aread())
        if body.get("status") == "completed" and isinstance(body.get("output"), dict) and "video" in body["output"]:
            body["output"] = self.reshape(body["output"]["video"])
        return httpx.Response(response.status_code, json=body)


def run_reshaped(tmp_path, write, reshape):
    sim = Simulator(SimConfig(render_seconds=0.05))
    manifest = write("m.yaml", small_manifest(n_rows=3))
    fast = RetryPolicy(base=0.01, cap=0.05, max_attempts=3)
    options = RunOptions.of(expected_render=0.05, seed=1, retry=fast, submit_retry=fast, out_dir=tmp_path / "out")
    to = api.target(api_key="sim-key", api_base=BASE, transport=Reshaping(sim, reshape))
    report = anyio.run(lambda: api.run_async(manifest, ledger=tmp_path / "l.db", options=options, to=to))
    return report, sim


@pytest.mark.parametrize("reshape", [
    lambda url: {"videos": [url]},
    lambda url: {"videos": [{"url": url, "format": "mp4"}]},
])
def test_a_run_downloads_videos_answered_as_a_list(tmp_path, write, reshape):
    report, _ = run_reshaped(tmp_path, write, reshape)
    assert report.counts.get("completed") == 3, report.counts
    files = sorted((tmp_path / "out").glob("*.mp4"))
    assert len(files) == 3 and all(f.read_bytes()[4:8] == b"ftyp" for f in files)


def test_a_run_whose_answers_have_no_usable_output_fails_those_jobs_naming_the_body(tmp_path, write):
    report, _ = run_reshaped(tmp_path, write, lambda url: {"videos": []})
    assert report.counts.get("failed") == 3 and not report.counts.get("completed"), report.counts
    assert not list((tmp_path / "out").glob("*.mp4"))
    with Ledger(tmp_path / "l.db") as ledger:
        jobs = list(ledger.iter_batch("small"))
    assert len(jobs) == 3 and all(j.remote_job_id and not j.output_url for j in jobs)
    assert all("output is unusable (output.videos is empty); expected " in (j.error or "") for j in jobs)
    assert all("HTTP 200 application/json: " in (j.error or "") for j in jobs)  # the body, shortly
