"""The suite's hostile API stand-in: the simulator behind a transport that misbehaves in named modes.

    transport = HostileApi(sim, Mode.ABSURD_COST, Mode.STATUS_FORBIDDEN)
    to = api.Target(sim.config.api_key, "https://pixeldojo.ai", transport, sim)

Each mode is one way a real API (or its output host) has been seen, or could be expected, to lie
or stall; a test names the modes it wants, and the stand-in keeps counts of what it did so tests
can assert on them (`hostile.done[Mode.X]`). Modes act on the simulator's real answers: the
simulator still keeps its own record of charges, so a test can hold the ledger against it.
"""

from __future__ import annotations

import enum
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx

from batcher.simulator import Simulator, SimulatorTransport


class Mode(str, enum.Enum):
    """One misbehaviour. Each mode's rule is in `_RULES` (one function each, below)."""

    # Money and data (issue 23: 2, 6)
    ABSURD_COST = "absurd-cost"  # every submit answer claims creditCost 1e308
    DUPLICATE_JOB_ID = "duplicate-job-id"  # every submit answer names the first job id the API gave
    # (issue 23: 3) one charge no clip could cost, on a render that fails, so it is refunded
    ABSURD_COST_REFUNDED = "absurd-cost-refunded"  # the `nth` submission claims `cost` (1e20); its render fails
    # Requests that never end, answers that never stop, one job's refusal (issue 23: 7, 8, 9, 14);
    # each acts on the first job (or file) it meets, the rest are served as they are
    SLOW_DRIP_STATUS = "slow-drip-status"  # one job's status answers drip a byte every `drip` s (true length)
    SLOW_DRIP_SUBMIT = "slow-drip-submit"  # the first submission's answer drips (the job was accepted)
    SLOW_DRIP_DOWNLOAD = "slow-drip-download"  # one output file drips
    ENDLESS_JSON_STATUS = "endless-json-status"  # one job's status answers never end
    ENDLESS_JSON_SUBMIT = "endless-json-submit"  # the first submission's answer never ends (accepted)
    STATUS_FORBIDDEN = "status-forbidden"  # one job's status: 403 "job belongs to another workspace"
    REDIRECT_TO_FILE = "redirect-to-file"  # every output file redirects to file:///etc/passwd
    # The ledger fails after a POST was answered (issue 23: 1)
    LEDGER_DOWN_AFTER_POST = "ledger-down-after-post"  # the ledger becomes unavailable as a submission is answered
    # Secrets and hostile text (issue 23: 10, 12)
    ESCAPED_KEY_IN_ERRORS = "escaped-key-in-errors"  # error texts and failed renders' reasons carry the key, escaped
    FORMULA_ERRORS = "formula-errors"  # error texts and failed renders' reasons start with a spreadsheet formula
    # Downloads of paid videos (issue 23: 4, 5, 7); each acts on every job's output, counted per job
    FLAKY_OUTPUT = "flaky-output"  # the first `flaky_gets` GETs of each job's output: 404, 403, 503 in turn
    BOGUS_CONTENT_LENGTH = "bogus-content-length"  # each job's first output GET declares 99999999999 bytes
    EXPIRED_OUTPUT = "expired-output"  # outputs answer 403; status says expiresAt passed, then gives no URL
    SLOW_OUTPUT = "slow-output"  # the first `slow_jobs` jobs' outputs stall and time out, until the rest are served
    # --- review of issue 23 (downloads' expiry) ---
    STABLE_OUTPUT_URL = "stable-output-url"  # status re-serves each job's first URL; its first GETs answer 404
    # Money's edges (review of issue 23: charges far below the price, fractions of a hundredth)
    CLAIMED_SHARE = "claimed-share"  # every accepted submission claims `share` (default 0) of its real charge
    # --- review of issue 23 (the client and polling) ---
    GARBLED_TEXT = "garbled-text"  # a `field` of the answers holds a lone surrogate or a NUL (valid JSON)
    SHARED_STATUS_URL = "shared-status-url"  # every accepted submission names the first one's statusUrl
    STATUS_NOT_FOUND = "status-not-found"  # one job's first `polls` status polls answer 404 "job not found"
    LYING_LENGTH_DRIP = "lying-length-drip"  # one output's first GET declares `length` bytes and drips
    # (further modes are added below by the items they test)


