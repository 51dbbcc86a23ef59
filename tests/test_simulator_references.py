"""The simulator judges each reference image of a submission as the API would (batcher/simrefs.py),
and keeps uploaded images at /_sim/uploads/ (a public bucket beside the API)."""
from __future__ import annotations

import hashlib
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from batcher.ledger import Ledger
from batcher.models import ModelSpec, Param
from batcher.simulator import (
    FetchedReference,
    Journal,
    SimConfig,
    Simulator,
    SimulatorTransport,
    UploadStore,
    make_server,
    png_image,
    submission_problem,
)

BASE = "https://pixeldojo.ai"
AUTH = {"authorization": "Bearer sim-key"}
RUN = "/api/v1/models/happyhorse-1.0-r2v/run"
GOOD = f"{BASE}/_sim/refs/good.png"
PLACEHOLDER = "https://example.com/hero.png"
SECRET = "X-Amz-Signature=0123456789abcdef&X-Amz-Credential=AKIAEXAMPLE"


def body(*urls: str) -> dict:
    return {"prompt": "a knight", "reference_urls": list(urls), "duration": 5}


def submit(sim: Simulator, *urls: str) -> tuple[int, dict]:
    answer = sim.handle("POST", BASE + RUN, AUTH, json.dumps(body(*urls)).encode())
    return answer.status, json.loads(answer.body)


def upload_name(data: bytes, ext: str = "png") -> str:
    return f"{hashlib.sha256(data).hexdigest()}.{ext}"


def refused(status: int, answer: dict) -> str:
    assert status == 400 and answer["error"]["code"] == "invalid_request", answer
    return answer["error"]["message"]


# --- in-process: placeholders and the simulator's own images ---------------------------------

def test_a_good_sim_ref_is_accepted_and_charged_without_a_fetch():
    sim = Simulator(SimConfig(credits=100))
    status, answer = submit(sim, GOOD, f"{BASE}/_sim/refs/another.png")
    assert status == 202 and answer["creditCost"] == 20
    record = sim.record()
    assert record["charged"] == 20 and record["reference_fetches"] == 0
    assert record["requests"].get("ref", 0) == 0  # judged from its own bytes, not through HTTP


def test_placeholders_on_example_hosts_are_accepted_without_a_fetch():
    calls: list[str] = []

    def fetch(url: str) -> FetchedReference:
        calls.append(url)
        return FetchedReference(404, "text/plain", b"")
    sim = Simulator(fetch_reference=fetch)
    urls = ["https://example.com/a.png", "https://cdn.example.org/b.png", "http://example.net/c.webp",
            "https://images.example/d.png", "https://cdn.test/e.jpg", "https://x.invalid/f.png",
            "http://localhost:9/g.png", "http://app.localhost/h.png"]
    status, _ = submit(sim, *urls)
    assert status == 202 and calls == [] and sim.record()["reference_fetches"] == 0


@pytest.mark.parametrize("name, why", [
    ("missing.png", "HTTP 404"),
    ("page.png", "not an image (text/html)"),
    ("text.png", "not an image (served as image/png, but its bytes are not JPEG, PNG or WEBP)"),
    ("small.png", "200x200, shortest side under 400 px"),
    ("big.png", "12.0 MB, over the 10 MB limit"),
])
def test_a_bad_sim_ref_is_refused_with_its_index_and_why_and_nothing_charged(name, why):
    sim = Simulator(SimConfig(credits=100))
    message = refused(*submit(sim, PLACEHOLDER, GOOD, f"{BASE}/_sim/refs/{name}"))
    assert message == f"reference_urls[2]: {BASE}/_sim/refs/{name}: {why}"
    record = sim.record()
    assert record["jobs"] == [] and record["charged"] == 0 and record["credits"] == 100
    assert record["run_bodies"] == 1  # received, and refused


