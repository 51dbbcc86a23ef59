"""The simulator's settings (everything that can be tuned or broken), its record of a job, and
what keeps its jobs between runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..models import HAPPYHORSE_R2V
from .models import BUILT_IN_RATES

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
    clip_lie: str = "none"  # clips unlike their request: short, size, truncated (`simulator.clips.ClipLie`)



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
    polls: int = 0  # status requests answered for it
    webhook_url: str | None = None  # where its webhook goes
    base: str = ""  # the API base it was submitted on, where its webhooks' output URLs are minted



class Recorder(Protocol):
    """Where the simulator keeps what it charged and handed out between runs (a Journal)."""

    @property
    def uploads_folder(self) -> Path: ...

    def job(self, job: SimJob, offset: float) -> None: ...

    def file(self, token: str, job_id: str, expires: float) -> None: ...

    def close(self) -> None: ...
