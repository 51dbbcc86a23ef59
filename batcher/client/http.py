"""The PixelDojo API client (httpx): one method per endpoint, every answer classified.

The classification is what keeps users from paying twice: a paid POST that fails before the
request could have left (`NotSentError`) is safe to send again; anything after that point
(`OutcomeUnknown`) is not. The key is sent only to the API base's exact origin (scheme, host,
port), and never appears in an error or a log line: every text an answer brings is redacted here,
where foreign text enters, and ids or URLs that carry it are refused. Here too every string of an
answer is cleaned of what no database stores (lone surrogates, NUL: see `answers.clean`), once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit

import anyio
import httpx

from ..errors import (
    AnswerTooLarge,
    DownloadRefused,
    MalformedAnswer,
    NotSentError,
    OutcomeUnknown,
    ServerError,
    TooSlow,
    UsageError,
)
from ..policy import Deadlines
from ..text import as_number
from .answers import (
    DEFAULT_MAX_RETRY_AFTER,
    GARBLED,
    GARBLED_URL,
    REDACTED,
    SIGNED_QUERY,
    Download,
    JobStatus,
    ReferenceFetch,
    Submission,
    answer_json,
    describe,
    is_safe_job_id,
    origin,
    parse_time,
    raise_for_status,
    read_reference,
    read_status,
    redact_json,
    secret_pattern,
)
from .connections import http_client
from .transfers import MAX_ANSWER_BYTES, FileSink, VideoSink, raise_for_download, read_capped, save_video

DEFAULT_BASE = "https://pixeldojo.ai"
# Batcher's simulator marks every answer so ("1"): its runs are simulated, kept apart from real ones.
SIMULATOR_HEADER = "x-batcher-simulator"
DEADLINES = Deadlines()  # the defaults
log = logging.getLogger("batcher.http")

# Failures that prove the request never left this machine.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


class PixelDojoClient:
    """Async client for one API base URL and key.

    Every text taken from an answer goes through `redact` before it leaves the client, so an API
    that echoes the key cannot get it into the ledger, an export or the console. A Retry-After
    over `max_retry_after` seconds (default 300) is cut to it. Every request has an overall
    deadline (`deadlines`), and an API answer is read up to MAX_ANSWER_BYTES, never further.
    """

    def __init__(self, api_key: str, base_url: str = DEFAULT_BASE, *,
                 transport: httpx.AsyncBaseTransport | None = None, timeout: float = 30.0,
                 before_request: Callable[[str], Awaitable[None]] | None = None,
                 after_response: Callable[[str, int | None], Awaitable[None]] | None = None,
                 max_retry_after: float = DEFAULT_MAX_RETRY_AFTER, also_redact: tuple[str, ...] = (),
                 deadlines: Deadlines = DEADLINES):
        if not max_retry_after >= 0:  # also refuses NaN
            raise UsageError(f"max_retry_after must be 0 or more seconds, got {max_retry_after!r}")
        if (problem := deadlines.check()) is not None:
            raise UsageError(problem)
        self.deadlines = deadlines
        self.base_url = base_url.rstrip("/")
        self._api_origin = origin(self.base_url)
        self._base_prefix = self.base_url + "/" if self._api_origin is not None else "\0"
        self._key = api_key
        # Redacted from every text: the key, and a reference store's credentials (they ride in
        # presigned URLs). Refused in ids and URLs an answer names: the key alone, since any
        # presigned URL (an output's, a reference's) carries some credential of its own.
        self._secret = secret_pattern(api_key, *also_redact)
        self._key_only = secret_pattern(api_key)
        self.max_retry_after = max_retry_after
        self.served_by_simulator = False  # an answer carried SIMULATOR_HEADER
        self._http = http_client(transport, timeout)
        # Hooks for the pool's rate limiter: called with the request kind ("submit", "poll", ...).
        self._before, self._after = before_request, after_response

    def set_hooks(self, before_request: Callable[[str], Awaitable[None]] | None,
                  after_response: Callable[[str, int | None], Awaitable[None]] | None) -> None:
        """Install the rate limiter's hooks: awaited before each request and after each answer."""
        self._before, self._after = before_request, after_response

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> PixelDojoClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    def redact(self, text: str) -> str:
        """`text` with the key (bare, as `Bearer <key>`) and the store's credentials replaced by
        [redacted] in whatever encoding hides them: percent-escapes at any depth, JSON escapes,
        any case (see `redaction`); and a presigned URL's signature, credential and token."""
        if "x-amz-" in text.lower():
            text = SIGNED_QUERY.sub(REDACTED, text)
        return text if self._secret is None else self._secret.redact(text)

    def _leaks(self, text: str) -> bool:
        return self._key_only is not None and self._key_only.search(text)

    def _describe(self, response: httpx.Response) -> str:
        return describe(response, self.redact)

    def _same_origin(self, url: str) -> bool:
        # Most URLs are the API's own paths: a plain prefix of the base proves the origin without
        # parsing ("https://host/" cannot be the start of another host's URL).
        if url.startswith(self._base_prefix):
            return True
        return self._api_origin is not None and origin(url) == self._api_origin

    def _auth(self, url: str) -> dict[str, str]:
        # Never hand the key to anyone but the API base's exact origin (scheme, host, port): not
        # to another host, nor over plain HTTP, nor to another port, whatever URL an answer names.
        if not self._same_origin(url):
            return {}
        return {"authorization": f"Bearer {self._key}"}

    async def _answered(self, kind: str, method: str, url: str, status: int | None, started: float) -> None:
        """Log one request (never its headers: they carry the key) and tell the rate limiter."""
        ms = (time.monotonic() - started) * 1000
        path = self.redact(urlsplit(url).path)  # a redirect's Location is the server's text
        log.info("%s %s %s %.0fms", method, path, status if status is not None else "-", ms,
                 extra={"kind": kind, "method": method, "path": path, "status": status, "ms": round(ms, 1)})
        if self._after:
            await self._after(kind, status)

    async def _send(self, kind: str, method: str, url: str, *, body: Any = None, paid: bool = False,
                    one_job: bool = False) -> httpx.Response:
        """One request, its answer read whole (up to MAX_ANSWER_BYTES) within the request deadline and
        raised for its status. A paid request that fails after it may have left: OutcomeUnknown."""
        if self._before:
            await self._before(kind)
        started = time.monotonic()
        status: int | None = None
        where = f"{method} {urlsplit(url).path}"
        try:
            with anyio.fail_after(self.deadlines.request):
                request = self._http.build_request(method, url, json=body, headers=self._auth(url))
                response = await self._http.send(request, stream=True)
                status = response.status_code
                self.served_by_simulator |= response.headers.get(SIMULATOR_HEADER) == "1"
                try:
                    await read_capped(response, MAX_ANSWER_BYTES)
                finally:
                    await response.aclose()
        except TimeoutError:
            # httpx's read timeout restarts with every byte: only this bound ends a dripping answer.
            late = f"{where}: the answer did not come in time (not whole within {self.deadlines.request:g}s)"
            raise (OutcomeUnknown(self.redact(late)) if paid else TooSlow(self.redact(late))) from None
        except AnswerTooLarge as e:
            if paid:  # read or not, the POST was answered: it may have been charged
                raise OutcomeUnknown(self.redact(f"{where}: {e}"), status) from None
            raise
        except NOT_SENT as e:
            # For a GET the distinction does not matter: both are safe to retry.
            cls: type[NotSentError | OutcomeUnknown | ServerError] = NotSentError if paid else ServerError
            raise cls(self.redact(f"{where}: could not connect ({type(e).__name__})")) from None
        except httpx.RequestError as e:  # transport failures, and bodies that cannot be decoded
            # httpx's own text may quote the URL or what the server sent
            cls = OutcomeUnknown if paid else ServerError
            raise cls(self.redact(f"{where}: connection failed after sending ({type(e).__name__}: {e})")) from None
        finally:
            await self._answered(kind, method, url, status, started)
        raise_for_status(response, paid, self.redact, self.max_retry_after, one_job=one_job)
        return response

    def _json(self, response: httpx.Response, paid: bool) -> dict[str, Any]:
        try:
            data = answer_json(response)  # cleaned: nothing downstream holds a lone surrogate or a NUL
        except ValueError:  # (UnicodeDecodeError is one)
            data = None
        if not isinstance(data, dict):
            cls = OutcomeUnknown if paid else MalformedAnswer
            raise cls(f"the API answered something that is not the documented JSON: {self._describe(response)}",
                      response.status_code)
        return data

    # --- endpoints ---------------------------------------------------------------------------

    async def read(self, kind: str, path: str) -> dict[str, Any]:
        """GET one of the API's JSON documents (`path` under the base: the model list, a model,
        its schema), every text in it redacted: its names and values end up in messages."""
        response = await self._send(kind, "GET", f"{self.base_url}{path}")
        document: dict[str, Any] = redact_json(self._json(response, paid=False), self.redact)
        return document

    async def schema(self, model: str) -> dict[str, Any]:
        """The model's parameter JSON schema."""
        return await self.read("schema", f"/api/v1/models/{quote(model, safe='')}/schema")

    async def submit(self, model: str, wire: dict[str, Any]) -> Submission:
        """POST a job. Raises NotSentError (safe to resend) or OutcomeUnknown (never resend silently)."""
        response = await self._send("submit", "POST", f"{self.base_url}/api/v1/models/{quote(model, safe='')}/run",
                                    body=wire, paid=True)
        data = self._json(response, paid=True)
        job_id, status_url, cost = data.get("jobId"), data.get("statusUrl"), data.get("creditCost")
        if not isinstance(job_id, str) or not job_id:
            raise OutcomeUnknown(f"the submit answer lacks a jobId: {self._describe(response)}", response.status_code)
        # A charge that is negative, infinite or not a number would let a run spend past its
        # budget: it is not believed (the caller counts its estimate instead), but the job is
        # known, so it is polled like any other.
        charge = as_number(cost)
        believable = charge is not None and charge >= 0
        problem = None if believable else \
            f"the API's creditCost {self.redact(repr(cost)[:40])} is not a believable charge"
        # The POST may have been charged: a job id or status URL we cannot use holds the job
        # (OutcomeUnknown) instead of storing what would splice into paths or carry the key.
        if not is_safe_job_id(job_id) or self._leaks(job_id):
            raise OutcomeUnknown(f"the submit answer's jobId is not a plain id: {self._describe(response)}",
                                 response.status_code)
        if isinstance(status_url, str) and (self._leaks(status_url) or GARBLED in status_url):
            why = "carries the API key" if self._leaks(status_url) else GARBLED_URL
            raise OutcomeUnknown(f"the submit answer's statusUrl {why}: {self._describe(response)}",
                                 response.status_code)
        status_url = self.status_url_for(job_id, status_url if isinstance(status_url, str) else None)
        return Submission(job_id, status_url, charge if believable else None, as_number(data.get("creditsRemaining")),
                          parse_time(data.get("expiresAt")), problem)

    def status_url_for(self, job_id: str, status_url: str | None) -> str:
        """The URL to poll: the API's statusUrl when it is on the API base's exact origin and its path
        ends with this job's id, else one built from the id (an answer giving several jobs one
        statusUrl would give them one clip). MalformedAnswer for an id that is not a plain token."""
        if not is_safe_job_id(job_id) or self._leaks(job_id):
            raise MalformedAnswer(f"refusing to poll job id {self.redact(job_id)[:60]!r}: not a plain id")
        if status_url and self._same_origin(status_url) and not self._leaks(status_url) \
                and _names_job(status_url, job_id):
            return status_url
        return f"{self.base_url}/api/v1/jobs/{quote(job_id, safe='')}"

    async def status(self, job_id: str, status_url: str | None = None) -> JobStatus:
        """GET the job's status. Raises ServerError/TooSlow/RateLimited (retry), MalformedAnswer (and
        AnswerTooLarge), RejectedError, and JobForbidden for a 401/403 about this job."""
        response = await self._send("poll", "GET", self.status_url_for(job_id, status_url), one_job=True)
        return read_status(job_id, self._json(response, paid=False), response, self.redact, self._leaks)

    async def fetch_reference(self, url: str, max_bytes: int, headers: dict[str, str] | None = None, *,
                              keep: int = 128 * 1024, max_redirects: int = 5) -> ReferenceFetch:
        """GET a reference image's first bytes for preflight, never with the key (see `fetch_reference`),
        within the request deadline (TooSlow past it)."""
        try:
            with anyio.fail_after(self.deadlines.request):
                return await fetch_reference(self._http, url, max_bytes, headers or {}, keep=keep,
                                             max_redirects=max_redirects, leaks=self._leaks, redact=self.redact)
        except TimeoutError:
            raise TooSlow(f"the reference did not answer in time (not whole within {self.deadlines.request:g}s)"
                          ) from None

    async def download(self, url: str, dest: Path | VideoSink, *, max_bytes: int, max_redirects: int = 5) -> Download:
        """Stream a video to `dest` (a temporary file name, or a sink: an object being uploaded), checked
        whole MP4; more than `max_bytes` aborts. Raises DownloadRefused for a URL never to fetch (not
        http(s), or carrying the key), OutputGone for 403/404/410, ServerError for what is worth retrying
        (TooSlow once slower than `Deadlines.download_ends` allows), MalformedAnswer for no whole video."""
        for _ in range(max_redirects + 1):
            refuse_download_url(url, self._leaks, self.redact)
            got = await self._fetch_video(url, dest, max_bytes)
            if isinstance(got, Download):
                return got
            url = got
        raise MalformedAnswer(f"more than {max_redirects} redirects")

    async def _fetch_video(self, url: str, dest: Path | VideoSink, max_bytes: int) -> Download | str:
        """One GET of a download: the video saved, or the URL a redirect names."""
        if self._before:
            await self._before("download")
        started = time.monotonic()
        status: int | None = None
        begun = anyio.current_time()
        try:
            # Until the headers come, the request deadline; then that plus what has arrived at
            # the minimum rate (it grows with every chunk; a declared length is not believed).
            with anyio.CancelScope(deadline=begun + self.deadlines.request) as scope:
                async with self._http.stream("GET", url, headers=self._auth(url)) as response:
                    status = response.status_code
                    if response.is_redirect:
                        return redirected(url, response.headers.get("location", ""))
                    raise_for_download(response, max_bytes, self.redact, self.max_retry_after)
                    sink = FileSink(dest) if isinstance(dest, Path) else dest
                    return await save_video(response, sink, max_bytes, within=(scope, begun, self.deadlines))
        except httpx.RequestError as e:  # transport failures, and bodies that cannot be decoded
            raise ServerError(f"download failed: {type(e).__name__}") from None
        finally:
            await self._answered("download", "GET", url, status, started)
        raise TooSlow(f"the download did not end in time: {anyio.current_time() - begun:.0f}s, past --request-deadline "
                      f"and slower than --min-download-rate {self.deadlines.min_download_kbps:g} KB/s")

