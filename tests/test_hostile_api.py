"""A hostile or careless API: answers that echo the key, name other origins, smuggle paths into
job ids or ask for year-long pauses. One test per promise the client keeps against them."""
from __future__ import annotations

import csv
import io
import json
import logging
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from urllib.parse import quote

import anyio
import httpx
import pytest

from batcher import api
from batcher.client import PixelDojoClient
from batcher.errors import (
    AuthError,
    CreditsExhausted,
    DownloadRefused,
    MalformedAnswer,
    OutcomeUnknown,
    RateLimited,
    RejectedError,
    ServerError,
)
from batcher.ledger import Ledger
from batcher.policy import RetryPolicy
from batcher.run import RunOptions
from batcher.simulator import SimConfig, Simulator, SimulatorTransport
from batcher.views import build_report, export

from .conftest import small_manifest
from .mp4s import whole_mp4
from .test_e2e import batcher, start_simulator

# Characters that change under URL- and JSON-encoding, so every form of the key is exercised.
KEY = "sk-test/9f8e+7d6c=5b4a"
# The key and the forms of it a leak could take, including prefixes a cut-short text would show.
LEAKS = (KEY, quote(KEY, safe=""), quote(KEY, safe="").lower(), KEY[:12], quote(KEY, safe="")[:14])
BASE = "https://pixeldojo.ai"
BODY = {"prompt": "a", "reference_urls": ["https://x.com/a.png"]}
OK = {"jobId": "job_1", "status": "pending", "statusUrl": f"{BASE}/api/v1/jobs/job_1", "creditCost": 20,
      "creditsRemaining": 80, "expiresAt": "2026-01-01T00:00:00Z"}
# A key a job id could hold as it is (no character an id may not have).
PLAIN_KEY = "sk_live_0a1b2c3d4e5f"
ECHO = f"request had Authorization: Bearer {KEY} (token={quote(KEY, safe='')})"


def assert_no_key(text: str | bytes, where: str) -> None:
    blob = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    for form in LEAKS:
        assert form not in blob, f"{form!r} leaked into {where}"


def client_for(handler, **kw) -> PixelDojoClient:
    return PixelDojoClient(KEY, BASE, transport=httpx.MockTransport(handler), **kw)


def call(handler, method: str, *args, **kw):
    async def go():
        async with client_for(handler, **kw.pop("client", {})) as c:
            return await getattr(c, method)(*args, **kw)
    return anyio.run(go)


def answering(status: int, body=None, headers=None, content: bytes | None = None):
    def handler(request):
        if content is not None:
            return httpx.Response(status, content=content, headers=headers)
        return httpx.Response(status, json=body, headers=headers)
    return handler


# --- 6: the key echoed back ---------------------------------------------------------------------

def test_redact_replaces_the_key_in_every_form_it_may_come_back_in():
    c = PixelDojoClient(KEY, BASE)
    encoded = quote(KEY, safe="")
    text = (f"a {KEY} b Bearer {KEY} c bearer  {encoded} d {encoded.lower()} e Bearer%20{encoded} "
            f"f {json.dumps(KEY)} g")
    out = c.redact(text)
    assert_no_key(out, "redact()")
    assert "Bearer" not in out and "bearer" not in out
    assert out.count("[redacted]") == 6 and out.startswith("a [redacted] b [redacted] c [redacted] d")
    assert c.redact("nothing secret here") == "nothing secret here"
    assert PixelDojoClient("", BASE).redact("no key, nothing to hide") == "no key, nothing to hide"


ERROR_BODY = {"error": {"code": "x", "message": ECHO}}


