"""How a run behaves, in small value objects: what it may spend and keep in flight, how it
polls and retries, where it saves videos. `RunOptions.of` takes the CLI's options one to one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..client import DEFAULT_MAX_RETRY_AFTER
from ..errors import UsageError
from ..money import budget as budget_credits
from ..outputs import OUTPUTS
from ..policy import DEFAULT_MIN_DOWNLOAD_RATE, DEFAULT_REQUEST_DEADLINE, Deadlines, RetryPolicy
from ..references import ReferenceStore
from .webhooks import Webhooks


@dataclass(frozen=True)
class Limits:
    """What a run may spend and keep in flight."""

    concurrency: int = 4  # jobs in flight at the API
    # The most the batch may have committed when this runner submits: exact credits (a number
    # given is made exact here; NaN, infinity or a negative budget is refused, UsageError).
    budget: Decimal | None = None
    rpm: float | None = None  # client-side request-rate limit, all API calls together
    max_attempts: int = 2  # submissions per job while remote failures are refunded
    lease_seconds: float = 60.0  # how long a claimed job stays ours without a renewal
    ledger_patience: float = 300.0  # seconds a failing ledger is waited for before answers go to its journal

    def __post_init__(self) -> None:
        object.__setattr__(self, "budget", budget_credits(self.budget, "budget"))


@dataclass(frozen=True)
class Polling:
    """How jobs are polled, and requests bounded in time and retried."""

    # First poll guess before anything is learned; None: each model's typical render time.
    expected_render: float | None = None
    job_timeout: float | None = None  # stop polling a job in this run after this long
    retry: RetryPolicy = field(default_factory=RetryPolicy)  # polls and downloads
    submit_retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(base=1.0, cap=30.0, max_attempts=6))
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER  # the longest Retry-After honoured as it is
    request_deadline: float = DEFAULT_REQUEST_DEADLINE  # seconds for a whole API answer (and a download's least)
    min_download_rate: float = DEFAULT_MIN_DOWNLOAD_RATE  # KB/s: a download slower than this (past the above) fails

    @property
    def deadlines(self) -> Deadlines:
        """Every request's overall deadline, for the client."""
        return Deadlines(self.request_deadline, self.min_download_rate)

    def __post_init__(self) -> None:
        if (problem := self.deadlines.check()) is not None:  # NaN passes a plain range check
            raise UsageError(problem)


@dataclass(frozen=True)
class Saving:
    """Where and how videos are saved."""

    out_dir: Path = OUTPUTS
    downloads: int = 8  # downloads at once
    max_download_bytes: int = 2 * 1024 ** 3


@dataclass
class RunOptions:
    """How a run behaves."""

    limits: Limits = field(default_factory=Limits)
    polling: Polling = field(default_factory=Polling)
    saving: Saving = field(default_factory=Saving)
    resubmit_unknown: bool = False  # the user's consent to pay twice for held jobs
    check_schema: bool = True  # hold the batch against the live schema before spending
    preflight: bool = True  # check every reference URL before spending (see batcher.preflight)
    on_warning: Callable[[str], None] | None = None  # what to tell before spending (default: the log)
    reference_store: ReferenceStore | None = None  # where local reference images are uploaded
    webhooks: Webhooks | None = None  # ask the API to poke each job's end (--webhook-listen, --webhook-url)
    progress_interval: float = 1.0
    handle_signals: bool = False
    seed: int | None = None

    @classmethod
    def of(cls, **options: Any) -> RunOptions:
        """Options by their flat names (as the CLI has them): `RunOptions.of(concurrency=8, budget=500)`."""
        groups: dict[str, dict[str, Any]] = {"limits": {}, "polling": {}, "saving": {}}
        top: dict[str, Any] = {}
        owners = {f.name: group for group, kind in (("limits", Limits), ("polling", Polling), ("saving", Saving))
                  for f in fields(kind)}
        for name, value in options.items():
            if name in owners:
                groups[owners[name]][name] = value
            elif name in {f.name for f in fields(cls)} - set(groups):
                top[name] = value
            else:
                raise TypeError(f"RunOptions has no option {name!r}")
        return cls(Limits(**groups["limits"]), Polling(**groups["polling"]), Saving(**groups["saving"]), **top)
