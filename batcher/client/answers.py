"""What an API answer says, read without trusting it: the answers' shapes, error texts and codes,
Retry-After, origins, job ids, and the key's every form, so it can be redacted from any of them."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx

from ..errors import (
    AuthError,
    CreditsExhausted,
    JobForbidden,
    MalformedAnswer,
    OutcomeUnknown,
    RateLimited,
    RejectedError,
    ServerError,
)
from ..outputs.media import VideoInfo
from ..redaction import REDACTED as REDACTED  # re-exported: the word every redaction writes
from ..redaction import Secrets
from ..text import as_number, type_name

DEFAULT_MAX_RETRY_AFTER = 300.0  # seconds: a longer Retry-After is capped to this
# What a job id may look like before it goes into a path: no slashes, dots-only segments or
# query characters, so an answer cannot steer our requests elsewhere on the API.
SAFE_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")
DEFAULT_PORTS = {"http": 80, "https": 443}
# What `clean` writes for a character no database stores (a lone surrogate: valid JSON, "\\ud800";
# a NUL, which PostgreSQL refuses): an id or a URL holding it is refused as unusable.
GARBLED = "\ufffd"
GARBLED_URL = "holds a lone surrogate or NUL, which no URL has"
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # (json.loads pairs surrogates: any left are lone)


def clean(value: Any) -> Any:
    """A parsed answer with every lone surrogate and NUL in its strings (keys too, at any depth)
    replaced by GARBLED: neither SQLite, psycopg nor an encoder downstream can take them."""
    if isinstance(value, str):
        if value.isascii():  # the usual case, and the fast one
            return value.replace("\x00", GARBLED) if "\x00" in value else value
        return _UNSTORABLE.sub(GARBLED, value)
    if isinstance(value, list):
        return [clean(v) for v in value]
    if isinstance(value, dict):
        return {clean(k): clean(v) for k, v in value.items()}
    return value


def answer_json(response: httpx.Response) -> Any:
    """An answer's JSON body, cleaned (see `clean`): the one place an API's JSON is parsed. Raises
    ValueError (and UnicodeDecodeError) for a body that is not JSON, nested past all reason too."""
    try:
        return clean(response.json())
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


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
    output_problem: str | None = None  # completed, but no output in a documented shape: why, naming the body
    created_at: float | None = None  # when the API says the job was created (createdAt), epoch seconds
    completed_at: float | None = None  # when it says the job ended (completedAt)

    @property
    def done(self) -> bool:
        return self.status in ("completed", "failed")


OUTPUT_SHAPES = ("output.video (a URL), else output.videos[0] (a URL, or an object with a url); for image models "
                 "output.image, else output.images[0]")


@dataclass(frozen=True)
class OutputURL:
    """A completed job's output URL and where the answer put it (`output.videos[0].url`), or, with
    no URL, the `problem` that left it without one."""

    url: str | None
    where: str
    problem: str | None = None
    garbled: bool = False  # the URL held a character no URL has (see `clean`): the answer is malformed


def output_url(output: Any) -> OutputURL:
    """A completed job's output URL, read as PixelDojo's own scripts read it: `output.video`, else
    `output.videos[0]`; for image models `output.image`, else `output.images[0]`. Video first.

    A list's first element is a URL or an object whose `url` is one. A key that is there (not null)
    must hold exactly that shape: a wrong one is named, never skipped for the next key, and no
    URL is guessed from anything else. Problems name keys and types only, never the answer's text
    (the caller shows that, redacted)."""
    if not isinstance(output, dict):
        return OutputURL(None, "", "the answer has no output" if output is None
                         else f"output is {type_name(output)}, not an object")
    for one, many in (("video", "videos"), ("image", "images")):
        if output.get(one) is not None:
            return _web_url(output[one], f"output.{one}")
        items = output.get(many)
        if items is None:
            continue
        where = f"output.{many}"
        if not isinstance(items, list) or not items:
            return OutputURL(None, where, f"{where} is empty" if isinstance(items, list)
                             else f"{where} is {type_name(items)}, not a list")
        if isinstance(items[0], dict):
            return _web_url(items[0].get("url"), f"{where}[0].url")
        return _web_url(items[0], f"{where}[0]")
    return OutputURL(None, "", "output has no video, videos, image or images")


def _web_url(value: Any, where: str) -> OutputURL:
    if not isinstance(value, str):
        return OutputURL(None, where, f"{where} is {type_name(value)}, not a URL")
    if GARBLED in value:
        return OutputURL(None, where, f"{where} {GARBLED_URL}", garbled=True)
    if origin(value) is None:
        return OutputURL(None, where, f"{where} is not an http or https URL")
    return OutputURL(value, where)


@dataclass(frozen=True)
class Download:
    path: Path | None  # None: the video went to an object store, not a file
    size: int
    sha256: str
    video: VideoInfo | None = None  # duration and frame size, read from the header as it passed


@dataclass(frozen=True)
class ReferenceFetch:
    """What a reference URL answered: its status, validators, first bytes and size.

    `size` is the whole image's size in bytes: the declared one (Content-Length of a 200,
    the total of a 206's Content-Range), or the bytes streamed when the answer declared none
    (more than the cap when reading stopped there); None when nothing says it."""

    status: int
    url: str  # after redirects
    head: bytes
    size: int | None
    etag: str | None = None
    last_modified: str | None = None


def declared_size(response: httpx.Response) -> int | None:
    """The whole body's size an answer declares: a 206's Content-Range total, a 200's Content-Length."""
    if response.status_code == 206:
        total = response.headers.get("content-range", "").rpartition("/")[2].strip()
        return int(total) if total.isdigit() else None
    length = response.headers.get("content-length", "")
    return int(length) if length.isdigit() else None