@pytest.mark.parametrize("method, handler, error", [
    ("submit", answering(401, {"error": {"code": "invalid_api_key", "message": ECHO}}), AuthError),
    ("submit", answering(400, {"error": ECHO}), RejectedError),
    ("submit", answering(422, ERROR_BODY), RejectedError),
    ("submit", answering(402, {"message": ECHO}), CreditsExhausted),
    ("submit", answering(429, ERROR_BODY, {"retry-after": "1"}), RateLimited),
    ("submit", answering(500, ERROR_BODY), OutcomeUnknown),
    ("submit", answering(502, content=f"<html>{ECHO}</html>".encode(), headers={"content-type": "text/html"}),
     OutcomeUnknown),
    # the key straddling the point where an error page is cut short: not even its first half shows
    ("submit", answering(200, content=b"<html>" + b"x" * 100 + f"Bearer {KEY}</html>".encode()), OutcomeUnknown),
    ("submit", answering(202, {"status": "pending", "note": ECHO}), OutcomeUnknown),
    ("status", answering(503, ERROR_BODY), ServerError),
    ("status", answering(404, ERROR_BODY), RejectedError),
    ("status", answering(200, content=f"<p>{ECHO}</p>".encode()), MalformedAnswer),
    ("status", answering(200, {"jobId": "job_1", "detail": ECHO}), MalformedAnswer),
    ("status", answering(429, ERROR_BODY, {"retry-after": "1"}), RateLimited),
])
def test_key_echoed_in_an_error_answer_never_reaches_an_exception(method, handler, error):
    args = ("happyhorse-1.0-r2v", BODY) if method == "submit" else ("job_1", f"{BASE}/api/v1/jobs/job_1")
    with pytest.raises(error) as info:
        call(handler, method, *args)
    assert_no_key(str(info.value), f"{error.__name__} message")
    assert "[redacted]" in str(info.value)


def test_key_in_a_transport_error_text_never_reaches_an_exception():
    def handler(request):
        raise httpx.RemoteProtocolError(f"peer closed after {request.url}?token={KEY} Bearer {KEY}", request=request)
    for method, args, error in (("submit", ("happyhorse-1.0-r2v", BODY), OutcomeUnknown),
                                ("status", ("job_1", None), ServerError)):
        with pytest.raises(error) as info:
            call(handler, method, *args)
        assert_no_key(str(info.value), f"{method} transport error")


def test_key_echoed_in_a_failed_render_or_a_status_word_is_redacted():
    st = call(answering(200, {"jobId": "job_1", "status": "failed", "error": f"upstream error; {ECHO}"}),
              "status", "job_1")
    assert st.error is not None and st.error.startswith("upstream error; request had Authorization: [redacted]")
    assert_no_key(st.error, "JobStatus.error")
    st = call(answering(200, {"jobId": "job_1", "status": "failed", "error": {"code": "e", "message": ECHO}}),
              "status", "job_1")
    assert_no_key(st.error or "", "JobStatus.error (object)")
    st = call(answering(200, {"jobId": "job_1", "status": f"waiting for {KEY}"}), "status", "job_1")
    assert_no_key(st.status, "JobStatus.status")
    assert not st.done


def test_key_echoed_in_the_live_schema_is_redacted():
    schema = {"type": "object", "properties": {"prompt": {"type": "string", "description": ECHO},
                                               KEY: {"enum": [KEY]}}}
    got = call(answering(200, schema), "schema", "happyhorse-1.0-r2v")
    assert_no_key(json.dumps(got), "schema")


@pytest.mark.parametrize("field, value", [
    ("jobId", f"job_{PLAIN_KEY}"),
    ("statusUrl", f"{BASE}/api/v1/jobs/job_1?token={PLAIN_KEY}"),
    ("statusUrl", f"https://elsewhere.example/{PLAIN_KEY}"),
])
def test_submit_answer_id_or_url_carrying_the_key_is_held_not_stored(field, value):
    async def go():
        async with PixelDojoClient(PLAIN_KEY, BASE,
                                   transport=httpx.MockTransport(answering(202, {**OK, field: value}))) as c:
            return await c.submit("happyhorse-1.0-r2v", BODY)
    with pytest.raises(OutcomeUnknown, match=field) as info:
        anyio.run(go)
    assert PLAIN_KEY not in str(info.value)


def test_output_url_carrying_the_key_is_refused():
    video = f"https://temp.pixeldojo.ai/pixeldojotemp/x.mp4?sig={quote(KEY, safe='')}"
    with pytest.raises(MalformedAnswer, match=r"output\.video") as info:
        call(answering(200, {"jobId": "job_1", "status": "completed", "output": {"video": video}}),
             "status", "job_1")
    assert_no_key(str(info.value), "MalformedAnswer message")


