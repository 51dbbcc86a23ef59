"""The client classifies every answer; the key goes to the API host only."""
from __future__ import annotations

import anyio
import httpx
import pytest

from batcher.client import PixelDojoClient
from batcher.errors import (
    AuthError,
    CreditsExhausted,
    DownloadRefused,
    MalformedAnswer,
    NotSentError,
    OutcomeUnknown,
    OutputGone,
    RateLimited,
    RejectedError,
    ServerError,
)
from batcher.models import HAPPYHORSE_R2V, check_against
from batcher.simulator import clip_for

BODY = {"prompt": "a", "reference_urls": ["https://x.com/a.png"]}
OK = {"jobId": "job_1", "status": "pending", "statusUrl": "https://pixeldojo.ai/api/v1/jobs/job_1",
      "creditCost": 20, "creditsRemaining": 80, "expiresAt": "2026-01-01T00:00:00Z"}


def client_for(handler) -> PixelDojoClient:
    return PixelDojoClient("secret-key-123", "https://pixeldojo.ai", transport=httpx.MockTransport(handler))


def submit_with(handler):
    async def go():
        async with client_for(handler) as c:
            return await c.submit("happyhorse-1.0-r2v", BODY)
    return anyio.run(go)


def status_with(handler):
    async def go():
        async with client_for(handler) as c:
            return await c.status("job_1", "https://pixeldojo.ai/api/v1/jobs/job_1")
    return anyio.run(go)


def raising(exc_type):
    def handler(request):
        raise exc_type("boom", request=request)
    return handler


def answering(status, body=None, headers=None, content=None):
    def handler(request):
        if content is not None:
            return httpx.Response(status, content=content, headers=headers)
        return httpx.Response(status, json=body, headers=headers)
    return handler


def test_submit_sends_wire_body_with_bearer_key():
    seen = {}

    def handler(request):
        seen["auth"] = request.headers["authorization"]
        seen["body"] = request.read()
        seen["path"] = request.url.path
        return httpx.Response(202, json=OK)
    answer = submit_with(handler)
    assert answer.job_id == "job_1" and answer.credit_cost == 20 and answer.expires_at
    assert seen["auth"] == "Bearer secret-key-123" and seen["path"] == "/api/v1/models/happyhorse-1.0-r2v/run"
    assert b'"reference_urls"' in seen["body"]


@pytest.mark.parametrize("exc", [httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout])
def test_never_sent_is_safe_to_retry(exc):
    with pytest.raises(NotSentError):
        submit_with(raising(exc))


@pytest.mark.parametrize("exc", [httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError])
def test_after_sending_a_post_is_unknown(exc):
    with pytest.raises(OutcomeUnknown):
        submit_with(raising(exc))


@pytest.mark.parametrize("handler, error", [
    (answering(500, {"error": "x"}), OutcomeUnknown),
    (answering(503, content=b"<html>down</html>"), OutcomeUnknown),
    (answering(200, content=b"<html>hi</html>"), OutcomeUnknown),
    (answering(202, {"status": "pending"}), OutcomeUnknown),
    (answering(401, {"error": {"code": "invalid_api_key", "message": "bad key"}}), AuthError),
    (answering(403, {"error": {"code": "forbidden", "message": "no"}}), AuthError),
    (answering(402, {"error": "no credits"}), CreditsExhausted),
    (answering(403, {"error": {"code": "insufficient_credits", "message": "top up"}}), CreditsExhausted),
    (answering(429, {"error": "slow down"}, {"retry-after": "7"}), RateLimited),
    (answering(422, {"error": {"code": "invalid_request", "message": "duration too long"}}), RejectedError),
    (answering(404, {"error": {"code": "model_not_found", "message": "nope"}}), RejectedError),
])
def test_submit_answers_are_classified(handler, error):
    with pytest.raises(error) as info:
        submit_with(handler)
    if error is RateLimited:
        assert info.value.retry_after == 7
    if error is RejectedError:
        assert "duration too long" in str(info.value) or "nope" in str(info.value)


