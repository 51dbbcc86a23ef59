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
