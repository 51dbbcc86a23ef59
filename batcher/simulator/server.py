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

import json
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ..models import HAPPYHORSE_R2V
from .config import Recorder, SimConfig, SimJob
from .jobs import JobBook
from .models import ServedModel, model_answer, served_models
from .references import FetchReference, UploadStore
from .webhooks import Deliveries
from .wire import Answer, Dropped, Refused, echo_key, error_answer, json_answer, own_file_answer, signed


class Simulator(JobBook):
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
        self._journal: Recorder | None = None
        self.webhooks = Deliveries(self.config, self._webhook_body)  # no thread before the first

    @property
    def journal(self) -> Recorder | None:
        """Where charges, handed-out URLs and uploads are kept between runs (None: in memory)."""
        return self._journal

    @journal.setter
    def journal(self, journal: Recorder | None) -> None:
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
                     "seen_done": j.seen_done, "polls": j.polls} for j in self.jobs.values()]
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


    # --- requests ----------------------------------------------------------------------------

    def handle(self, method: str, url: str, headers: dict[str, str], body: bytes, *,
               fetch: FetchReference | None = None) -> Answer:
        """Answer one request (marked as the simulator's: `signed`), or raise Dropped/Refused. `url`
        is absolute. `fetch` reaches reference hosts when the simulator has no `fetch_reference`
        of its own (a server's)."""
        answer = self._answer(method, url, headers, body, self.fetch_reference or fetch)
        if self.config.echo_key_in_errors:
            answer = echo_key(answer, headers.get("authorization", ""))
        return signed(answer)

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
                return error_answer(400, "invalid_request", problem)  # nothing charged
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
            return own_file_answer("refs" if route == "ref" else "uploads", path.split("/")[-1], headers, self.uploads)
        if route == "admin":
            return json_answer(200, {})  # answered by the caller (record must not nest the lock)
        if route != "file":
            auth = headers.get("authorization", "")
            if auth != f"Bearer {self.config.api_key}":
                return error_answer(401, "invalid_api_key", "Invalid or missing API key")
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
            return error_answer(503, "server_error", "The server is temporarily unavailable")
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
            return json_answer(*model_answer(self.models, route, path.split("/")[4] if route != "models" else None,
                                       detailed))
        return error_answer(404, "not_found", f"No route for {method} {path}")

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
            return error_answer(429, "rate_limited", "Too many requests", {"retry-after": str(wait)})
        self._recent.append(now)
        return None

    def close(self) -> None:
        """Stop sending webhooks (pending deliveries are dropped); the simulator still answers."""
        self.webhooks.close()