@pytest.mark.parametrize("handler, error", [
    (answering(502, content=b"bad gateway"), ServerError),
    (raising(httpx.ReadTimeout), ServerError),
    (answering(200, content=b"<html>oops</html>"), MalformedAnswer),
    (answering(200, {"jobId": "job_1"}), MalformedAnswer),
])
def test_poll_failures_are_retryable_or_malformed(handler, error):
    with pytest.raises(error) as info:
        status_with(handler)
    if error is MalformedAnswer and "html" in str(info.value):
        assert "HTTP 200" in str(info.value) and "<html>oops</html>" in str(info.value)


def test_unknown_status_words_mean_running():
    st = status_with(answering(200, {"jobId": "job_1", "status": "queued_upstream"}))
    assert not st.done


def test_error_messages_never_contain_the_key():
    for handler in (answering(401, {"error": "bad"}), answering(500, content=b"x"), raising(httpx.ReadError)):
        with pytest.raises(Exception) as info:
            submit_with(handler)
        assert "secret-key-123" not in str(info.value)


def test_key_is_not_sent_to_another_host():
    seen = []

    def handler(request):
        seen.append((request.url.host, request.headers.get("authorization")))
        return httpx.Response(200, json={"jobId": "job_1", "status": "pending"})

    async def go():
        async with client_for(handler) as c:
            await c.status("job_1", "https://evil.example.com/api/v1/jobs/job_1")
    anyio.run(go)
    assert seen == [("pixeldojo.ai", "Bearer secret-key-123")]


def download_with(handler, tmp_path, max_bytes=10_000):
    async def go():
        async with client_for(handler) as c:
            return await c.download("https://temp.pixeldojo.ai/pixeldojotemp/x.mp4", tmp_path / "f.part",
                                    max_bytes=max_bytes)
    return anyio.run(go)


def test_download_checks_mp4_size_and_status(tmp_path):
    mp4 = clip_for("job_1", 6, (1280, 720))
    result = download_with(answering(200, content=mp4), tmp_path, max_bytes=100_000)
    assert result.size == len(mp4) and (tmp_path / "f.part").read_bytes() == mp4
    assert result.video is not None and (result.video.seconds, result.video.width) == (6.0, 1280)
    # starts like an MP4 but is not a whole one: a failed download, never a completed job
    with pytest.raises(MalformedAnswer, match="not a whole MP4 file"):
        download_with(answering(200, content=b"\x00\x00\x00\x20ftypisom" + b"\x00" * 100), tmp_path)
    with pytest.raises(MalformedAnswer, match="not a whole MP4 file"):
        download_with(answering(200, content=mp4[:-500]), tmp_path, max_bytes=100_000)
    with pytest.raises(MalformedAnswer, match="not an MP4"):
        download_with(answering(200, content=b"<html>no</html>"), tmp_path)
    with pytest.raises(MalformedAnswer, match="cap"):
        download_with(answering(200, content=mp4 * 200), tmp_path, max_bytes=1000)
    for code in (403, 404, 410):
        with pytest.raises(OutputGone):
            download_with(answering(code, content=b"gone"), tmp_path)


def test_download_sends_no_key_and_refuses_odd_redirects(tmp_path):
    seen = []

    def handler(request):
        seen.append(request.headers.get("authorization"))
        return httpx.Response(302, headers={"location": "file:///etc/passwd"})
    with pytest.raises(DownloadRefused, match="file"):
        download_with(handler, tmp_path)
    assert seen == [None]


def test_schema_check():
    schema = HAPPYHORSE_R2V.json_schema()
    assert check_against(schema, HAPPYHORSE_R2V.to_wire({"prompt": "a", "references": ["https://x.com/a.png"],
                                                          "aspect_ratio": "1:1"})) == []
    assert str(check_against(schema, {**BODY, "aspect_ratio": "1:1"})[0]).startswith("aspect_ratio:")
    narrowed = {**schema, "properties": {**schema["properties"], "duration": {"type": "integer", "maximum": 10}}}
    assert str(check_against(narrowed, {**BODY, "duration": 12})[0]).startswith("duration: 12 is above")