def test_a_sim_ref_on_another_host_is_still_judged_from_the_simulators_bytes():
    sim = Simulator()
    assert submit(sim, "https://refs.elsewhere.net/_sim/refs/good.png")[0] == 202
    message = refused(*submit(sim, "http://127.0.0.1:8765/_sim/refs/small.png"))
    assert message.startswith("reference_urls[0]: http://127.0.0.1:8765/_sim/refs/small.png: 200x200")
    # a served simulator reached as localhost: its own files are judged, not taken as placeholders
    assert "HTTP 404" in refused(*submit(sim, "http://localhost:8765/_sim/uploads/" + "0" * 64 + ".png"))


def test_in_process_any_other_host_cannot_be_reached():
    sim = Simulator()
    message = refused(*submit(sim, "https://images.nowhere.net/hero.png"))
    assert message.startswith("reference_urls[0]: https://images.nowhere.net/hero.png: cannot be reached")
    assert sim.record()["jobs"] == []


def test_the_fetch_runs_outside_the_simulators_lock_and_is_counted():
    sim = Simulator()
    locked: list[bool] = []

    def fetch(url: str) -> FetchedReference:
        locked.append(sim.lock.locked())
        return FetchedReference(200, "image/png", png_image(512, 512))
    sim.fetch_reference = fetch
    assert submit(sim, "https://cdn.images.net/a.png", "https://cdn.images.net/b.png")[0] == 202
    assert locked == [False, False] and sim.record()["reference_fetches"] == 2


def test_a_query_string_never_appears_in_the_refusal():
    def fetch(url: str) -> FetchedReference:
        raise OSError(f"connect failed for {url}")  # a fetch whose error repeats the whole URL
    sim = Simulator(fetch_reference=fetch)
    for url in (f"https://bucket.s3.amazonaws.net/k/a.png?{SECRET}", f"{BASE}/_sim/refs/small.png?{SECRET}",
                f"https://user:pw@bucket.s3.amazonaws.net/{'k' * 120}.png?{SECRET}"):
        message = refused(*submit(sim, url))
        assert "Signature" not in message and "0123456789abcdef" not in message and "?" not in message, message
        assert "pw@" not in message
        assert message.startswith("reference_urls[0]: ")


def test_every_url_list_parameter_of_the_model_is_judged():
    spec = ModelSpec("two-lists", (Param("refs", "images", "url_list"), Param("masks", "mask_urls", "url_list")),
                     {"720p": 1.0})
    problem, fetched = submission_problem(spec, {"images": [PLACEHOLDER], "mask_urls": [PLACEHOLDER, GOOD,
                                                                                        f"{BASE}/_sim/refs/small.png"]},
                                          UploadStore(), None)
    assert problem is not None and problem.startswith("mask_urls[2]: ") and fetched == 0


# --- served over HTTP: references fetched from another loopback host -------------------------

class _Images(BaseHTTPRequestHandler):
    """Another host: a good PNG, an HTML page, a big PNG, a redirect to the PNG, an endless redirect."""

    def log_message(self, format: str, *args) -> None:
        pass

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        status, kind, data, extra = 200, "image/png", b"", {}
        if path == "/good.png":
            data = png_image(512, 512)
        elif path == "/page.html":
            kind, data = "text/html; charset=utf-8", b"<!doctype html><h1>Our gallery</h1>"
        elif path == "/big.png":
            data = png_image(512, 512, 12 * 1024 * 1024)
        elif path == "/moved.png":
            status, extra = 302, {"location": "/good.png"}
        elif path.startswith("/loop/"):
            status, extra = 302, {"location": f"/loop/{int(path.split('/')[-1]) + 1}"}
        else:
            status, kind, data = 404, "text/plain", b"no"
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(data)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def serve() -> Iterator:
    """Start an HTTP server in a thread; gives its base URL; stops every one at the end."""
    started: list[ThreadingHTTPServer] = []

    def _serve(server: ThreadingHTTPServer) -> str:
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        started.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"
    yield _serve
    for server in started:
        server.shutdown()
        server.server_close()