async def read_reference(response: httpx.Response, url: str, keep: int, max_bytes: int) -> ReferenceFetch:
    """Read the first `keep` bytes of a 200/206 answer; with no declared size, stream on (counting,
    not keeping) until the end or past `max_bytes`, so an endless answer is cut there."""
    size = declared_size(response)
    head = bytearray()
    counted = 0
    async for chunk in response.aiter_bytes():
        counted += len(chunk)
        if len(head) < keep:
            head += chunk[: keep - len(head)]
        if (size is not None and len(head) >= keep) or counted > max_bytes:
            break
    if size is None and response.status_code == 200:
        size = counted
    return ReferenceFetch(response.status_code, url, bytes(head), size, response.headers.get("etag"),
                          response.headers.get("last-modified"))


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
    text = response.content[:65536].decode("utf-8", "replace")
    if len(response.content) > 65536:
        # The word the cut fell in is dropped: a key cut short there is never recognised as one.
        text = text[:len(text.rstrip()) - len(text.rstrip().split()[-1])] if text.split() else ""
    head = " ".join(redact(text).split())[:120]
    kind = redact(clean(response.headers.get("content-type", "no content type").split(";")[0]))
    return f"HTTP {response.status_code} {kind}: {head!r}"


def api_message(response: httpx.Response, redact: Callable[[str], str] = _verbatim) -> tuple[str | None, str]:
    """(error code, message) from an API error body, whatever its shape."""
    try:
        data = answer_json(response)
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


# What makes a presigned URL (a reference image's) a capability: its signature, credential and
# session token, in the query as sent or percent-encoded once more. Redacted whatever signed it:
# credentials refresh during a run, and an API may quote the URL back.
_SIGNED = "|".join(rf"(?<=X-Amz-{name}{eq})" for name in ("Signature", "Credential", "Security-Token")
                   for eq in ("=", "%3D", "%253D"))
SIGNED_QUERY = re.compile(rf"(?:{_SIGNED})[^&\s\"'<>]+", re.IGNORECASE)


def secret_pattern(key: str, *others: str) -> Secrets | None:
    """Every form the key (and `others`: a reference store's credentials) may come back in, found
    after decoding (see `redaction`): bare, percent-encoded (any characters, either hex case, any
    depth), JSON-escaped (any characters, `\\u` or `\\/`), any case, and the whole `Bearer <key>`
    (or `Bearer%20<key>`) around any of them."""
    return Secrets.of((key, *others))


