"""The PixelDojo API client (httpx): one method per endpoint, every answer classified.

The classification is what keeps users from paying twice: a paid POST that fails before the
request could have left (`NotSentError`) is safe to send again; anything after that point
(`OutcomeUnknown`) is not. The key is sent only to the API base's exact origin (scheme, host,
port), and never appears in an error or a log line: every text an answer brings is redacted here,
where foreign text enters, and ids or URLs that carry it are refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, urljoin, urlsplit

import httpx

from .errors import (
    AuthError, CreditsExhausted, DiskFullError, MalformedAnswer, NotSentError, OutcomeUnknown, OutputGone, OversizeError,
    RateLimited, RejectedError, ServerError, UsageError,
)

DEFAULT_BASE = "https://pixeldojo.ai"
DEFAULT_MAX_RETRY_AFTER = 300.0  # seconds: a longer Retry-After is capped to this
REDACTED = "[redacted]"
# What a job id may look like before it goes into a path: no slashes, dots-only segments or
# query characters, so an answer cannot steer our requests elsewhere on the API.
SAFE_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")
DEFAULT_PORTS = {"http": 80, "https": 443}
log = logging.getLogger("batcher.http")

# Failures that prove the request never left this machine.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


@dataclass(frozen=True)
class Submission:
    """The documented 202 answer of a run."""

    job_id: str
    status_url: str
    credit_cost: float | None  # None: the answer's creditCost cannot be believed (see cost_problem)
    credits_remaining: float | None
    expires_at: float | None
    cost_problem: str | None = None


@dataclass(frozen=True)
class JobStatus:
    """A job's status answer. `status` is the API's word; unknown words mean still running."""

    job_id: str
    status: str
    video_url: str | None
    error: str | None
    credit_cost: float | None
    expires_at: float | None

    @property
    def done(self) -> bool:
        return self.status in ("completed", "failed")


@dataclass(frozen=True)
class Download:
    path: Path
    size: int
    sha256: str


def parse_time(value: Any) -> float | None:
    """An ISO-8601 time (as the API writes expiresAt) to epoch seconds; None if absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _verbatim(text: str) -> str:
    return text


def describe(response: httpx.Response, redact: Callable[[str], str] = _verbatim) -> str:
    """'HTTP 502 text/html: <first bytes>' for error messages about answers we cannot use.

    `redact` runs before the text is cut short, so a secret at the cut is never half shown.
    """
    head = " ".join(redact(response.content[:65536].decode("utf-8", "replace")).split())[:120]
    kind = redact(response.headers.get("content-type", "no content type").split(";")[0])
    return f"HTTP {response.status_code} {kind}: {head!r}"


def api_message(response: httpx.Response, redact: Callable[[str], str] = _verbatim) -> tuple[str | None, str]:
    """(error code, message) from an API error body, whatever its shape."""
    try:
        data = response.json()
    except ValueError:
        return None, describe(response, redact)
    if isinstance(data, dict):
        err = data.get("error")
        code = data.get("code")
        if isinstance(err, dict):
            code = err.get("code")
            text = err.get("message") or err.get("code")
            return _code(code), redact(str(text)) if text else describe(response, redact)
        if isinstance(err, str):
            return _code(code), redact(err)
        if isinstance(data.get("message"), str):
            return _code(code), redact(data["message"])
    return None, describe(response, redact)


def _code(value: Any) -> str | None:
    # Codes are only compared with known words, never shown: anything else is no code at all.
    return value if isinstance(value, str) else None