def test_redirect_to_a_url_carrying_the_key_is_not_followed(tmp_path):
    requested: list[str] = []

    def handler(request):
        requested.append(str(request.url))
        return httpx.Response(302, headers={"location": f"https://cdn.example/v.mp4?k={quote(KEY, safe='')}"})
    with pytest.raises(DownloadRefused, match="carries the API key") as info:
        call(handler, "download", "https://temp.pixeldojo.ai/x.mp4", tmp_path / "x.part", max_bytes=100)
    assert requested == ["https://temp.pixeldojo.ai/x.mp4"]
    assert_no_key(str(info.value), "DownloadRefused message")


def fast_options(tmp_path: Path, **kw) -> RunOptions:
    fast = RetryPolicy(base=0.01, cap=0.05, max_attempts=6)
    return RunOptions.of(expected_render=0.05, seed=1, retry=fast, submit_retry=fast, out_dir=tmp_path / "out", **kw)


def everything_written(ledger_path: Path, batches: list[str], tmp_path: Path) -> dict[str, str | bytes]:
    """Every place a run's texts end up: the ledger's bytes, exports and the HTML gallery."""
    found: dict[str, str | bytes] = {}
    with Ledger(ledger_path) as ledger:
        for fmt in ("jsonl", "csv"):
            out = io.StringIO()
            export(ledger, None, fmt, out)
            found[f"export {fmt}"] = out.getvalue()
        for batch in batches:
            html = tmp_path / f"{ledger_path.stem}-{batch}.html"
            build_report(ledger, batch, html)
            found[f"report html of {batch}"] = html.read_text(encoding="utf-8")
    for suffix in ("", "-wal", "-journal"):
        path = Path(f"{ledger_path}{suffix}")
        if path.exists():
            found[f"ledger file {path.name}"] = path.read_bytes()
    return found


def test_key_echoed_by_api_is_never_stored_printed_or_exported(tmp_path, write, caplog, monkeypatch):
    # (setup_logging in an earlier CLI test may have cut the batcher logger off from caplog)
    monkeypatch.setattr(logging.getLogger("batcher"), "propagate", True)
    caplog.set_level(logging.DEBUG)
    ledger = tmp_path / "run.db"
    manifest = write("m.yaml", small_manifest(n_rows=10))
    # Every fault that answers with text, and credits for a few jobs: the rest meet a 402.
    sim = Simulator(SimConfig(api_key=KEY, render_seconds=0.05, fail_rate=0.4, error_rate=0.15,
                              malformed_rate=0.05, credits=60, echo_key_in_errors=True, seed=3))
    to = api.target(api_key=KEY, api_base=BASE, transport=SimulatorTransport(sim))
    report = anyio.run(lambda: api.run_async(manifest, ledger=ledger, options=fast_options(tmp_path, concurrency=3),
                                             to=to))
    # a batch whose renders all fail, so the failure texts stay in the ledger as the jobs' errors
    doomed = write("doomed.yaml", small_manifest(n_rows=2).replace("batch: small", "batch: doomed"))
    doomed_sim = Simulator(SimConfig(api_key=KEY, render_seconds=0.05, fail_rate=1.0, echo_key_in_errors=True))
    doomed_to = api.target(api_key=KEY, api_base=BASE, transport=SimulatorTransport(doomed_sim))
    doomed_report = anyio.run(lambda: api.run_async(doomed, ledger=ledger, options=fast_options(
        tmp_path, max_attempts=1), to=doomed_to))
    # the same key, wrong for this API: its 401 echoes the Authorization header it received
    wrong = Simulator(SimConfig(api_key="the-right-key", echo_key_in_errors=True))
    to_wrong = api.target(api_key=KEY, api_base=BASE, transport=SimulatorTransport(wrong))
    with pytest.raises(AuthError) as refused:
        anyio.run(lambda: api.run_async(manifest, ledger=tmp_path / "refused.db", options=fast_options(tmp_path),
                                        to=to_wrong))

    assert sim.record()["faults"].get("error") and report.stop_reason == "credits"
    assert doomed_report.counts["failed"] == 2
    places: dict[str, str | bytes] = {}
    places.update(everything_written(ledger, ["small", "doomed"], tmp_path))
    places.update({f"refused: {k}": v for k, v in everything_written(tmp_path / "refused.db", ["small"],
                                                                      tmp_path).items()})
    places["run report messages"] = "\n".join(report.messages + doomed_report.messages)
    places["refused run error"] = str(refused.value)
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    places["log records"] = "\n".join(formatter.format(r) for r in caplog.records)
    for where, text in places.items():
        assert_no_key(text, where)
    # the echoed texts did arrive, redacted, where a user reads them
    assert "[redacted]" in places["run report messages"] and "[redacted]" in places["refused run error"]
    rows = list(csv.DictReader(io.StringIO(str(places["export csv"]))))
    assert sum("request had Authorization: [redacted]" in (r.get("error") or "") for r in rows) >= 2
    assert "request had Authorization: [redacted]" in str(places["report html of doomed"])