Rule = Callable[["HostileApi", httpx.Request], Awaitable[httpx.Response]]


def json_response(status: int, body: object, request: httpx.Request, headers: dict[str, str] | None = None
                  ) -> httpx.Response:
    """A JSON answer written as a lying API would write it (NaN and Infinity as they are)."""
    return httpx.Response(status, content=json.dumps(body).encode(), request=request,
                          headers={"content-type": "application/json", **(headers or {})})


def is_submit(request: httpx.Request) -> bool:
    return request.method == "POST" and request.url.path.endswith("/run")


def is_status(request: httpx.Request) -> bool:
    return request.method == "GET" and request.url.path.startswith("/api/v1/jobs/")


def is_download(request: httpx.Request) -> bool:
    """A GET of an output file (the simulator serves them under its temporary host's path)."""
    return request.method == "GET" and not request.url.path.startswith("/api/")


class HostileApi(httpx.AsyncBaseTransport):
    """The simulator behind the misbehaviours named by `modes` (see `Mode`)."""

    def __init__(self, sim: Simulator, *modes: Mode, **settings: object):
        self.sim = sim
        self.inner = SimulatorTransport(sim)
        self.modes = set(modes)
        self.settings = settings  # per-mode knobs, documented with each rule
        self.done: Counter[Mode] = Counter()  # how many answers each mode changed
        self.memory: dict[str, object] = {}  # what a rule must remember between requests

    async def real(self, request: httpx.Request) -> httpx.Response:
        return await self.inner.handle_async_request(request)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        for mode in Mode:
            if mode in self.modes:
                answer = await _RULES[mode](self, request)
                if answer is not None:
                    return answer
        return await self.real(request)


async def _real_json(api: HostileApi, request: httpx.Request) -> tuple[httpx.Response, dict | None]:
    response = await api.real(request)
    await response.aread()
    try:
        body = json.loads(response.content)
    except ValueError:
        return response, None
    return response, body if isinstance(body, dict) else None


async def _absurd_cost(api: HostileApi, request: httpx.Request) -> httpx.Response | None:
    """Setting `cost` (default 1e308): the creditCost every accepted submission claims."""
    if not is_submit(request):
        return None
    response, body = await _real_json(api, request)
    if response.status_code != 202 or body is None:
        return response
    body["creditCost"] = api.settings.get("cost", 1e308)
    api.done[Mode.ABSURD_COST] += 1
    return json_response(202, body, request)


async def _duplicate_job_id(api: HostileApi, request: httpx.Request) -> httpx.Response | None:
    """Every accepted submission after the first is answered with the first one's jobId and statusUrl."""
    if not is_submit(request):
        return None
    response, body = await _real_json(api, request)
    if response.status_code != 202 or body is None:
        return response
    first = api.memory.setdefault("first-answer", {"jobId": body["jobId"], "statusUrl": body.get("statusUrl")})
    assert isinstance(first, dict)
    if first["jobId"] != body["jobId"]:
        body.update(first)
        api.done[Mode.DUPLICATE_JOB_ID] += 1
    return json_response(202, body, request)


async def drip(chunks: list[bytes], pause: float) -> AsyncIterator[bytes]:
    """A body that arrives one chunk every `pause` seconds (a slow-drip answer)."""
    import anyio

    for chunk in chunks:
        await anyio.sleep(pause)
        yield chunk


_RULES: dict[Mode, Rule] = {
    Mode.ABSURD_COST: _absurd_cost,  # type: ignore[dict-item]
    Mode.DUPLICATE_JOB_ID: _duplicate_job_id,  # type: ignore[dict-item]
}


# --- requests that never end, answers that never stop, one job's refusal (issue 23: 7, 8, 9, 14) ---

def _victim(api: HostileApi, mode: Mode, name: str) -> bool:
    """Whether `name` (a job id, an output path) is the one `mode` acts on: the first it met."""
    return api.memory.setdefault(f"victim:{mode.value}", name) == name