def redact_json(value: Any, redact: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [redact_json(v, redact) for v in value]
    if isinstance(value, dict):
        return {redact(k) if isinstance(k, str) else k: redact_json(v, redact) for k, v in value.items()}
    return value


def rate_limited(message: str, response: httpx.Response, redact: Callable[[str], str],
                 max_retry_after: float) -> RateLimited:
    """A 429 as an error: Retry-After honoured up to `max_retry_after` (5 s when it has none usable),
    with what the server asked kept, so the run can say it was cut."""
    asked = asked_retry_after(response)
    wait = 5.0 if asked is None else min(asked, max_retry_after)
    return RateLimited(redact(message), wait, asked=asked)


def raise_for_status(response: httpx.Response, paid: bool, redact: Callable[[str], str], max_retry_after: float,
                     *, one_job: bool = False) -> None:
    """Raise the error an answer's status code means (nothing below 400); every text redacted. A paid
    request answered 5xx may have been charged: OutcomeUnknown, never retried silently. `one_job`:
    the request concerns one job (its status), so a 401/403 (but for credits) is that job's
    problem (JobForbidden: "it belongs to another workspace"), not a refused key."""
    status = response.status_code
    if status < 400:
        return
    code, message = api_message(response, redact)
    if one_job and (status == 401 or (status == 403 and code not in ("insufficient_credits", "quota_exceeded"))):
        raise JobForbidden(f"the API refused this job's status ({status}): {message}", status)
    if status == 401:
        raise AuthError(f"the API rejected the key (401): {message}", status)
    if status == 402 or (status == 403 and code in ("insufficient_credits", "quota_exceeded")):
        raise CreditsExhausted(f"not enough credits ({status}): {message}", status)
    if status == 403:
        raise AuthError(f"the API refused access (403): {message}", status)
    if status == 429:
        raise rate_limited(f"rate limited: {message}", response, redact, max_retry_after)
    if status >= 500:
        cls = OutcomeUnknown if paid else ServerError
        raise cls(f"server error: {describe(response, redact)}", status)
    raise RejectedError(f"the API refused the request ({status}): {message}", status)


def read_status(job_id: str, data: dict[str, Any], response: httpx.Response, redact: Callable[[str], str],
                leaks: Callable[[str], bool]) -> JobStatus:
    """A status answer's body, read without trusting it. Raises MalformedAnswer for one that has no
    status, names another kind of job id, or hands an output URL that carries the key."""
    status = data.get("status")
    if not isinstance(status, str):
        raise MalformedAnswer(f"the status answer has no status: {describe(response, redact)}",
                              response.status_code)
    answered_id = data.get("jobId")
    if answered_id is not None and (not is_safe_job_id(answered_id) or leaks(answered_id)):
        raise MalformedAnswer(f"the status answer's jobId is not a plain id: {describe(response, redact)}",
                              response.status_code)
    if answered_id is not None and answered_id != job_id:
        # Another job's answer (a status URL several jobs were given): its clip is not this job's.
        raise MalformedAnswer(f"the status answer is about job {answered_id}, not {job_id}", response.status_code)
    # Only a completed job's output is read: in any shape but the documented ones it is never
    # guessed at; that one job fails, its reason naming the body.
    found = output_url(data.get("output")) if status == "completed" else None
    problem = None
    if found is not None and found.garbled:
        raise MalformedAnswer(f"{found.problem}: {describe(response, redact)}", response.status_code)
    if found is not None and found.url is None:
        problem = (f"the completed job's output is unusable ({found.problem}); expected {OUTPUT_SHAPES}: "
                   f"{describe(response, redact)}")
    if found is not None and found.url is not None and leaks(found.url):
        raise MalformedAnswer(f"{found.where} carries the API key: {describe(response, redact)}",
                              response.status_code)
    error = data.get("error")
    if isinstance(error, dict):
        error = error.get("message") or error.get("code")
    return JobStatus(job_id, redact(status), found.url if found else None, redact(str(error)) if error else None,
                     as_number(data.get("creditCost")), parse_time(data.get("expiresAt")), problem,
                     parse_time(data.get("createdAt")), parse_time(data.get("completedAt")))