def test_key_echoed_by_simulator_over_http_never_reaches_the_console(tmp_path, write):
    manifest = write("m.yaml", small_manifest(n_rows=6))
    procs = []
    try:
        for key in (KEY, "the-right-key"):
            proc, url = start_simulator("--api-key", key, "--echo-key-in-errors", "--fail-rate", "0.5",
                                        "--error-rate", "0.2", "--render-seconds", "0.1", "--credits", "60")
            procs.append(proc)
            ledger = tmp_path / f"{len(procs)}.db"
            outputs = []
            run = batcher("run", str(manifest), "--api-base", url, "--ledger", str(ledger), "--out",
                          str(tmp_path / "out"), "--expected-render", "0.1", "-v", env_key=KEY)
            outputs.append(run.communicate(timeout=60))
            assert run.returncode in (1, 2, 3), outputs[-1][1]
            for args in (("status", "--ledger", str(ledger)), ("export", "--ledger", str(ledger), "--format", "csv")):
                proc2 = batcher(*args, env_key=KEY)
                outputs.append(proc2.communicate(timeout=30))
            for out, err in outputs:
                assert_no_key(out, "stdout")
                assert_no_key(err, "stderr")
            assert "[redacted]" in "".join(o + e for o, e in outputs)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)


# --- 7: the key goes to the API base's exact origin only --------------------------------------

def test_key_is_sent_only_to_the_exact_origin_of_the_api_base(tmp_path):
    received: list[tuple[str, bool]] = []
    mp4 = whole_mp4(400)

    def handler(request):
        received.append((str(request.url), "authorization" in request.headers))
        if request.url.path.startswith("/api/v1/jobs/"):
            return httpx.Response(200, json={"jobId": "job_1", "status": "pending"})
        if request.url.path == "/redirect":
            return httpx.Response(302, headers={"location": "http://pixeldojo.ai/plain.mp4"})
        return httpx.Response(200, content=mp4)

    async def go():
        async with client_for(handler) as c:
            for url in ("http://pixeldojo.ai/api/v1/jobs/job_1", "https://pixeldojo.ai:8443/api/v1/jobs/job_1",
                        "https://evil.example/api/v1/jobs/job_1", "https://PIXELDOJO.ai:443/api/v1/jobs/job_1?x=1"):
                await c.status("job_1", url)
            for url in ("http://pixeldojo.ai/a.mp4", "https://pixeldojo.ai:8443/b.mp4",
                        "https://temp.pixeldojo.ai/pixeldojotemp/c.mp4", "https://pixeldojo.ai/redirect"):
                await c.download(url, tmp_path / "v.part", max_bytes=10_000)
    anyio.run(go)
    with_key = [url for url, auth in received if auth]
    without = [url for url, auth in received if not auth]
    # statuses on another origin are polled at the API's own URL for the job, with the key
    assert with_key == ["https://pixeldojo.ai/api/v1/jobs/job_1"] * 3 + [
        "https://pixeldojo.ai/api/v1/jobs/job_1?x=1", "https://pixeldojo.ai/redirect"]
    assert without == ["http://pixeldojo.ai/a.mp4", "https://pixeldojo.ai:8443/b.mp4",
                       "https://temp.pixeldojo.ai/pixeldojotemp/c.mp4", "http://pixeldojo.ai/plain.mp4"]


