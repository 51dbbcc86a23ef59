"""A faithful fake of the PixelDojo API, for `--simulate`, tests, demos and other clients.

It speaks the documented wire protocol (../shared/reference/pixeldojo-api.md): Bearer auth,
`POST /api/v1/models/{apiId}/run` answering 202 with `{jobId, status, statusUrl, creditCost,
creditsRemaining, expiresAt}`, `GET /api/v1/jobs/{jobId}`, the model endpoints (`/api/v1/models`,
`?detailed=true` with prices; `/api/v1/models/{apiId}` with its `requestSchema`; `.../schema`), output
files on a temporary path that expire. It serves several models (batcher.simulator.models: the built-ins
and `wan-2.5-t2v`, a model batcher does not know), each checked strictly against its request
schema (unknown keys rejected, as `additionalProperties: false`) and billed per second of video at
its own rates against a credit balance, failed renders are refunded, and faults can be switched
on: 5xx answers, dropped connections, refused connections, a submission accepted and charged
whose answer is lost, malformed bodies, and 429 with `Retry-After` over a request-rate limit.

Reference images are judged at submission as the API would (batcher.simulator.references): a reference it
cannot fetch or would refuse fails the submission with 400 `invalid_request`, nothing charged.
Placeholders on example hosts are accepted unfetched; the simulator's own `/_sim/refs/` and
`/_sim/uploads/` are judged from its own bytes; other URLs are fetched by `fetch_reference`
(served over HTTP: over the network by default; in-process: none, the host cannot be reached).

A run body may carry a `webhook_url`: the job's webhook is then delivered when its render ends,
at least once, with loss, duplication and delay on demand, and replayed on
`POST /api/v1/jobs/{jobId}/replay-webhook` (batcher.simulator.webhooks; payload and path are guesses).

The core (`Simulator.handle`) is transport-free; `SimulatorTransport` serves it in-process to
httpx, `make_server()` over HTTP on a loopback socket. It keeps its own record of what it received,
charged and refunded, so tests can hold the ledger against the "server".
"""

from __future__ import annotations

import contextlib
import heapq
import json
import random
import secrets
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import httpx

from ..client.answers import REDACTED, SIGNED_QUERY, redact_json
from ..models.tables import HAPPYHORSE_R2V
from .models import BUILT_IN_RATES, ServedModel, model_answer, served_models
from .references import FetchReference, UploadStore, fetch_over_http, own_file, static_file
from .webhooks import Deliveries, split_webhook

# happyhorse-1.0-r2v's rates: upstream prices 1080p at about 1.8x 720p; the simulator charges that,
# below batcher's estimate. (The other models' rates: batcher.simulator.models.)
SIM_RATES = dict(BUILT_IN_RATES[HAPPYHORSE_R2V.api_id])


@dataclass
class SimConfig:
    """Everything that can be tuned or broken in the simulator."""

    api_key: str = "sim-key"
    credits: float = 1_000_000.0
    render_seconds: float = 0.5  # mean render time
    render_jitter: float = 0.2  # standard deviation as a fraction of the mean
    render_per_video_second: bool = False  # scale render time by duration / 5
    fail_rate: float = 0.0  # remote failures (refunded)
    error_rate: float = 0.0  # 5xx answers, nothing done
    drop_rate: float = 0.0  # connection dropped before anything is done
    refuse_rate: float = 0.0  # connection refused (in-process only; over HTTP: dropped unread)
    lost_answer_rate: float = 0.0  # POST run accepted and charged, then the answer is lost
    malformed_rate: float = 0.0  # a 200 HTML page instead of the JSON answer
    # The routes the four faults above may hit ("run", "job", "file", "models", ...); empty: all.
    fault_routes: tuple[str, ...] = ()
    rpm: float | None = None  # request-rate limit per window (429 over it)
    rate_window: float = 60.0  # seconds the rpm limit counts over (tests shorten it)
    url_ttl: float = 3600.0  # lifetime of one output URL
    retention: float = 86_400.0  # how long a finished job can hand out fresh URLs
    insufficient_status: int = 402  # 402, or 403 with code insufficient_credits (the older API)
    # A hostile API: every error answer, error page and failed render's `error` repeats the
    # Authorization header it received (bare, Bearer form and URL-encoded).
    echo_key_in_errors: bool = False
    seed: int = 0
    rates: dict[str, float] = field(default_factory=lambda: dict(SIM_RATES))  # happyhorse-1.0-r2v's
    # Webhooks (batcher.simulator.webhooks): a run body's `webhook_url` is taken (False: refused as unknown).
    webhooks: bool = True
    webhook_loss: float = 0.0  # share of jobs whose webhook is never sent
    webhook_duplicate: float = 0.0  # share of jobs whose webhook is sent twice
    webhook_delay: float = 0.0  # mean seconds from a render's end to its webhook (+/-20%)


