"""How a run behaves: the CLI's options, one to one, with their defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..answers import DEFAULT_MAX_RETRY_AFTER
from ..files import OUTPUTS
from ..policy import RetryPolicy


@dataclass
class RunOptions:
    """How a run behaves; the CLI's options map one to one."""

    concurrency: int = 4
    budget: float | None = None
    out_dir: Path = OUTPUTS
    max_attempts: int = 2
    job_timeout: float | None = None
    resubmit_unknown: bool = False
    downloads: int = 8
    max_download_bytes: int = 2 * 1024 ** 3
    expected_render: float = 60.0  # first poll guess before anything is learned
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER  # the longest Retry-After honoured as it is
    check_schema: bool = True
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    submit_retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(base=1.0, cap=30.0, max_attempts=6))
    rpm: float | None = None  # client-side request-rate limit, all API calls together
    lease_seconds: float = 60.0  # how long a claimed job stays ours without a renewal
    progress_interval: float = 1.0
    handle_signals: bool = False
    seed: int | None = None