def test_default_ports_count_as_the_same_origin():
    c = PixelDojoClient(KEY, "https://pixeldojo.ai:443/")
    assert c.status_url_for("job_1", "https://pixeldojo.ai/api/v1/jobs/job_1?v=2").endswith("?v=2")
    assert c.status_url_for("job_1", "http://pixeldojo.ai:443/x") == "https://pixeldojo.ai:443/api/v1/jobs/job_1"
    plain = PixelDojoClient(KEY, "http://127.0.0.1:8765")
    assert plain.status_url_for("j", "http://127.0.0.1:8765/api/v1/jobs/j?y") == "http://127.0.0.1:8765/api/v1/jobs/j?y"
    assert plain.status_url_for("j", "http://127.0.0.1:8766/api/v1/jobs/j") == "http://127.0.0.1:8765/api/v1/jobs/j"


# --- 14: job ids are plain tokens, never paths -----------------------------------------------

@pytest.mark.parametrize("job_id", ["../../admin", "..", ".", "a/b", "a?b=1", "a#b", "%2e%2e", "", " job", "job\n",
                                    "x" * 201, "-job", "jöb", 17])
def test_submit_answer_with_a_path_in_its_job_id_is_held_and_nothing_else_requested(job_id):
    paths: list[str] = []

    def handler(request):
        paths.append(request.url.raw_path.decode())
        return httpx.Response(202, json={**OK, "jobId": job_id, "statusUrl": None})
    with pytest.raises(OutcomeUnknown, match="jobId"):
        call(handler, "submit", "happyhorse-1.0-r2v", BODY)
    assert paths == ["/api/v1/models/happyhorse-1.0-r2v/run"]


def test_job_id_with_path_characters_is_never_spliced_into_a_path():
    paths: list[str] = []

    def handler(request):
        paths.append(request.url.raw_path.decode())
        return httpx.Response(200, json={"jobId": "../../admin", "status": "pending"})
    for job_id in ("../../admin", "a/b", "..", "a?x"):
        with pytest.raises(MalformedAnswer):
            call(handler, "status", job_id, f"https://evil.example/api/v1/jobs/{job_id}")
    assert paths == []
    # a status answer naming such an id is malformed too
    with pytest.raises(MalformedAnswer, match="jobId"):
        call(handler, "status", "job_1")
    # a plain id with a character a path would read differently is quoted
    c = PixelDojoClient(KEY, BASE)
    assert c.status_url_for("job:1.a", None) == f"{BASE}/api/v1/jobs/job%3A1.a"
    assert paths == ["/api/v1/jobs/job_1"]