@pytest.fixture
def served(serve) -> tuple[Simulator, str, str]:
    """(a simulator served over HTTP, its base URL, the base URL of another host with images)."""
    sim = Simulator(SimConfig(credits=1000))
    return sim, serve(make_server(sim)), serve(ThreadingHTTPServer(("127.0.0.1", 0), _Images))


def post(base: str, *urls: str) -> tuple[int, dict]:
    response = httpx.post(base + RUN, headers=AUTH, json=body(*urls), timeout=30)
    return response.status_code, response.json()


def test_served_a_good_image_on_another_host_is_fetched_and_accepted(served):
    sim, base, images = served
    status, answer = post(base, f"{images}/good.png", f"{images}/moved.png")
    assert status == 202 and answer["creditCost"] == 20
    assert sim.record()["reference_fetches"] == 2


@pytest.mark.parametrize("path, why", [
    ("/page.html", "not an image (text/html)"),
    ("/absent.png", "HTTP 404"),
    ("/big.png", "12.0 MB, over the 10 MB limit"),
    ("/loop/0", "cannot be reached (more than 5 redirects)"),
])
def test_served_a_bad_image_on_another_host_is_refused(served, path, why):
    sim, base, images = served
    message = refused(*post(base, f"{images}/good.png", f"{images}{path}?{SECRET}"))
    assert message == f"reference_urls[1]: {images}{path}: {why}"
    record = sim.record()
    assert record["charged"] == 0 and record["credits"] == 1000 and record["reference_fetches"] == 2


def test_served_a_closed_port_cannot_be_reached(served):
    sim, base, _ = served
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    message = refused(*post(base, f"http://127.0.0.1:{port}/a.png?{SECRET}"))
    assert message.startswith(f"reference_urls[0]: http://127.0.0.1:{port}/a.png: cannot be reached (")
    assert "Signature" not in message and sim.record()["jobs"] == []


def test_served_the_simulators_own_refs_are_judged_without_http(served):
    sim, base, _ = served
    assert post(base, f"{base}/_sim/refs/good.png")[0] == 202
    assert "200x200" in refused(*post(base, f"{base}/_sim/refs/small.png"))
    record = sim.record()
    assert record["reference_fetches"] == 0 and record["requests"].get("ref", 0) == 0


# --- uploads ---------------------------------------------------------------------------------

IMAGE = png_image(512, 512)
NAME = upload_name(IMAGE)


def test_uploads_put_size_get_and_range_in_process():
    sim = Simulator()
    assert sim.upload_size(NAME) is None
    sim.put_upload(NAME, IMAGE)
    assert sim.upload_size(NAME) == len(IMAGE)
    whole = sim.handle("GET", f"{BASE}/_sim/uploads/{NAME}", {}, b"")  # no key: a public bucket
    assert whole.status == 200 and whole.body == IMAGE and whole.headers["content-type"] == "image/png"
    part = sim.handle("GET", f"{BASE}/_sim/uploads/{NAME}", {"range": "bytes=0-99"}, b"")
    assert part.status == 206 and part.body == IMAGE[:100]
    assert part.headers["content-range"] == f"bytes 0-99/{len(IMAGE)}"
    assert sim.handle("GET", f"{BASE}/_sim/uploads/{upload_name(b'other')}", {}, b"").status == 404
    assert sim.handle("GET", f"{BASE}/_sim/uploads/..%2F{NAME}", {}, b"").status == 404


def test_uploads_reach_a_batcher_reference_request_through_the_in_process_transport():
    import anyio
    sim = Simulator()
    sim.put_upload(NAME, IMAGE)

    async def go() -> tuple[int, bytes, int]:
        async with httpx.AsyncClient(transport=SimulatorTransport(sim)) as client:
            found = await client.get(f"{BASE}/_sim/uploads/{NAME}", extensions={"batcher_reference": True})
            absent = await client.get(f"{BASE}/_sim/uploads/{upload_name(b'x')}",
                                      extensions={"batcher_reference": True})
            return found.status_code, found.content, absent.status_code
    assert anyio.run(go) == (200, IMAGE, 404)


