"""The plan: a manifest expanded into jobs, each with its key, estimate and stored parameters.

    references  a row's references as a job sends them (sets, URLs, local images)
    expansion   rows into what their jobs are made of: axes, takes, checked values
    keys        the job key and the stored parameters: one implementation, a job or a row at once
    compiled    rows whose every job is valid, compiled to text filled per job
    jobs        expanding a manifest into JobSpecs; the plan's summary and checks
    staging     a manifest's jobs as the ledger stores them
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..faces import lazy

if TYPE_CHECKING:
    from .jobs import MAX_JOBS, JobSpec, PlanSummary, check, expand, iter_jobs, job_key, row_key_texts
    from .staging import JobRow, job_rows, new_take, row_of

__getattr__ = lazy(__name__)

__all__ = [
    "MAX_JOBS",
    "JobRow",
    "JobSpec",
    "PlanSummary",
    "check",
    "expand",
    "iter_jobs",
    "job_key",
    "job_rows",
    "new_take",
    "row_key_texts",
    "row_of",
]