def test_run_against_an_api_answering_a_path_as_job_id_holds_the_job(tmp_path, write):
    """Through the whole runner: the job is held (maybe charged), and no path the API did not name is requested."""
    sim = Simulator(SimConfig(render_seconds=0.05))
    inner = SimulatorTransport(sim)
    paths: list[str] = []

    class Hostile(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            paths.append(request.url.raw_path.decode())
            response = await inner.handle_async_request(request)
            if request.method == "POST":
                body = json.loads(await response.aread())
                body.update(jobId="../../admin", statusUrl="https://pixeldojo.ai/api/v1/jobs/../../admin")
                return httpx.Response(response.status_code, json=body)
            return response
    manifest = write("m.yaml", small_manifest(n_rows=2))
    to = api.target(api_key="sim-key", api_base=BASE, transport=Hostile())
    report = anyio.run(lambda: api.run_async(manifest, ledger=tmp_path / "l.db", options=fast_options(tmp_path),
                                             to=to))
    assert report.counts.get("unknown") == 2 and report.held_jobs == 2
    assert set(paths) == {"/api/v1/models/happyhorse-1.0-r2v/schema", "/api/v1/models/happyhorse-1.0-r2v/run"}
    with Ledger(tmp_path / "l.db") as ledger:
        assert not any(j.remote_job_id or j.status_url for j in ledger.iter_batch("small"))


# --- 15a: Retry-After is capped -------------------------------------------------------------

def far_future_http_date() -> str:
    return format_datetime(datetime.now(timezone.utc) + timedelta(days=3650), usegmt=True)


@pytest.mark.parametrize("value, wait, asked", [
    ("31536000", 300.0, 31536000.0),
    ("12", 12.0, 12.0),
    ("-5", 5.0, None),
    ("nan", 5.0, None),
    ("inf", 5.0, None),
    ("1e400", 5.0, None),
    ("soon", 5.0, None),
])
def test_a_year_long_retry_after_is_capped_and_what_was_asked_is_kept(value, wait, asked):
    with pytest.raises(RateLimited) as info:
        call(answering(429, {"error": "slow down"}, {"retry-after": value}), "submit", "happyhorse-1.0-r2v", BODY)
    assert info.value.retry_after == wait and info.value.asked == asked


def test_retry_after_as_a_far_http_date_is_capped_on_polls_and_downloads(tmp_path):
    handler = answering(429, {"error": "slow down"}, {"retry-after": far_future_http_date()})
    with pytest.raises(RateLimited) as info:
        call(handler, "status", "job_1")
    assert info.value.retry_after == 300.0 and info.value.asked > 3600 * 24 * 3649
    with pytest.raises(RateLimited) as info:
        call(handler, "download", "https://temp.pixeldojo.ai/x.mp4", tmp_path / "x.part", max_bytes=100,
             client={"max_retry_after": 60.0})
    assert info.value.retry_after == 60.0 and info.value.asked > 3600 * 24 * 3649
    with pytest.raises(Exception, match="max_retry_after"):
        PixelDojoClient(KEY, BASE, max_retry_after=float("nan"))


# --- found by a hostile review after the fixes -----------------------------------------------------

def _answering(handler):
    return httpx.MockTransport(handler)


def test_an_absurdly_large_credit_cost_is_not_a_crash():
    import anyio

    def handler(request: httpx.Request) -> httpx.Response:
        zeros = "0" * 400
        body = f'{{"jobId": "job_1", "status": "pending", "creditCost": 1{zeros}, "creditsRemaining": 1{zeros}}}'
        return httpx.Response(202, content=body.encode(), headers={"content-type": "application/json"})

    async def go():
        async with PixelDojoClient("sk-live-secret", "https://api.test", transport=_answering(handler)) as client:
            return await client.submit("happyhorse-1.0-r2v", {"prompt": "p"})
    answer = anyio.run(go)
    assert answer.credit_cost is None and "not a believable charge" in answer.cost_problem
    assert answer.credits_remaining is None


@pytest.mark.parametrize("paid", [True, False])
def test_a_body_that_cannot_be_decoded_is_classified_not_a_crash(paid):
    import anyio

    from batcher.errors import OutcomeUnknown, ServerError

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(202 if paid else 200, content=b"this is not gzip",
                              headers={"content-type": "application/json", "content-encoding": "gzip"})

    async def go():
        async with PixelDojoClient("sk-live-secret", "https://api.test", transport=_answering(handler)) as client:
            if paid:
                return await client.submit("happyhorse-1.0-r2v", {"prompt": "p"})
            return await client.status("job_1")
    with pytest.raises(OutcomeUnknown if paid else ServerError):
        anyio.run(go)


def test_a_key_hidden_in_percent_escapes_is_redacted_and_refused():
    client = PixelDojoClient("sim-key", "https://api.test")
    hidden = "".join(f"%{b:02X}" for b in b"sim-key")
    assert "sim-key" not in client.redact(f"bad token {hidden}")
    assert "[redacted]" in client.redact(f"bad token {hidden}")
    assert client._leaks(f"https://cdn.test/v.mp4?auth={hidden}")


def test_the_fast_origin_check_never_takes_a_lookalike_host_for_the_api():
    client = PixelDojoClient("sk-live-secret", "https://api.test")
    assert client._same_origin("https://api.test/api/v1/jobs/x")
    assert client._same_origin("https://api.test:443/api/v1/jobs/x")
    for url in ("https://api.test.evil.com/x", "https://api.testevil.com/x", "http://api.test/x",
                "https://api.test:8443/x", "https://evil.com/https://api.test/x", "https://api.test@evil.com/x"):
        assert not client._same_origin(url), url
