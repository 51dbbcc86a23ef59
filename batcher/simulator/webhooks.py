"""The simulator's webhook deliveries: at least once, late, lost or twice on demand, retried, replayed.

PixelDojo's SDK passes a per-job `webhook_url` to `run()` and can replay a terminal job's webhook;
the payload, any signature and the replay path are not published. The simulator's guesses: a JSON
POST of the job as its status answer would give it (`{jobId, status, creditCost, expiresAt,
output: {video}}` or `{..., error}`), unsigned, and `POST /api/v1/jobs/{jobId}/replay-webhook`.

A job's delivery is due `webhook_delay` (+/-20%) seconds after its render ends, in real time
(time.monotonic, whatever clock the simulator keeps); it is lost with probability `webhook_loss`
and sent twice with probability `webhook_duplicate`. A try that fails (no connection, a timeout, an
answer other than 2xx) is tried again after 0.5, 1, 2, 4 and 8 seconds, then given up. Worker
threads (daemons, started with the first delivery) take due deliveries from one heap and send
them with one httpx client: no redirects followed, no proxy from the environment, the answer's
body never read. The simulator posts to whatever URL a client gives it: serve it on loopback.
"""

from __future__ import annotations

import heapq
import itertools
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

WEBHOOK_FIELD = "webhook_url"
MAX_URL = 2048
BACKOFF = (0.5, 1.0, 2.0, 4.0, 8.0)  # waits between the six tries of one delivery
COUNTS = ("scheduled", "delivered", "lost", "duplicated", "retried", "given_up", "replayed")

# Builds a delivery's JSON body at the moment it is sent: (job id, API base) -> body.
Payload = Callable[[str, str], dict[str, Any]]


class WebhookSettings(Protocol):
    """The part of the simulator's configuration deliveries read (SimConfig)."""

    webhook_loss: float
    webhook_duplicate: float
    webhook_delay: float
    seed: int


def url_problem(value: object) -> str | None:
    """Why `value` cannot be a job's webhook_url, or None: an absolute http(s) URL, at most 2048
    characters, without spaces or control characters."""
    if not isinstance(value, str):
        return f"{WEBHOOK_FIELD} must be a string, got {type(value).__name__}"
    if len(value) > MAX_URL:
        return f"{WEBHOOK_FIELD} is {len(value)} characters long, over {MAX_URL}"
    if any(c <= " " or c == "\x7f" for c in value):
        return f"{WEBHOOK_FIELD} must not hold spaces or control characters"
    try:
        parts = urlsplit(value)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        ok = False
    return None if ok else f"{WEBHOOK_FIELD} must be an absolute http or https URL"


def split_webhook(data: Any) -> tuple[Any, str | None, str | None]:
    """(the run body without its webhook_url, that URL or None, why the URL is refused or None).
    A body that is not an object, or has no webhook_url, comes back as it is."""
    if not isinstance(data, dict) or WEBHOOK_FIELD not in data:
        return data, None, None
    body = {k: v for k, v in data.items() if k != WEBHOOK_FIELD}
    url = data[WEBHOOK_FIELD]
    problem = url_problem(url)
    return body, (url if problem is None else None), problem


@dataclass
class Delivery:
    job_id: str
    url: str
    base: str  # the API base the job was submitted on: output URLs are minted on it
    tries: int = 0