def _job_of(request: httpx.Request) -> str:
    return request.url.path.rsplit("/", 1)[-1]


async def _dripping(api: HostileApi, request: httpx.Request, mode: Mode) -> httpx.Response:
    """The real answer, its body dripped a byte every `drip` seconds (default 1.0) under its true length."""
    response = await api.real(request)
    body = await response.aread()
    api.done[mode] += 1
    headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
    return httpx.Response(response.status_code, request=request, content=drip(
        [body[i:i + 1] for i in range(len(body))], float(api.settings.get("drip", 1.0))),  # type: ignore[arg-type]
        headers={**headers, "content-length": str(len(body))})


async def _slow_drip_status(api: HostileApi, request: httpx.Request) -> httpx.Response | None:
    if not is_status(request) or not _victim(api, Mode.SLOW_DRIP_STATUS, _job_of(request)):
        return None
    return await _dripping(api, request, Mode.SLOW_DRIP_STATUS)


async def _slow_drip_submit(api: HostileApi, request: httpx.Request) -> httpx.Response | None:
    if not is_submit(request) or api.done[Mode.SLOW_DRIP_SUBMIT]:
        return None
    return await _dripping(api, request, Mode.SLOW_DRIP_SUBMIT)


async def _slow_drip_download(api: HostileApi, request: httpx.Request) -> httpx.Response | None:
    if not is_download(request) or not _victim(api, Mode.SLOW_DRIP_DOWNLOAD, request.url.path):
        return None
    return await _dripping(api, request, Mode.SLOW_DRIP_DOWNLOAD)


def endless_json(api: HostileApi) -> AsyncIterator[bytes]:
    """A JSON object that never ends: 64 KB of a string at a time. Every answer's bytes handed
    out so far are in `api.memory["endless"]` (a list, one total per answer). Setting `most`: a
    safety net for a client that would read on, the bytes after which the answer stops after all."""
    sent: list[int] = api.memory.setdefault("endless", [])  # type: ignore[assignment]
    sent.append(0)
    index = len(sent) - 1
    most = api.settings.get("most")

    async def body() -> AsyncIterator[bytes]:
        chunk = b'{"status": "running", "pad": "'
        while most is None or sent[index] < most:  # type: ignore[operator]
            sent[index] += len(chunk)
            yield chunk
            chunk = b"x" * 65536
    return body()


async def _endless_json_status(api: HostileApi, request: httpx.Request) -> httpx.Response | None:
    if not is_status(request) or not _victim(api, Mode.ENDLESS_JSON_STATUS, _job_of(request)):
        return None
    await api.real(request)
    api.done[Mode.ENDLESS_JSON_STATUS] += 1
    return httpx.Response(200, request=request, content=endless_json(api), headers={"content-type": "application/json"})


async def _endless_json_submit(api: HostileApi, request: httpx.Request) -> httpx.Response | None:
    if not is_submit(request) or api.done[Mode.ENDLESS_JSON_SUBMIT]:
        return None
    response = await api.real(request)  # accepted, and charged, by the simulator
    api.done[Mode.ENDLESS_JSON_SUBMIT] += 1
    return httpx.Response(response.status_code, request=request, content=endless_json(api),
                          headers={"content-type": "application/json"})


async def _status_forbidden(api: HostileApi, request: httpx.Request) -> httpx.Response | None:
    if not is_status(request) or not _victim(api, Mode.STATUS_FORBIDDEN, _job_of(request)):
        return None
    api.done[Mode.STATUS_FORBIDDEN] += 1
    return json_response(403, {"error": {"code": "forbidden", "message": "job belongs to another workspace"}},
                         request)


async def _redirect_to_file(api: HostileApi, request: httpx.Request) -> httpx.Response | None:
    if not is_download(request):
        return None
    api.done[Mode.REDIRECT_TO_FILE] += 1
    return httpx.Response(302, request=request, headers={"location": "file:///etc/passwd"})