@dataclass
class Answer:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class Dropped(Exception):
    """The connection is closed without an answer (after doing `effects`, if any)."""


class Refused(Exception):
    """The connection is refused: nothing reached the server."""


@dataclass
class SimJob:
    job_id: str
    model: str
    body: dict[str, Any]
    cost: float
    submitted: float
    ends: float
    fails: bool
    refunded: bool = False
    answer_lost: bool = False
    seen_done: float | None = None  # when a status answer first said it ended (the bench's detection delay)
    webhook_url: str | None = None  # where its webhook goes
    base: str = ""  # the API base it was submitted on, where its webhooks' output URLs are minted


def demo_clip() -> bytes:
    """The small real MP4 clip shipped with the package."""
    return resources.files("batcher").joinpath("data/demo.mp4").read_bytes()


def clip_for(job_id: str) -> bytes:
    """The demo clip with a top-level `free` box naming the job: still playable, unique per job."""
    payload = f"batcher-simulator job {job_id}".encode()
    return demo_clip() + struct.pack(">I", 8 + len(payload)) + b"free" + payload


def _own_file(kind: str, name: str, headers: dict[str, str], uploads: UploadStore) -> Answer:
    """A reference image or an upload, as a static file host serves it: ETag, Last-Modified, 304, ranges."""
    return Answer(*static_file(own_file(kind, name, uploads), headers, validators=name != "noetag.png"))


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json(status: int, data: Any, headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, json.dumps(data).encode(), {"content-type": "application/json", **(headers or {})})


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Answer:
    return _json(status, {"error": {"code": code, "message": message}}, headers)


def _echo_key(answer: Answer, authorization: str) -> Answer:
    """`answer` as a careless API would give it: quoting the request's credentials in its error texts."""
    token = authorization.removeprefix("Bearer ")
    echo = f"request had Authorization: {authorization} (token={quote(token, safe='')})"
    kind = answer.headers.get("content-type", "")
    if kind.startswith("application/json"):
        data = json.loads(answer.body)
        if not isinstance(data, dict):
            return answer
        if answer.status >= 400 and isinstance(data.get("error"), dict):
            data["error"]["message"] = f"{data['error'].get('message', '')}; {echo}"
        elif data.get("status") == "failed" and isinstance(data.get("error"), str):
            data["error"] = f"{data['error']}; {echo}"
        else:
            return answer
        return Answer(answer.status, json.dumps(data).encode(), answer.headers)
    if answer.status >= 400 or kind.startswith("text/html"):  # error pages, the malformed fault's too
        return Answer(answer.status, answer.body + f"\n<!-- {echo} -->".encode(), answer.headers)
    return answer


