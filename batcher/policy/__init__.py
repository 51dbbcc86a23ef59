"""Pure decisions a run makes, no I/O: when to retry, when to poll, what the budget allows.

    renderfit   render times learned from polls (a censored normal)
    safetynet   when to poll a job whose end a webhook should announce
    budget      the budget's accounting and each submission's reservation
    costs       what the run learnt of the API's charges, and its probes
    memory      render times remembered from earlier batches (each class's seed)
    polls       when to poll a job: the planner, and how a new class learns fast
    decisions   retry back-off, request deadlines, request pacing
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..faces import lazy

if TYPE_CHECKING:
    from .budget import Budget, Reservation
    from .costs import CostMemory
    from .decisions import (
        DEFAULT_MIN_DOWNLOAD_RATE,
        DEFAULT_REQUEST_DEADLINE,
        Deadlines,
        RatePolicy,
        RetryPolicy,
        estimate_wall_seconds,
    )
    from .memory import RenderSeed, class_seeds, pooled, remembered_intervals, seed_from
    from .polls import PROBES, Learned, PollPlanner, model_of, rung_after
    from .renderfit import MAX_RUNNING, InFlight, RenderTimes, fit_censored_normal
    from .safetynet import WebhookTally, next_safety_poll, silent_done

__getattr__ = lazy(__name__)

__all__ = [
    "DEFAULT_MIN_DOWNLOAD_RATE",
    "DEFAULT_REQUEST_DEADLINE",
    "MAX_RUNNING",
    "PROBES",
    "Budget",
    "CostMemory",
    "Deadlines",
    "InFlight",
    "Learned",
    "PollPlanner",
    "RatePolicy",
    "RenderSeed",
    "RenderTimes",
    "Reservation",
    "RetryPolicy",
    "WebhookTally",
    "class_seeds",
    "estimate_wall_seconds",
    "fit_censored_normal",
    "model_of",
    "next_safety_poll",
    "pooled",
    "remembered_intervals",
    "rung_after",
    "seed_from",
    "silent_done",
]