def test_uploads_over_http_and_as_references(served):
    sim, base, _ = served
    small = png_image(300, 300)
    sim.put_upload(NAME, IMAGE)
    sim.put_upload(upload_name(small), small)
    response = httpx.get(f"{base}/_sim/uploads/{NAME}", headers={"range": "bytes=8-15"})
    assert response.status_code == 206 and response.content == IMAGE[8:16]
    assert httpx.get(f"{base}/_sim/uploads/{upload_name(b'none')}").status_code == 404
    assert post(base, f"{base}/_sim/uploads/{NAME}")[0] == 202
    message = refused(*post(base, f"{base}/_sim/uploads/{upload_name(small)}"))
    assert message.endswith("300x300, shortest side under 400 px")
    assert "HTTP 404" in refused(*post(base, f"{base}/_sim/uploads/{upload_name(b'none')}"))
    assert sim.record()["reference_fetches"] == 0


@pytest.mark.parametrize("name", [
    "../" + NAME, "a/" + NAME, NAME.upper(), NAME.replace(".png", ".jpeg"), NAME.replace(".png", ".gif"),
    NAME[1:], NAME + "\n", "/etc/passwd", "",
])
def test_upload_names_other_than_a_digest_and_an_image_type_are_refused(name):
    sim = Simulator()
    with pytest.raises(ValueError):
        sim.put_upload(name, IMAGE)
    with pytest.raises(ValueError):
        sim.upload_size(name)


def test_uploads_are_kept_beside_the_journal_and_replayed(tmp_path: Path):
    state = tmp_path / "sim.jsonl"
    first = Simulator()
    journal = Journal(state)
    journal.replay(first)
    first.journal = journal
    first.put_upload(NAME, IMAGE)
    assert submit(first, f"{BASE}/_sim/uploads/{NAME}")[0] == 202
    journal.close()
    folder = tmp_path / "sim.jsonl.uploads"
    assert [p.name for p in folder.iterdir()] == [NAME]  # no temporary file left behind
    assert (folder / NAME).read_bytes() == IMAGE

    second = Simulator()
    assert Journal(state).replay(second) == 1
    assert second.upload_size(NAME) == len(IMAGE)
    assert second.handle("GET", f"{BASE}/_sim/uploads/{NAME}", {}, b"").body == IMAGE
    assert submit(second, f"{BASE}/_sim/uploads/{NAME}")[0] == 202


def test_uploads_without_a_journal_live_in_memory(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sim = Simulator()
    sim.put_upload(NAME, IMAGE)
    assert sim.upload_size(NAME) == len(IMAGE) and list(tmp_path.iterdir()) == []
    assert Simulator().upload_size(NAME) is None  # another simulator: nothing shared


# --- end to end: batcher's run over the in-process simulator ---------------------------------

def test_a_run_with_one_unreachable_reference_fails_that_job_readably_and_completes_the_rest(simrun, write):
    path = write("m.yaml", f"""
        version: 1
        batch: refs
        rows:
          - prompt: 'shot one'
            references: [{PLACEHOLDER}]
          - prompt: 'shot two'
            references: ["https://images.nowhere.net/hero.png?{SECRET}"]
          - prompt: 'shot three'
            references: [{GOOD}]
        """)
    warnings: list[str] = []
    report, sim, ledger = simrun(path, on_warning=warnings.append)
    # preflight only warns (the API may reach what this machine cannot); the API cannot either
    assert [w for w in warnings if "images.nowhere.net" in w and "could not be reached" in w]
    assert report.counts["completed"] == 2 and report.counts["failed"] == 1
    assert sim.record()["charged"] == 40 and len(sim.record()["jobs"]) == 2
    with Ledger(ledger) as led:
        states = {json.loads(job.params)["prompt"]: (job.state, job.error) for job in led.iter_batch("refs")}
    assert states["shot one"] == ("completed", None) and states["shot three"] == ("completed", None)
    state, error = states["shot two"]
    assert state == "failed" and error is not None
    assert "reference_urls[0]: https://images.nowhere.net/hero.png: cannot be reached" in error, error
    assert "Signature" not in error