class Simulator:
    """The fake API's state and logic; thread-safe."""

    def __init__(self, config: SimConfig | None = None, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, fetch_reference: FetchReference | None = None):
        self.config = config or SimConfig()
        # Fetches reference URLs that are neither placeholders nor the simulator's own; None: a
        # server's default (make_server: over HTTP), in-process: such hosts cannot be reached.
        self.fetch_reference = fetch_reference
        self.reference_fetches = 0
        self.uploads = UploadStore()
        self.clock = clock
        self.wall = wall
        self.rng = random.Random(self.config.seed)
        self.lock = threading.Lock()
        self.credits = self.config.credits
        self.jobs: dict[str, SimJob] = {}
        self.files: dict[str, tuple[str, float]] = {}  # token -> (job id, expires at, wall clock)
        self._ends: list[float] = []  # render end times of jobs still rendering (heap)
        self._refund_queue: list[tuple[float, str]] = []
        self._recent: deque[float] = deque()
        self.peak_in_flight = 0
        self.requests: dict[str, int] = {}
        self.rate_limited = 0
        self.faults: dict[str, int] = {}
        self.run_bodies: list[dict[str, Any]] = []  # every POST run body received, accepted or not
        self.runs_by_model: dict[str, int] = {}  # POST run requests received per served model, accepted or not
        self.models: dict[str, ServedModel] = served_models({HAPPYHORSE_R2V.api_id: self.config.rates})
        self._journal: Journal | None = None
        self.webhooks = Deliveries(self.config, self._webhook_body)  # no thread before the first

    @property
    def journal(self) -> Journal | None:
        """Where charges, handed-out URLs and uploads are kept between runs (None: in memory)."""
        return self._journal

    @journal.setter
    def journal(self, journal: Journal | None) -> None:
        self._journal = journal
        self.uploads.folder = journal.uploads_folder if journal is not None else None

    # --- uploads: a public bucket beside the API, for references made from local images ----------

    def put_upload(self, name: str, data: bytes) -> None:
        """Store `data` as `/_sim/uploads/<name>`; `name` is `<64 lowercase hex>.<jpg|png|webp>`
        (ValueError otherwise). Kept beside the journal when there is one, else in memory."""
        self.uploads.put(name, data)

    def upload_size(self, name: str) -> int | None:
        """The size in bytes of upload `name`, or None if there is none (ValueError for a bad name)."""
        return self.uploads.size(name)

    # --- the record --------------------------------------------------------------------------

    def record(self) -> dict[str, Any]:
        """What the server saw, charged and refunded (JSON-friendly)."""
        with self.lock:
            self._tick()
            jobs = [{"job_id": j.job_id, "model": j.model, "body": j.body, "cost": j.cost, "fails": j.fails,
                     "refunded": j.refunded, "answer_lost": j.answer_lost,
                     "render_seconds": round(j.ends - j.submitted, 6), "submitted": j.submitted,
                     "seen_done": j.seen_done} for j in self.jobs.values()]
            return {
                "clock": self.clock(),  # the simulator's clock now: relates its times to others'
                "jobs": jobs,
                "charged": sum(j.cost for j in self.jobs.values()),
                "refunded": sum(j.cost for j in self.jobs.values() if j.refunded),
                "credits": self.credits,
                "peak_in_flight": self.peak_in_flight,
                "requests": dict(self.requests),
                "rate_limited": self.rate_limited,
                "faults": dict(self.faults),
                "run_bodies": len(self.run_bodies),
                "runs_by_model": dict(self.runs_by_model),
                "reference_fetches": self.reference_fetches,
                "webhooks": self.webhooks.counts(),
            }

    def _tick(self) -> None:
        now = self.clock()
        while self._ends and self._ends[0] <= now:
            heapq.heappop(self._ends)
        while self._refund_queue and self._refund_queue[0][0] <= now:
            _, job_id = heapq.heappop(self._refund_queue)
            job = self.jobs[job_id]
            if not job.refunded:
                job.refunded = True
                self.credits += job.cost

    # --- requests ----------------------------------------------------------------------------

    def handle(self, method: str, url: str, headers: dict[str, str], body: bytes, *,
               fetch: FetchReference | None = None) -> Answer:
        """Answer one request, or raise Dropped/Refused. `url` is absolute. `fetch` reaches
        reference hosts when the simulator has no `fetch_reference` of its own (a server's)."""
        answer = self._answer(method, url, headers, body, self.fetch_reference or fetch)
        if self.config.echo_key_in_errors:
            answer = _echo_key(answer, headers.get("authorization", ""))
        return answer

    def _answer(self, method: str, url: str, headers: dict[str, str], body: bytes,
                fetch: FetchReference | None) -> Answer:
        parts = urlsplit(url)
        base = f"{parts.scheme}://{parts.netloc}"
        path = parts.path.rstrip("/")
        with self.lock:
            found = self._answer_locked(method, path, parts.query, headers, body, base)
        if isinstance(found, Answer):
            return found
        # A valid run body: its references are judged outside the lock (a fetch may be slow).
        model, data = found
        problem, fetched = model.reference_problem(data, self.uploads, fetch)
        with self.lock:
            self._tick()
            self.reference_fetches += fetched
            if problem is not None:
                return _error(400, "invalid_request", problem)  # nothing charged
            answer = self._charge(model, data, base)
            if answer.status == 202 and self._roll(self.config.lost_answer_rate):
                self.faults["lost_answer"] = self.faults.get("lost_answer", 0) + 1
                job_id = json.loads(answer.body)["jobId"]
                self.jobs[job_id].answer_lost = True
                raise Dropped()
            return answer

    def _answer_locked(self, method: str, path: str, query: str, headers: dict[str, str], body: bytes, base: str
                       ) -> Answer | tuple[ServedModel, dict[str, Any]]:
        """The answer, or a run body validated (model, body) whose references are still to judge."""
        self._tick()
        route = self._route_name(method, path)
        self.requests[route] = self.requests.get(route, 0) + 1
        if route in ("ref", "upload"):  # as from another host: no key, limits or faults
            return _own_file("refs" if route == "ref" else "uploads", path.split("/")[-1], headers, self.uploads)
        if route == "admin":
            return _json(200, {})  # answered by the caller (record must not nest the lock)
        if route != "file":
            auth = headers.get("authorization", "")
            if auth != f"Bearer {self.config.api_key}":
                return _error(401, "invalid_api_key", "Invalid or missing API key")
        # Output files live on another host (temp.pixeldojo.ai): not under the API's rate limit.
        limited = self._rate_limit() if route != "file" else None
        if limited is not None:
            return limited
        fault = self._fault(route)
        if fault == "refuse":
            raise Refused()
        if fault == "drop":
            raise Dropped()
        if fault == "error":
            return _error(503, "server_error", "The server is temporarily unavailable")
        if fault == "malformed":
            return Answer(200, b"<html><body><h1>502 Bad Gateway</h1></body></html>",
                          {"content-type": "text/html"})
        if route == "run":
            return self._validated(path.split("/")[-2], body)
        if route == "job":
            return self._status(path.split("/")[-1], base)
        if route == "replay":
            return self._replay(path.split("/")[-2], base)
        if route == "file":
            return self._file(path.split("/")[-1])
        if route in ("models", "model", "schema"):
            detailed = any(k == "detailed" and v.lower() == "true" for k, v in parse_qsl(query))
            return _json(*model_answer(self.models, route, path.split("/")[4] if route != "models" else None,
                                       detailed))
        return _error(404, "not_found", f"No route for {method} {path}")

    @staticmethod
    def _route_name(method: str, path: str) -> str:
        p = path.split("/")
        if method == "GET" and path.startswith("/_sim/refs/"):
            return "ref"
        if method == "GET" and path.startswith("/_sim/uploads/"):
            return "upload"
        if path.startswith("/_sim/"):
            return "admin"
        if method == "POST" and len(p) == 6 and p[1:4] == ["api", "v1", "models"] and p[5] == "run":
            return "run"
        if method == "GET" and len(p) == 5 and p[1:4] == ["api", "v1", "jobs"]:
            return "job"
        if method == "POST" and len(p) == 6 and p[1:4] == ["api", "v1", "jobs"] and p[5] == "replay-webhook":
            return "replay"
        if method == "GET" and len(p) == 3 and p[1] == "pixeldojotemp":
            return "file"
        if method == "GET" and path == "/api/v1/models":
            return "models"
        if method == "GET" and len(p) == 5 and p[1:4] == ["api", "v1", "models"]:
            return "model"
        if method == "GET" and len(p) == 6 and p[1:4] == ["api", "v1", "models"] and p[5] == "schema":
            return "schema"
        return "other"

    def _roll(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate

    def _fault(self, route: str) -> str | None:
        c = self.config
        if c.fault_routes and route not in c.fault_routes:
            return None
        for name, rate in (("refuse", c.refuse_rate), ("drop", c.drop_rate), ("error", c.error_rate),
                           ("malformed", c.malformed_rate)):
            if self._roll(rate):
                self.faults[name] = self.faults.get(name, 0) + 1
                return name
        return None

    def _rate_limit(self) -> Answer | None:
        if not self.config.rpm:
            return None
        now = self.clock()
        window = self.config.rate_window
        while self._recent and self._recent[0] <= now - window:
            self._recent.popleft()
        if len(self._recent) >= self.config.rpm:
            self.rate_limited += 1
            wait = max(1, int(self._recent[0] + window - now + 0.999))
            return _error(429, "rate_limited", "Too many requests", {"retry-after": str(wait)})
        self._recent.append(now)
        return None

    def _validated(self, api_id: str, body: bytes) -> Answer | tuple[ServedModel, dict[str, Any]]:
        model = self.models.get(api_id)
        if model is None:
            return _error(404, "model_not_found", f"Model {api_id} not found")
        self.runs_by_model[api_id] = self.runs_by_model.get(api_id, 0) + 1
        try:
            data = json.loads(body or b"null")
        except ValueError:
            return _error(400, "invalid_request", "Body is not JSON")
        self.run_bodies.append(data if isinstance(data, dict) else {"_invalid": data})
        # A webhook_url is taken out before the strict check; without webhooks it is an unknown key.
        stripped, _, problem = split_webhook(data) if self.config.webhooks else (data, None, None)
        problem = problem or model.check(stripped)  # the model's request schema, strictly
        if problem:
            return _error(422, "invalid_request", problem)
        return model, data

    def _charge(self, model: ServedModel, data: dict[str, Any], base: str) -> Answer:
        api_id = model.api_id
        duration, cost = model.seconds(data), model.charge(data)
        if self.credits < cost:
            if self.config.insufficient_status == 403:
                return _error(403, "insufficient_credits", f"Need {cost} credits, have {self.credits}")
            return _error(402, "insufficient_credits", f"Need {cost} credits, have {self.credits}")
        self.credits -= cost
        now = self.clock()
        mean = self.config.render_seconds * (duration / 5 if self.config.render_per_video_second else 1)
        render = max(0.0, self.rng.gauss(mean, mean * self.config.render_jitter))
        job_id = "job_" + secrets.token_hex(8)
        body, hook, _ = split_webhook(data)
        job = SimJob(job_id, api_id, body, cost, now, now + render, self._roll(self.config.fail_rate),
                     webhook_url=hook, base=base)
        self.jobs[job_id] = job
        if self.journal is not None:
            self.journal.job(self, job)
        heapq.heappush(self._ends, job.ends)
        self.peak_in_flight = max(self.peak_in_flight, len(self._ends))
        if job.fails:
            heapq.heappush(self._refund_queue, (job.ends, job_id))
        self._schedule_webhook(job)
        return _json(202, {
            "jobId": job_id, "status": "pending", "statusUrl": f"{base}/api/v1/jobs/{job_id}",
            "creditCost": cost, "creditsRemaining": self.credits,
            "expiresAt": _iso(self.wall() + self.config.retention),
        })

    def _status(self, job_id: str, base: str) -> Answer:
        job = self.jobs.get(job_id)
        if job is None:
            return _error(404, "not_found", f"Job {job_id} not found")
        now = self.clock()
        if now < job.ends:
            status = "pending" if now < job.submitted + 0.1 * (job.ends - job.submitted) else "processing"
            return _json(200, {**self._known(job, now), "status": status})
        if job.seen_done is None:
            job.seen_done = now
        return _json(200, self._ended(job, base, now))

    def _known(self, job: SimJob, now: float) -> dict[str, Any]:
        """What every answer about a job says."""
        return {"jobId": job.job_id, "creditCost": job.cost,
                "expiresAt": _iso(self.wall() + self.config.retention - (now - job.submitted))}

    def _ended(self, job: SimJob, base: str, now: float) -> dict[str, Any]:
        """An ended job as its status answer and its webhook give it (a fresh output URL each time,
        none once the job is past its retention)."""
        answer = {**self._known(job, now), "status": "failed" if job.fails else "completed"}
        if job.fails:
            answer["error"] = "Generation failed: upstream model error"
        else:
            kept = now <= job.ends + self.config.retention
            answer["output"] = {"video": self._mint(job.job_id, base)} if kept else {}
        return answer

    def _mint(self, job_id: str, base: str) -> str:
        """A fresh output URL of a completed job, valid for `url_ttl`."""
        token = secrets.token_hex(10)
        expires = self.wall() + self.config.url_ttl
        self.files[token] = (job_id, expires)
        if self.journal is not None:
            self.journal.file(token, job_id, expires)
        return f"{base}/pixeldojotemp/{token}.mp4"

    # --- webhooks (batcher.simulator.webhooks; the payload and the replay path are our guesses) -------

    def _schedule_webhook(self, job: SimJob) -> None:
        if job.webhook_url is not None:
            self.webhooks.schedule(job.job_id, job.webhook_url, job.base, job.ends - self.clock())

    def _webhook_body(self, job_id: str, base: str) -> dict[str, Any]:
        """A delivery's JSON body as it is sent: the ended job as a status answer gives it (a poll's
        `seen_done` left alone)."""
        with self.lock:
            return self._ended(self.jobs[job_id], base, self.clock())

    def _replay(self, job_id: str, base: str) -> Answer:
        """`POST /api/v1/jobs/{jobId}/replay-webhook` (the SDK's replayWebhook; its path is not published)."""
        job = self.jobs.get(job_id)
        if job is None:
            return _error(404, "not_found", f"Job {job_id} not found")
        if job.webhook_url is None:
            return _error(400, "invalid_request", f"Job {job_id} was submitted without a webhook_url")
        if self.clock() < job.ends:
            return _error(409, "job_not_terminal", f"Job {job_id} has not finished: nothing to replay yet")
        self.webhooks.replay(job_id, job.webhook_url, base)
        return _json(202, {"jobId": job_id, "replayed": True})

    def close(self) -> None:
        """Stop sending webhooks (pending deliveries are dropped); the simulator still answers."""
        self.webhooks.close()

    def _file(self, name: str) -> Answer:
        token = name.removesuffix(".mp4")
        found = self.files.get(token)
        if found is None:
            return Answer(404, b"Not Found", {"content-type": "text/plain"})
        job_id, expires = found
        if self.wall() > expires:
            return Answer(403, b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>",
                          {"content-type": "application/xml"})
        return Answer(200, clip_for(job_id), {"content-type": "video/mp4"})


# --- state kept between runs -----------------------------------------------------------------------

JOURNAL_VERSION = 1


class Journal:
    """What the simulator charged and handed out, appended as it happens (one JSON line each), so a
    simulated run that is interrupted in any way, Ctrl-C or kill -9, resumes as it would against
    the real API, which remembers its jobs. Times are wall-clock epochs: monotonic clocks do not
    survive the process. Uploads are files in a folder beside it (`uploads_folder`), each written
    whole (a temporary file renamed)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: Any = None

    @property
    def uploads_folder(self) -> Path:
        """`<journal>.uploads/`: the uploads' bytes, one file each."""
        return self.path.with_name(self.path.name + ".uploads")

    def replay(self, sim: Simulator) -> int:
        """Load what earlier runs recorded into `sim`; returns the jobs restored. Uploads are read
        from the uploads folder when asked for."""
        sim.uploads.folder = self.uploads_folder
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return 0
        offset = sim.wall() - sim.clock()
        for line in lines:
            try:
                entry = json.loads(line)
                if "job" in entry:
                    j = entry["job"]
                    sim.jobs[j["job_id"]] = SimJob(j["job_id"], j["model"], j["body"], float(j["cost"]),
                                                   float(j["submitted"]) - offset, float(j["ends"]) - offset,
                                                   bool(j["fails"]), False, bool(j["answer_lost"]),
                                                   webhook_url=j.get("webhook_url"), base=str(j.get("base", "")))
                elif "file" in entry:
                    token, job_id, expires = entry["file"]
                    sim.files[str(token)] = (str(job_id), float(expires))
            except (ValueError, KeyError, TypeError, IndexError):
                continue  # a line cut short by a kill: the rest still counts
        sim.credits = sim.config.credits - sum(j.cost for j in sim.jobs.values())
        now = sim.clock()
        sim._ends = sorted(j.ends for j in sim.jobs.values() if j.ends > now)
        sim._refund_queue = sorted((j.ends, j.job_id) for j in sim.jobs.values() if j.fails)
        sim._tick()  # refunds of failures that ended meanwhile
        for job in sim.jobs.values():
            if job.ends > now:  # still rendering: its webhook is still to come (ended ones: missed)
                sim._schedule_webhook(job)
        return len(sim.jobs)

    def job(self, sim: Simulator, job: SimJob) -> None:
        offset = sim.wall() - sim.clock()
        # A presigned reference URL is a capability (and names an access key): never on disk.
        body = redact_json(job.body, lambda text: SIGNED_QUERY.sub(REDACTED, text))
        self._write({"job": {"job_id": job.job_id, "model": job.model, "body": body, "cost": job.cost,
                             "submitted": job.submitted + offset, "ends": job.ends + offset, "fails": job.fails,
                             "answer_lost": job.answer_lost, "webhook_url": job.webhook_url, "base": job.base}})

    def file(self, token: str, job_id: str, expires: float) -> None:
        self._write({"file": [token, job_id, expires]})

    def _write(self, entry: dict[str, Any]) -> None:
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the run
        self._file.write(json.dumps(entry) + "\n")
        self._file.flush()  # in the OS's hands: survives a kill of this process

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


# --- in-process transport -----------------------------------------------------------------------

OWN_FILES = ("/_sim/refs/", "/_sim/uploads/")


class SimulatorTransport(httpx.AsyncBaseTransport):
    """Serves a Simulator to an httpx.AsyncClient in-process, faults included.

    A reference image fetched in-process (a request marked `batcher_reference`) is served only
    from the simulator's `/_sim/refs/` and `/_sim/uploads/`: any other reference URL (example.com,
    ...) is not on the simulator's host and cannot be reached, as on a machine offline
    (httpx.ConnectError)."""

    def __init__(self, simulator: Simulator):
        self.simulator = simulator

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        headers = {k.lower(): v for k, v in request.headers.items()}
        if request.url.path == "/_sim/record":
            return httpx.Response(200, json=self.simulator.record(), request=request)
        if request.extensions.get("batcher_reference") and not request.url.path.startswith(OWN_FILES):
            raise httpx.ConnectError(f"[Errno -2] Name or service not known: {request.url.host} "
                                     "(not the simulator's host)", request=request)
        try:
            answer = self.simulator.handle(request.method, str(request.url), headers, body)
        except Refused:
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request) from None
        except Dropped:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.",
                                            request=request) from None
        return httpx.Response(answer.status, headers=answer.headers, content=answer.body, request=request)