def _names_job(url: str, job_id: str) -> bool:
    """Whether `url`'s path, as it will be sent, ends with the segment `job_id` (quoted or not)."""
    if GARBLED in url:
        return False
    try:
        path = httpx.URL(url).raw_path.split(b"?", 1)[0].decode("ascii")
    except (httpx.InvalidURL, TypeError, ValueError):
        return False
    return unquote(path.rpartition("/")[2]) == job_id


def scheme_of(url: str) -> str:
    """A URL's scheme; "" when it has none, or cannot be read at all (an IPv6 host left open:
    "http://[x", which urlsplit refuses with a ValueError an answer must not raise through us)."""
    try:
        return urlsplit(url).scheme
    except ValueError:
        return ""


def redirected(url: str, location: str) -> str:
    """Where a redirect from `url` to `location` leads; an unreadable `location` as it is (its
    scheme reads as none, so it is refused before anything is fetched)."""
    try:
        return urljoin(url, location)
    except ValueError:
        return location


def refuse_download_url(url: str, leaks: Callable[[str], bool], redact: Callable[[str], str]) -> None:
    """A URL that must never be fetched: refused at once, never retried (DownloadRefused)."""
    scheme = scheme_of(url)
    if scheme not in ("http", "https"):
        raise DownloadRefused(redact(f"refusing to download from a {scheme or 'relative or unreadable'} URL"))
    if leaks(url):  # a redirect's Location: httpx itself would log it in full
        raise DownloadRefused("refusing to download from a URL that carries the API key")