def asked_retry_after(response: httpx.Response) -> float | None:
    """The wait Retry-After asks for, in seconds (it may be an HTTP date); None if absent or unusable."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)  # HTTP dates are GMT
        seconds = max(0.0, when.timestamp() - time.time())
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def retry_after(response: httpx.Response, default: float = 5.0, cap: float = DEFAULT_MAX_RETRY_AFTER) -> float:
    """Seconds to wait after this answer: its Retry-After capped to `cap`, `default` if it has none usable."""
    asked = asked_retry_after(response)
    return default if asked is None else min(asked, cap)


def origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL, default ports filled in; None for anything else.

    Parsed by httpx, the parser that will connect, so no URL can mean one host here and another there.
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        return None
    scheme = parsed.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parsed.host:
        return None
    return scheme, parsed.host.lower(), parsed.port if parsed.port is not None else DEFAULT_PORTS[scheme]


def is_safe_job_id(value: Any) -> bool:
    """Whether a job id from an answer may go into a path (and the ledger) as it is."""
    return isinstance(value, str) and SAFE_JOB_ID.fullmatch(value) is not None


class _NoCookies(httpx.Cookies):
    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class PixelDojoClient:
    """Async client for one API base URL and key.

    Every text taken from an answer goes through `redact` before it leaves the client, so an API
    that echoes the key cannot get it into the ledger, an export or the console. A Retry-After
    over `max_retry_after` seconds (default 300) is cut to it.
    """

    def __init__(self, api_key: str, base_url: str = DEFAULT_BASE, *,
                 transport: httpx.AsyncBaseTransport | None = None, timeout: float = 30.0,
                 before_request: Callable[[str], Awaitable[None]] | None = None,
                 after_response: Callable[[str, int | None], Awaitable[None]] | None = None,
                 max_retry_after: float = DEFAULT_MAX_RETRY_AFTER):
        if not max_retry_after >= 0:  # also refuses NaN
            raise UsageError(f"max_retry_after must be 0 or more seconds, got {max_retry_after!r}")
        self.base_url = base_url.rstrip("/")
        self._api_origin = origin(self.base_url)
        self._key = api_key
        self._secret = _secret_pattern(api_key)
        self.max_retry_after = max_retry_after
        self._http = httpx.AsyncClient(
            transport=transport, timeout=httpx.Timeout(timeout, connect=10.0),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=50),
            headers={"user-agent": "batcher"}, follow_redirects=False)
        # The API sets no cookies and we want none kept: skip httpx's per-response cookie parsing,
        # a measurable cost at hundreds of requests a second.
        if isinstance(getattr(self._http, "_cookies", None), httpx.Cookies):
            self._http._cookies = _NoCookies()
        # Hooks for the pool's rate limiter: called with the request kind ("submit", "poll", ...).
        self._before = before_request
        self._after = after_response

    def set_hooks(self, before_request: Callable[[str], Awaitable[None]] | None,
                  after_response: Callable[[str, int | None], Awaitable[None]] | None) -> None:
        """Install the rate limiter's hooks: awaited before each request and after each answer."""
        self._before, self._after = before_request, after_response

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "PixelDojoClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    def redact(self, text: str) -> str:
        """`text` with the key (bare, as `Bearer <key>`, URL- or JSON-encoded) replaced by [redacted]."""
        return self._secret.sub(REDACTED, text) if self._secret is not None else text

    def _leaks(self, text: str) -> bool:
        return self._secret is not None and self._secret.search(text) is not None

    def _describe(self, response: httpx.Response) -> str:
        return describe(response, self.redact)

    def _same_origin(self, url: str) -> bool:
        return self._api_origin is not None and origin(url) == self._api_origin

    def _auth(self, url: str) -> dict[str, str]:
        # Never hand the key to anyone but the API base's exact origin (scheme, host, port): not
        # to another host, nor over plain HTTP, nor to another port, whatever URL an answer names.
        if not self._same_origin(url):
            return {}
        return {"authorization": f"Bearer {self._key}"}

    def _rate_limited(self, message: str, response: httpx.Response) -> RateLimited:
        asked = asked_retry_after(response)
        wait = 5.0 if asked is None else min(asked, self.max_retry_after)
        return RateLimited(self.redact(message), wait, asked=asked)

    async def _answered(self, kind: str, method: str, url: str, status: int | None, started: float) -> None:
        """Log one request (never its headers: they carry the key) and tell the rate limiter."""
        ms = (time.monotonic() - started) * 1000
        path = self.redact(urlsplit(url).path)  # a redirect's Location is the server's text
        log.info("%s %s %s %.0fms", method, path, status if status is not None else "-", ms,
                 extra={"kind": kind, "method": method, "path": path, "status": status, "ms": round(ms, 1)})
        if self._after:
            await self._after(kind, status)

    async def _send(self, kind: str, method: str, url: str, *, body: Any = None, paid: bool = False
                    ) -> httpx.Response:
        if self._before:
            await self._before(kind)
        started = time.monotonic()
        status: int | None = None
        try:
            response = await self._http.request(method, url, json=body, headers=self._auth(url))
            status = response.status_code
        except NOT_SENT as e:
            # For a GET the distinction does not matter: both are safe to retry.
            cls = NotSentError if paid else ServerError
            raise cls(self.redact(f"{method} {urlsplit(url).path}: could not connect ({type(e).__name__})")
                      ) from None
        except httpx.TransportError as e:
            # httpx's own text may quote the URL or what the server sent
            cls = OutcomeUnknown if paid else ServerError
            raise cls(self.redact(f"{method} {urlsplit(url).path}: connection failed after sending "
                                  f"({type(e).__name__}: {e})")) from None
        finally:
            await self._answered(kind, method, url, status, started)
        return response

    def _raise_for_api_status(self, response: httpx.Response, paid: bool) -> None:
        status = response.status_code
        if status < 400:
            return
        code, message = api_message(response, self.redact)
        if status == 401:
            raise AuthError(f"the API rejected the key (401): {message}", status)
        if status == 402 or (status == 403 and code in ("insufficient_credits", "quota_exceeded")):
            raise CreditsExhausted(f"not enough credits ({status}): {message}", status)
        if status == 403:
            raise AuthError(f"the API refused access (403): {message}", status)
        if status == 429:
            raise self._rate_limited(f"rate limited: {message}", response)
        if status >= 500:
            cls = OutcomeUnknown if paid else ServerError
            raise cls(f"server error: {self._describe(response)}", status)
        raise RejectedError(f"the API refused the request ({status}): {message}", status)

    def _json(self, response: httpx.Response, paid: bool) -> dict[str, Any]:
        try:
            data = response.json()
        except (ValueError, UnicodeDecodeError):
            data = None
        if not isinstance(data, dict):
            cls = OutcomeUnknown if paid else MalformedAnswer
            raise cls(f"the API answered something that is not the documented JSON: {self._describe(response)}",
                      response.status_code)
        return data

    # --- endpoints ---------------------------------------------------------------------------

    async def schema(self, model: str) -> dict[str, Any]:
        """The model's parameter JSON schema."""
        response = await self._send("schema", "GET", f"{self.base_url}/api/v1/models/{model}/schema")
        self._raise_for_api_status(response, paid=False)
        # The schema's names and values end up in SchemaMismatch messages.
        return _redact_json(self._json(response, paid=False), self.redact)

    async def submit(self, model: str, wire: dict[str, Any]) -> Submission:
        """POST a job. Raises NotSentError (safe to resend) or OutcomeUnknown (never resend silently)."""
        response = await self._send("submit", "POST", f"{self.base_url}/api/v1/models/{model}/run",
                                    body=wire, paid=True)
        self._raise_for_api_status(response, paid=True)
        data = self._json(response, paid=True)
        job_id, status_url, cost = data.get("jobId"), data.get("statusUrl"), data.get("creditCost")
        if not isinstance(job_id, str) or not job_id:
            raise OutcomeUnknown(f"the submit answer lacks a jobId: {self._describe(response)}", response.status_code)
        # A charge that is negative, infinite or not a number would let a run spend past its
        # budget: it is not believed (the caller counts its estimate instead), but the job is
        # known, so it is polled like any other.
        believable = (isinstance(cost, (int, float)) and not isinstance(cost, bool) and math.isfinite(cost)
                      and cost >= 0)
        problem = None if believable else \
            f"the API's creditCost {self.redact(repr(cost))[:40]} is not a believable charge"
        # The POST may have been charged: a job id or status URL we cannot use holds the job
        # (OutcomeUnknown) instead of storing what would splice into paths or carry the key.
        if not is_safe_job_id(job_id) or self._leaks(job_id):
            raise OutcomeUnknown(f"the submit answer's jobId is not a plain id: {self._describe(response)}",
                                 response.status_code)
        if isinstance(status_url, str) and self._leaks(status_url):
            raise OutcomeUnknown(f"the submit answer's statusUrl carries the API key: {self._describe(response)}",
                                 response.status_code)
        status_url = self.status_url_for(job_id, status_url if isinstance(status_url, str) else None)
        remaining = data.get("creditsRemaining")
        return Submission(job_id, status_url, float(cost) if believable else None,
                          float(remaining) if isinstance(remaining, (int, float)) else None,
                          parse_time(data.get("expiresAt")), problem)

    def status_url_for(self, job_id: str, status_url: str | None) -> str:
        """The URL to poll: the API's statusUrl when it is on the API base's exact origin, else
        one built from the job id. Raises MalformedAnswer for an id that is not a plain token."""
        if not is_safe_job_id(job_id) or self._leaks(job_id):
            raise MalformedAnswer(f"refusing to poll job id {self.redact(job_id)[:60]!r}: not a plain id")
        if status_url and self._same_origin(status_url) and not self._leaks(status_url):
            return status_url
        return f"{self.base_url}/api/v1/jobs/{quote(job_id, safe='')}"

    async def status(self, job_id: str, status_url: str | None = None) -> JobStatus:
        """GET the job's status. Raises ServerError/RateLimited (retry), MalformedAnswer, RejectedError."""
        response = await self._send("poll", "GET", self.status_url_for(job_id, status_url))
        self._raise_for_api_status(response, paid=False)
        data = self._json(response, paid=False)
        status = data.get("status")
        if not isinstance(status, str):
            raise MalformedAnswer(f"the status answer has no status: {self._describe(response)}",
                                  response.status_code)
        answered_id = data.get("jobId")
        if answered_id is not None and (not is_safe_job_id(answered_id) or self._leaks(answered_id)):
            raise MalformedAnswer(f"the status answer's jobId is not a plain id: {self._describe(response)}",
                                  response.status_code)
        output = data.get("output")
        video = output.get("video") if isinstance(output, dict) else None
        if status == "completed" and video is not None and not isinstance(video, str):
            raise MalformedAnswer(f"output.video is not a URL: {self._describe(response)}", response.status_code)
        if isinstance(video, str) and self._leaks(video):
            raise MalformedAnswer(f"output.video carries the API key: {self._describe(response)}",
                                  response.status_code)
        error = data.get("error")
        if isinstance(error, dict):
            error = error.get("message") or error.get("code")
        cost = data.get("creditCost")
        return JobStatus(job_id, self.redact(status), video, self.redact(str(error)) if error else None,
                         float(cost) if isinstance(cost, (int, float)) and not isinstance(cost, bool) else None,
                         parse_time(data.get("expiresAt")))

    async def download(self, url: str, dest: Path, *, max_bytes: int, max_redirects: int = 5) -> Download:
        """Stream a video to `dest` (a temporary name chosen by the caller) and check it is MP4.

        Only http(s) URLs and redirects are followed; more than `max_bytes` aborts. Raises
        OutputGone for 403/404/410, ServerError for what is worth retrying, MalformedAnswer for a
        file that is not a video.
        """
        for _ in range(max_redirects + 1):
            scheme = urlsplit(url).scheme
            if scheme not in ("http", "https"):
                raise MalformedAnswer(self.redact(f"refusing to download from a {scheme or 'relative'} URL"))
            if self._leaks(url):  # a redirect's Location: httpx itself would log it in full
                raise MalformedAnswer("refusing to download from a URL that carries the API key")
            if self._before:
                await self._before("download")
            started = time.monotonic()
            status: int | None = None
            requested = url
            try:
                async with self._http.stream("GET", url, headers=self._auth(url)) as response:
                    status = response.status_code
                    if response.is_redirect:
                        url = urljoin(url, response.headers.get("location", ""))
                        continue
                    if status in (403, 404, 410):
                        raise OutputGone(f"the output URL answered {status} (expired or removed)", status)
                    if status == 429:
                        raise self._rate_limited("rate limited while downloading", response)
                    if status >= 500:
                        raise ServerError(f"download failed: HTTP {status}", status)
                    if status != 200:
                        raise MalformedAnswer(f"download failed: HTTP {status}", status)
                    length = response.headers.get("content-length")
                    if length and length.isdigit() and int(length) > max_bytes:
                        raise OversizeError(f"the video is {length} bytes, over the {max_bytes}-byte cap")
                    return await self._save(response, dest, max_bytes)
            except httpx.TransportError as e:
                raise ServerError(f"download failed: {type(e).__name__}") from None
            finally:
                await self._answered("download", "GET", requested, status, started)
        raise MalformedAnswer(f"more than {max_redirects} redirects")

    @staticmethod
    async def _save(response: httpx.Response, dest: Path, max_bytes: int) -> Download:
        digest = hashlib.sha256()
        size = 0
        first = b""
        try:
            with open(dest, "wb") as f:
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise OversizeError(f"the video is over the {max_bytes}-byte cap; download stopped")
                    if len(first) < 12:
                        first += chunk[: 12 - len(first)]
                    digest.update(chunk)
                    f.write(chunk)
                f.flush()  # durability (fsync) is the caller's, when it gives the file its final name
        except OSError as e:
            if e.errno == 28:  # ENOSPC
                raise DiskFullError(f"no space left on the disk while writing {dest.parent}") from None
            raise
        if first[4:8] != b"ftyp":
            raise MalformedAnswer(f"the downloaded file is not an MP4 video (starts with {first[:12]!r})")
        return Download(dest, size, digest.hexdigest())


def _secret_pattern(key: str) -> re.Pattern[str] | None:
    """Every form the key may come back in: bare, URL-encoded (either hex case), JSON-escaped,
    and the whole `Bearer <key>` (or `Bearer%20<key>`) around any of them."""
    if not key:
        return None
    forms = {key, quote(key, safe=""), quote(key), quote_plus(key), json.dumps(key)[1:-1], key.replace("/", "\\/")}
    alternatives = "|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))
    return re.compile(rf"(?:bearer(?:\s+|%20|\+))?(?:{alternatives})", re.IGNORECASE)


def _redact_json(value: Any, redact: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_redact_json(v, redact) for v in value]
    if isinstance(value, dict):
        return {redact(k) if isinstance(k, str) else k: _redact_json(v, redact) for k, v in value.items()}
    return value