# --- over HTTP ----------------------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    simulator: Simulator
    server: SimulatorServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: with Nagle's algorithm on, each answer waited
    # for the client's delayed ACK (about 45 ms on loopback), a latency no real API adds.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # `format`: the stdlib's parameter name
        pass  # quiet: the record says what happened

    def _serve(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path == "/_sim/record":
            answer = _json(200, self.simulator.record())
        else:
            host = self.headers.get("host") or f"127.0.0.1:{self.server.server_address[1]}"
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                answer = self.simulator.handle(self.command, f"http://{host}{self.path}", headers, body,
                                               fetch=self.server.fetch_reference)
            except (Dropped, Refused):
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(answer.body)))
        self.end_headers()
        self.wfile.write(answer.body)

    do_GET = _serve
    do_POST = _serve


class SimulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # the standard library's 5 reset a pool of clients connecting at once
    fetch_reference: FetchReference | None = None  # for a simulator without its own
    simulator: Simulator | None = None

    def server_close(self) -> None:
        super().server_close()
        if self.simulator is not None:
            self.simulator.close()  # its webhook senders: a closed server leaves no thread sending


def make_server(simulator: Simulator, host: str = "127.0.0.1", port: int = 0, *,
                fetch_reference: FetchReference | None = fetch_over_http) -> SimulatorServer:
    """An HTTP server for `simulator` on host:port (port 0 picks a free one). Reference URLs are
    fetched with the simulator's `fetch_reference`, else with this one (by default over HTTP)."""
    handler = type("Handler", (_Handler,), {"simulator": simulator})
    server = SimulatorServer((host, port), handler)
    server.fetch_reference = fetch_reference
    server.simulator = simulator
    return server