class Deliveries:
    """Due deliveries on a heap and the workers that send them; thread-safe."""

    def __init__(self, settings: WebhookSettings, payload: Payload, *, workers: int = 4) -> None:
        self.settings = settings
        self.payload = payload
        self.workers = workers
        self.backoff: tuple[float, ...] = BACKOFF  # tests may shorten it
        self.rng = random.Random(settings.seed)  # its own: rolls here leave the simulator's draws as they were
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Delivery]] = []
        self._order = itertools.count()
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._client: httpx.Client | None = None
        self._counts = dict.fromkeys(COUNTS, 0)

    def counts(self) -> dict[str, int]:
        """Deliveries scheduled (jobs with a webhook_url), delivered (2xx answers, duplicates and
        replays included), lost, duplicated, retried (tries after a failed one), given up, replayed."""
        with self._cond:
            return dict(self._counts)

    def schedule(self, job_id: str, url: str, base: str, render_left: float) -> None:
        """Plan the delivery of a job whose render ends in `render_left` seconds."""
        s = self.settings
        with self._cond:
            self._counts["scheduled"] += 1
            if s.webhook_loss > 0 and self.rng.random() < s.webhook_loss:
                self._counts["lost"] += 1
                return
            delay = s.webhook_delay * self.rng.uniform(0.8, 1.2) if s.webhook_delay > 0 else 0.0
            due = time.monotonic() + max(0.0, render_left) + delay
            self._push(due, Delivery(job_id, url, base))
            if s.webhook_duplicate > 0 and self.rng.random() < s.webhook_duplicate:
                self._counts["duplicated"] += 1
                self._push(due + self.rng.uniform(0.05, 0.5), Delivery(job_id, url, base))

    def replay(self, job_id: str, url: str, base: str) -> None:
        """One more delivery of a terminal job, now (never lost)."""
        with self._cond:
            self._counts["replayed"] += 1
            self._push(time.monotonic(), Delivery(job_id, url, base))

    def close(self, wait: float = 1.0) -> None:
        """Drop pending deliveries and stop the workers (a send under way is waited for up to `wait`
        seconds, then left to its daemon thread). A later delivery starts new workers."""
        with self._cond:
            self._heap.clear()
            self._stop.set()
            threads, self._threads = self._threads, []
            client, self._client = self._client, None
            self._stop = threading.Event()
            self._cond.notify_all()
        deadline = time.monotonic() + wait
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if client is not None:
            client.close()

    def _push(self, due: float, delivery: Delivery) -> None:
        """With the lock held: add a delivery and make sure workers are there to send it."""
        heapq.heappush(self._heap, (due, next(self._order), delivery))
        if self._client is None:
            self._client = httpx.Client(timeout=httpx.Timeout(5.0, connect=2.0), follow_redirects=False,
                                        trust_env=False, headers={"user-agent": "batcher-simulator-webhooks"})
        while len(self._threads) < self.workers:
            thread = threading.Thread(target=self._work, args=(self._stop, self._client), daemon=True,
                                      name="sim-webhooks")
            self._threads.append(thread)
            thread.start()
        self._cond.notify()

    def _work(self, stop: threading.Event, client: httpx.Client) -> None:
        while True:
            with self._cond:
                while not stop.is_set() and not (self._heap and self._heap[0][0] <= time.monotonic()):
                    self._cond.wait(self._heap[0][0] - time.monotonic() if self._heap else None)
                if stop.is_set():
                    return
                _, _, delivery = heapq.heappop(self._heap)
                if self._heap:
                    self._cond.notify()  # another worker takes the next, due now or soon
            sent = self._send(client, delivery)
            with self._cond:
                if stop.is_set():
                    return
                self._settle(delivery, sent)

    def _send(self, client: httpx.Client, delivery: Delivery) -> bool:
        """One try: True on a 2xx answer, whose body is never read."""
        try:
            body = self.payload(delivery.job_id, delivery.base)
            with client.stream("POST", delivery.url, json=body) as answer:
                return 200 <= answer.status_code < 300
        except Exception:  # any failure of a try is the receiver's problem: try again later
            return False

    def _settle(self, delivery: Delivery, sent: bool) -> None:
        """With the lock held: count a try, and plan the next one after a failure."""
        delivery.tries += 1
        if sent:
            self._counts["delivered"] += 1
        elif delivery.tries > len(self.backoff):
            self._counts["given_up"] += 1
        else:
            self._counts["retried"] += 1
            self._push(time.monotonic() + self.backoff[delivery.tries - 1], delivery)