_RULES.update({
    Mode.SLOW_DRIP_STATUS: _slow_drip_status,  # type: ignore[dict-item]
    Mode.SLOW_DRIP_SUBMIT: _slow_drip_submit,  # type: ignore[dict-item]
    Mode.SLOW_DRIP_DOWNLOAD: _slow_drip_download,  # type: ignore[dict-item]
    Mode.ENDLESS_JSON_STATUS: _endless_json_status,  # type: ignore[dict-item]
    Mode.ENDLESS_JSON_SUBMIT: _endless_json_submit,  # type: ignore[dict-item]
    Mode.STATUS_FORBIDDEN: _status_forbidden,  # type: ignore[dict-item]
    Mode.REDIRECT_TO_FILE: _redirect_to_file,  # type: ignore[dict-item]
})


# --- the ledger fails after a POST was answered (issue 23: 1) -------------------------------------

async def _ledger_down_after_post(api: HostileApi, request: httpx.Request) -> httpx.Response | None:
    """Settings: `outage` (tests/outages.py, on the run's ledger), `seconds` it lasts (default 5),
    `times` (default 1), `after` (default "submit"; "status": a poll that finds a render done;
    "download": an output file): the first such answers come back only once the ledger is
    unavailable, so the run's write of what the API did meets the outage."""
    import anyio

    after = api.settings.get("after", "submit")
    wanted = {"submit": is_submit, "status": is_status, "download": is_download}[str(after)]
    if not wanted(request) or api.done[Mode.LEDGER_DOWN_AFTER_POST] >= int(api.settings.get("times", 1)):
        return None
    response = await api.real(request)
    await response.aread()
    if response.status_code not in (200, 202) or (after == "status" and b'"completed"' not in response.content):
        return response
    api.done[Mode.LEDGER_DOWN_AFTER_POST] += 1
    outage = api.settings["outage"]
    await anyio.to_thread.run_sync(outage.start, float(api.settings.get("seconds", 5.0)))  # type: ignore[attr-defined]
    return response


_RULES[Mode.LEDGER_DOWN_AFTER_POST] = _ledger_down_after_post  # type: ignore[assignment]


# --- secrets and hostile text (issue 23: 10, 12) ----------------------------------------------------

def escaped_key(key: str, how: str = "json") -> str:
    """`key` as an answer may hide it, decodable: "json" every character `\\uXXXX`; "percent" every
    character `%XX` (upper case hex); "mixed" by turns `\\uXXXX`, `%xx`, double-encoded `%25XX`,
    the character in upper case, and `\\/`-style escaped."""
    if how == "json":
        return "".join(f"\\u{ord(c):04x}" for c in key)
    if how == "percent":
        return "".join(f"%{ord(c):02X}" for c in key)
    forms = (lambda c: f"\\u{ord(c):04X}", lambda c: f"%{ord(c):02x}", lambda c: f"%25{ord(c):02X}",
             lambda c: c.upper(), lambda c: f"\\{c}" if c == "/" else c)
    return "".join(forms[i % len(forms)](c) for i, c in enumerate(key))


async def _rewritten_error(api: HostileApi, request: httpx.Request, mode: Mode, text: Callable[[str, str], str]
                           ) -> httpx.Response | None:
    """The real answer with its error text (an error body's message, a failed render's reason)
    replaced by `text(the text, the request's bearer token)`; None (untouched) when it has none."""
    response, body = await _real_json(api, request)
    if body is None:
        return response
    token = request.headers.get("authorization", "").removeprefix("Bearer ")
    error = body.get("error")
    if response.status_code >= 400 and isinstance(error, dict) and isinstance(error.get("message"), str):
        error["message"] = text(error["message"], token)
    elif body.get("status") == "failed" and isinstance(error, str):
        body["error"] = text(error, token)
    else:
        return response
    api.done[mode] += 1
    body_headers = ("content-length", "content-type", "content-encoding")
    kept = {k: v for k, v in response.headers.items() if k.lower() not in body_headers}
    return json_response(response.status_code, body, request, kept)  # Retry-After and the like kept