async def fetch_reference(http: httpx.AsyncClient, url: str, max_bytes: int, headers: dict[str, str], *, keep: int,
                          max_redirects: int, leaks: Callable[[str], bool], redact: Callable[[str], str]
                          ) -> ReferenceFetch:
    """GET a reference image's first `keep` bytes (its size, when undeclared, counted up to
    `max_bytes`). No Authorization header is ever sent, even to the API's own origin: reference
    URLs are the user's and must work without the key. At most `max_redirects` redirects, http(s)
    only. A 304 to conditional `headers` comes back as it is, with no body. Raises NotSentError
    when the host cannot be reached at all, ServerError when the connection fails later,
    MalformedAnswer for a refused URL or too many redirects."""
    for _ in range(max_redirects + 1):
        scheme = scheme_of(url)
        if scheme not in ("http", "https"):
            raise MalformedAnswer(f"not an http(s) URL ({scheme or 'relative or unreadable'})")
        if leaks(url):
            raise MalformedAnswer("refusing a URL that carries the API key")
        started = time.monotonic()
        status: int | None = None
        try:
            async with http.stream("GET", url, headers=headers, extensions={"batcher_reference": True}) as response:
                status = response.status_code
                if response.has_redirect_location:  # (not a 304)
                    url = redirected(url, response.headers["location"])
                    continue
                if status not in (200, 206):
                    return ReferenceFetch(status, url, b"", None, response.headers.get("etag"),
                                          response.headers.get("last-modified"))
                return await read_reference(response, url, keep, max_bytes)
        except NOT_SENT as e:
            raise NotSentError(f"could not connect ({type(e).__name__}: {redact(str(e))[:120]})") from None
        except httpx.RequestError as e:
            raise ServerError(f"the connection failed ({type(e).__name__})") from None
        finally:  # logged, but not counted in the API's request rate: reference hosts are others
            ms = (time.monotonic() - started) * 1000
            log.info("GET reference %s %.0fms", status if status is not None else "-", ms,
                     extra={"kind": "reference", "method": "GET", "status": status, "ms": round(ms, 1)})
    raise MalformedAnswer(f"more than {max_redirects} redirects")
