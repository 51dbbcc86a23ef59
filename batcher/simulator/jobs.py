"""What the simulator does with a job: a run body checked, charged and rendered, its status asked
after, its output minted and served, its webhook scheduled and replayed."""

from __future__ import annotations

import heapq
import json
import random
import secrets
import threading
from collections.abc import Callable
from typing import Any

from ..outputs.media import expected_frame
from .clips import ClipLie, clip_for
from .config import Recorder, SimConfig, SimJob
from .models import ServedModel
from .webhooks import Deliveries, split_webhook
from .wire import Answer, error_answer, iso_time, iso_time_ms, json_answer


class JobBook:
    """The simulator's jobs (a part of Simulator, which holds the state and the lock)."""

    config: SimConfig
    lock: threading.Lock
    clock: Callable[[], float]
    wall: Callable[[], float]
    rng: random.Random
    credits: float
    jobs: dict[str, SimJob]
    files: dict[str, tuple[str, float]]
    _ends: list[float]
    _refund_queue: list[tuple[float, str]]
    _journal: Recorder | None
    peak_in_flight: int
    faults: dict[str, int]
    run_bodies: list[dict[str, Any]]
    runs_by_model: dict[str, int]
    models: dict[str, ServedModel]
    webhooks: Deliveries

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

    def _roll(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate

    def _validated(self, api_id: str, body: bytes) -> Answer | tuple[ServedModel, dict[str, Any]]:
        model = self.models.get(api_id)
        if model is None:
            return error_answer(404, "model_not_found", f"Model {api_id} not found")
        self.runs_by_model[api_id] = self.runs_by_model.get(api_id, 0) + 1
        try:
            data = json.loads(body or b"null")
        except ValueError:
            return error_answer(400, "invalid_request", "Body is not JSON")
        self.run_bodies.append(data if isinstance(data, dict) else {"_invalid": data})
        # A webhook_url is taken out before the strict check; without webhooks it is an unknown key.
        stripped, _, problem = split_webhook(data) if self.config.webhooks else (data, None, None)
        problem = problem or model.check(stripped)  # the model's request schema, strictly
        if problem:
            return error_answer(422, "invalid_request", problem)
        return model, data

    def _charge(self, model: ServedModel, data: dict[str, Any], base: str) -> Answer:
        api_id = model.api_id
        duration, cost = model.seconds(data), model.charge(data)
        if self.credits < cost:
            if self.config.insufficient_status == 403:
                return error_answer(403, "insufficient_credits", f"Need {cost} credits, have {self.credits}")
            return error_answer(402, "insufficient_credits", f"Need {cost} credits, have {self.credits}")
        self.credits -= cost
        now = self.clock()
        mean = self.config.render_seconds * (duration / 5 if self.config.render_per_video_second else 1)
        render = max(0.0, self.rng.gauss(mean, mean * self.config.render_jitter))
        job_id = "job_" + secrets.token_hex(8)
        body, hook, _ = split_webhook(data)
        job = SimJob(job_id, api_id, body, cost, now, now + render, self._roll(self.config.fail_rate),
                     webhook_url=hook, base=base)
        self.jobs[job_id] = job
        if self._journal is not None:
            self._journal.job(job, self.wall() - self.clock())
        heapq.heappush(self._ends, job.ends)
        self.peak_in_flight = max(self.peak_in_flight, len(self._ends))
        if job.fails:
            heapq.heappush(self._refund_queue, (job.ends, job_id))
        self._schedule_webhook(job)
        return json_answer(202, {
            "jobId": job_id, "status": "pending", "statusUrl": f"{base}/api/v1/jobs/{job_id}",
            "creditCost": cost, "creditsRemaining": self.credits,
            "expiresAt": iso_time(self.wall() + self.config.retention),
        })

    def _status(self, job_id: str, base: str) -> Answer:
        job = self.jobs.get(job_id)
        if job is None:
            return error_answer(404, "not_found", f"Job {job_id} not found")
        job.polls += 1
        now = self.clock()
        if now < job.ends:
            status = "pending" if now < job.submitted + 0.1 * (job.ends - job.submitted) else "processing"
            return json_answer(200, {**self._known(job, now), "status": status})
        if job.seen_done is None:
            job.seen_done = now
        return json_answer(200, self._ended(job, base, now))

    def _known(self, job: SimJob, now: float) -> dict[str, Any]:
        """What every answer about a job says (when it was created: the start of its render)."""
        return {"jobId": job.job_id, "creditCost": job.cost, "createdAt": iso_time_ms(self._wall_of(job.submitted)),
                "expiresAt": iso_time(self.wall() + self.config.retention - (now - job.submitted))}

    def _wall_of(self, at: float) -> float:
        """A time of the simulator's clock on the wall clock its answers write."""
        return self.wall() - self.clock() + at

    def _ended(self, job: SimJob, base: str, now: float) -> dict[str, Any]:
        """An ended job as its status answer and its webhook give it (a fresh output URL each time,
        none once the job is past its retention)."""
        answer = {**self._known(job, now), "status": "failed" if job.fails else "completed",
                  "completedAt": iso_time_ms(self._wall_of(job.ends))}
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
        if self._journal is not None:
            self._journal.file(token, job_id, expires)
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
            return error_answer(404, "not_found", f"Job {job_id} not found")
        if job.webhook_url is None:
            return error_answer(400, "invalid_request", f"Job {job_id} was submitted without a webhook_url")
        if self.clock() < job.ends:
            return error_answer(409, "job_not_terminal", f"Job {job_id} has not finished: nothing to replay yet")
        self.webhooks.replay(job_id, job.webhook_url, base)
        return json_answer(202, {"jobId": job_id, "replayed": True})

    def _file(self, name: str) -> Answer:
        token = name.removesuffix(".mp4")
        found = self.files.get(token)
        if found is None:
            return Answer(404, b"Not Found", {"content-type": "text/plain"})
        job_id, expires = found
        if self.wall() > expires:
            return Answer(403, b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>",
                          {"content-type": "application/xml"})
        return Answer(200, self.clip(job_id), {"content-type": "video/mp4"})

    def clip(self, job_id: str) -> bytes:
        """The job's clip, its header saying the duration and frame size the request asked for."""
        job = self.jobs.get(job_id)
        model = self.models.get(job.model) if job is not None else None
        if job is None or model is None:
            return clip_for(job_id)
        names = ("resolution", "aspect_ratio", "aspectRatio")
        asked = {name: job.body.get(name, model.default(name)) for name in names}
        frame = expected_frame(str(asked["resolution"]), str(asked["aspect_ratio"] or asked["aspectRatio"]))
        return clip_for(job_id, model.seconds(job.body) or None, frame, ClipLie(self.config.clip_lie))