async def _escaped_key_in_errors(api: HostileApi, request: httpx.Request) -> httpx.Response | None:
    """Setting `escape` ("json", "percent" or "mixed", default "json"; see `escaped_key`): how the
    key is written into each error text, as `{"k":"<escaped key>"}` after the API's own words."""
    how = str(api.settings.get("escape", "json"))
    return await _rewritten_error(api, request, Mode.ESCAPED_KEY_IN_ERRORS,
                                  lambda error, token: f'{error}; {{"k":"{escaped_key(token, how)}"}}')


async def _formula_errors(api: HostileApi, request: httpx.Request) -> httpx.Response | None:
    """Setting `formula` (default a HYPERLINK formula): what each error text starts with."""
    formula = str(api.settings.get("formula", '=HYPERLINK("https://evil.example/x","details")'))
    return await _rewritten_error(api, request, Mode.FORMULA_ERRORS, lambda error, _token: f"{formula} {error}")


_RULES.update({
    Mode.ESCAPED_KEY_IN_ERRORS: _escaped_key_in_errors,  # type: ignore[dict-item]
    Mode.FORMULA_ERRORS: _formula_errors,  # type: ignore[dict-item]
})


# --- downloads of paid videos (issue 23: 4, 5, 7) ---------------------------------------------------

def output_job(api: HostileApi, request: httpx.Request) -> str | None:
    """The simulator's job id whose output file `request` asks for (None: not an output GET). Every
    URL the API minted for one job gives the same id, so a rule can count a job's tries across them."""
    if not is_download(request) or "/pixeldojotemp/" not in request.url.path:
        return None
    found = api.sim.files.get(request.url.path.rsplit("/", 1)[-1].removesuffix(".mp4"))
    return found[0] if found else None


def _tries(api: HostileApi, mode: Mode, job_id: str) -> int:
    """How many times `mode` has now seen `job_id`'s output asked for (this request included)."""
    seen: Counter[str] = api.memory.setdefault(f"tries:{mode.value}", Counter())  # type: ignore[assignment]
    seen[job_id] += 1
    return seen[job_id]


async def _flaky_output(api: HostileApi, request: httpx.Request) -> httpx.Response | None:
    """Setting `flaky_gets` (default 3): the first that many GETs of each job's output answer 404,
    403 and 503 in turn (an output host that is briefly wrong); later ones are served."""
    job_id = output_job(api, request)
    if job_id is None:
        return None
    tries = _tries(api, Mode.FLAKY_OUTPUT, job_id)
    if tries > int(api.settings.get("flaky_gets", 3)):  # type: ignore[call-overload]
        return None
    api.done[Mode.FLAKY_OUTPUT] += 1
    status = (404, 403, 503)[(tries - 1) % 3]
    return httpx.Response(status, request=request, content=b"<Error><Code>NoSuchKey</Code></Error>",
                          headers={"content-type": "application/xml"})


async def _bogus_content_length(api: HostileApi, request: httpx.Request) -> httpx.Response | None:
    """Setting `bogus_gets` (default 1): the first that many GETs of each job's output declare a
    Content-Length of 99999999999 (the body is the real video)."""
    job_id = output_job(api, request)
    if job_id is None or _tries(api, Mode.BOGUS_CONTENT_LENGTH, job_id) > int(
            api.settings.get("bogus_gets", 1)):  # type: ignore[call-overload]
        return None
    response = await api.real(request)
    body = await response.aread()
    api.done[Mode.BOGUS_CONTENT_LENGTH] += 1
    headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
    return httpx.Response(response.status_code, request=request, content=body,
                          headers={**headers, "content-length": "99999999999"})


async def _expired_output(api: HostileApi, request: httpx.Request) -> httpx.Response | None:
    """Every output GET answers 403 as an expired presigned URL does; every status answer of a
    completed job says its expiresAt is the setting `expires` (default: long past), and after the
    first one it has no output URL."""
    if output_job(api, request) is not None:
        api.done[Mode.EXPIRED_OUTPUT] += 1
        return httpx.Response(403, request=request, headers={"content-type": "application/xml"},
                              content=b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>")
    if not is_status(request):
        return None
    response, body = await _real_json(api, request)
    if body is None or body.get("status") != "completed":
        return response
    body["expiresAt"] = str(api.settings.get("expires", "2001-01-01T00:00:00Z"))
    if _tries(api, Mode.EXPIRED_OUTPUT, str(body.get("jobId"))) > 1:
        body["output"] = {}
    return json_response(response.status_code, body, request)


async def _slow_output(api: HostileApi, request: httpx.Request) -> httpx.Response | None:
    """Settings `slow_jobs` (default 2), `fresh_jobs` (the batch's other jobs, required), `stall`
    (default 0.3 s): the outputs of the first `slow_jobs` jobs whose video is asked for stall that
    long and then time out, as a download's deadline ends a slow drip, until every other job's
    output has been served; from then on they are served too. `memory["most-retries-at-once"]`:
    the most stalls at once of outputs asked for again (retries)."""
    job_id = output_job(api, request)
    if job_id is None:
        return None
    slow: list[str] = api.memory.setdefault("slow-jobs", [])  # type: ignore[assignment]
    served: set[str] = api.memory.setdefault("fresh-served", set())  # type: ignore[assignment]
    if job_id not in slow and len(slow) < int(api.settings.get("slow_jobs", 2)):  # type: ignore[call-overload]
        slow.append(job_id)
    if job_id not in slow:
        served.add(job_id)
        return None
    if len(served) >= int(api.settings["fresh_jobs"]):  # type: ignore[call-overload]
        return None
    import anyio

    api.done[Mode.SLOW_OUTPUT] += 1
    retry = _tries(api, Mode.SLOW_OUTPUT, job_id) > 1
    now: Counter[str] = api.memory.setdefault("slow-now", Counter())  # type: ignore[assignment]
    now["retries"] += retry
    api.memory["most-retries-at-once"] = max(now["retries"], int(api.memory.get("most-retries-at-once", 0)))  # type: ignore[call-overload]
    try:
        await anyio.sleep(float(api.settings.get("stall", 0.3)))  # type: ignore[arg-type]
    finally:
        now["retries"] -= retry
    raise httpx.ReadTimeout("the video did not arrive within its deadline", request=request)


_RULES.update({
    Mode.FLAKY_OUTPUT: _flaky_output,  # type: ignore[dict-item]
    Mode.BOGUS_CONTENT_LENGTH: _bogus_content_length,  # type: ignore[dict-item]
    Mode.EXPIRED_OUTPUT: _expired_output,  # type: ignore[dict-item]
    Mode.SLOW_OUTPUT: _slow_output,  # type: ignore[dict-item]
})


# --- money (issue 23: 3): an absurd charge, then refunded --------------------------------------

async def _absurd_cost_refunded(api: HostileApi, request: httpx.Request) -> httpx.Response | None:
    """Settings `nth` (default 3) and `cost` (default 1e20): the nth accepted submission claims
    that creditCost, and every status of its job says the render failed (the API refunds failed
    renders). The simulator itself charged its real price: only the answers lie."""
    mine = "absurd-refunded:"
    if is_submit(request):
        response, body = await _real_json(api, request)
        if response.status_code != 202 or body is None:
            return response
        count = int(api.memory.get(mine + "submits", 0)) + 1  # type: ignore[call-overload]
        api.memory[mine + "submits"] = count
        if count == int(api.settings.get("nth", 3)):  # type: ignore[call-overload]
            body["creditCost"] = api.settings.get("cost", 1e20)
            api.memory[mine + "job"] = body["jobId"]
            api.done[Mode.ABSURD_COST_REFUNDED] += 1
        return json_response(202, body, request)
    if is_status(request) and api.memory.get(mine + "job") == _job_of(request):
        return json_response(200, {"jobId": _job_of(request), "status": "failed",
                                   "error": {"code": "render_failed", "message": "the render failed"}}, request)
    return None


_RULES[Mode.ABSURD_COST_REFUNDED] = _absurd_cost_refunded  # type: ignore[assignment]


# --- money's edges (review of issue 23): a charge claimed far below the real one ----------------

async def _claimed_share(api: HostileApi, request: httpx.Request) -> httpx.Response | None:
    """Setting `share` (default 0): every accepted submission claims that share of what the
    simulator charged (0: free; 0.9997: a fraction of a hundredth below). The simulator's own
    record keeps the real charges."""
    if not is_submit(request):
        return None
    response, body = await _real_json(api, request)
    charged = body.get("creditCost") if body is not None and response.status_code == 202 else None
    if body is None or not isinstance(charged, (int, float)):
        return response
    api.done[Mode.CLAIMED_SHARE] += 1
    share = float(api.settings.get("share", 0.0))  # type: ignore[arg-type]
    return json_response(202, {**body, "creditCost": charged * share}, request)


_RULES[Mode.CLAIMED_SHARE] = _claimed_share  # type: ignore[assignment]


# --- review of issue 23 (downloads' expiry): an output URL the API re-serves unchanged ------------

async def _stable_output_url(api: HostileApi, request: httpx.Request) -> httpx.Response | None:
    """Settings `gone_gets` (default 1) and `answers` (default (404,)): the first that many GETs
    of each job's output answer those statuses in turn; `expires` (default: none): the expiresAt
    of every completed status answer (removed when none), each of which gives the job's first
    output URL again; `lost_polls` (default 0): that many status polls of a job after its first
    completed answer answer 404 "job not found" (an API briefly wrong about the job)."""
    job_id = output_job(api, request)
    if job_id is not None:
        tries = _tries(api, Mode.STABLE_OUTPUT_URL, job_id)
        if tries > int(api.settings.get("gone_gets", 1)):  # type: ignore[call-overload]
            return None
        api.done[Mode.STABLE_OUTPUT_URL] += 1
        answers: tuple[int, ...] = api.settings.get("answers", (404,))  # type: ignore[assignment]
        return httpx.Response(answers[(tries - 1) % len(answers)], request=request, content=b"<Error/>",
                              headers={"content-type": "application/xml"})
    if not is_status(request):
        return None
    urls: dict[str, str] = api.memory.setdefault("stable-urls", {})  # type: ignore[assignment]
    lost: Counter[str] = api.memory.setdefault("stable-lost", Counter())  # type: ignore[assignment]
    job = _job_of(request)
    if job in urls and lost[job] < int(api.settings.get("lost_polls", 0)):  # type: ignore[call-overload]
        lost[job] += 1
        return json_response(404, {"error": {"code": "not_found", "message": "job not found"}}, request)
    response, body = await _real_json(api, request)
    if body is None or body.get("status") != "completed" or not isinstance(body.get("output"), dict):
        return response
    body["output"]["video"] = urls.setdefault(job, body["output"]["video"])
    body.pop("expiresAt", None)
    if api.settings.get("expires") is not None:
        body["expiresAt"] = api.settings["expires"]
    return json_response(response.status_code, body, request)


_RULES[Mode.STABLE_OUTPUT_URL] = _stable_output_url  # type: ignore[assignment]


# --- review of issue 23 (the client and polling): text no database stores, one statusUrl for
# several jobs, a job briefly not found, a lying length that drips ----------------------------------

BASE_URL = "https://pixeldojo.ai"  # where the simulator's status URLs are


async def _rewritten_submission(api: HostileApi, request: httpx.Request, mode: Mode,
                                change: Callable[[dict], bool]) -> httpx.Response | None:
    """A submission's real answer; accepted, its body as `change` leaves it (counted for `mode`
    when `change` says it changed something). None (untouched) for any other request."""
    if not is_submit(request):
        return None
    response, body = await _real_json(api, request)
    if response.status_code != 202 or body is None:
        return response
    if change(body):
        api.done[mode] += 1
    return json_response(202, body, request)


async def _garbled_text(api: HostileApi, request: httpx.Request) -> httpx.Response | None:
    """Settings `field` (default "statusUrl") and `char` (default "\\ud800", a lone surrogate;
    "\\x00", a NUL), written as valid JSON escapes: "statusUrl" (as a query) or "jobId" of the
    first accepted submission; "video": the first completed status answer's output URL (as a
    query; later answers are true); "error": every failed render's reason and error's message."""
    field, char = str(api.settings.get("field", "statusUrl")), str(api.settings.get("char", "\ud800"))
    if field == "error":
        return await _rewritten_error(api, request, Mode.GARBLED_TEXT, lambda error, _token: f"upstream {char} {error}")
    if api.done[Mode.GARBLED_TEXT]:
        return None
    if field != "video":
        def garble(body: dict) -> bool:
            if field == "jobId":
                body["jobId"] += char
            else:
                body["statusUrl"] = f"{body.get('statusUrl') or BASE_URL + '/api/v1/jobs/' + body['jobId']}?x={char}"
            return True
        return await _rewritten_submission(api, request, Mode.GARBLED_TEXT, garble)
    if not is_status(request):
        return None
    response, body = await _real_json(api, request)
    if body is None or body.get("status") != "completed" or not isinstance(body.get("output"), dict):
        return response
    body["output"]["video"] += f"?x={char}"
    api.done[Mode.GARBLED_TEXT] += 1
    return json_response(response.status_code, body, request)


async def _shared_status_url(api: HostileApi, request: httpx.Request) -> httpx.Response | None:
    """Every accepted submission is answered with its own jobId but the first one's statusUrl."""
    def share(body: dict) -> bool:
        first = api.memory.setdefault("shared-status-url", body.get("statusUrl"))
        changed = first != body.get("statusUrl")
        body["statusUrl"] = first
        return changed
    return await _rewritten_submission(api, request, Mode.SHARED_STATUS_URL, share)


async def _status_not_found(api: HostileApi, request: httpx.Request) -> httpx.Response | None:
    """Settings `polls` (default 1) and `message` (default "job not found"): the first that many
    status polls of one job (the first polled; the same one across runs of one HostileApi) answer
    404 with that message; later ones are true."""
    if not is_status(request) or not _victim(api, Mode.STATUS_NOT_FOUND, _job_of(request)):
        return None
    if _tries(api, Mode.STATUS_NOT_FOUND, _job_of(request)) > int(api.settings.get("polls", 1)):  # type: ignore[call-overload]
        return None
    api.done[Mode.STATUS_NOT_FOUND] += 1
    message = str(api.settings.get("message", "job not found"))
    return json_response(404, {"error": {"code": "not_found", "message": message}}, request)


async def _lying_length_drip(api: HostileApi, request: httpx.Request) -> httpx.Response | None:
    """Settings `length` (default 1 GB, under the size cap), `drip` (default 0.5 s) and `gets`
    (default 1): the first that many GETs of one job's output declare `length` bytes, send the
    video's first 12 bytes and then a byte every `drip` seconds, without end. A deadline taken
    from the declared length would wait hours."""
    import anyio

    job_id = output_job(api, request)
    if job_id is None or not _victim(api, Mode.LYING_LENGTH_DRIP, job_id) or _tries(
            api, Mode.LYING_LENGTH_DRIP, job_id) > int(api.settings.get("gets", 1)):  # type: ignore[call-overload]
        return None
    response = await api.real(request)
    head = (await response.aread())[:12]
    pause = float(api.settings.get("drip", 0.5))  # type: ignore[arg-type]
    api.done[Mode.LYING_LENGTH_DRIP] += 1

    async def endless() -> AsyncIterator[bytes]:
        yield head
        while True:
            await anyio.sleep(pause)
            yield b"x"
    headers = {k: v for k, v in response.headers.items() if k.lower() != "content-length"}
    return httpx.Response(200, request=request, content=endless(),
                          headers={**headers, "content-length": str(api.settings.get("length", 1024 ** 3))})


_RULES.update({
    Mode.GARBLED_TEXT: _garbled_text,  # type: ignore[dict-item]
    Mode.SHARED_STATUS_URL: _shared_status_url,  # type: ignore[dict-item]
    Mode.STATUS_NOT_FOUND: _status_not_found,  # type: ignore[dict-item]
    Mode.LYING_LENGTH_DRIP: _lying_length_drip,  # type: ignore[dict-item]
})
