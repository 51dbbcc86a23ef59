"""Running a batch: submit, poll and download its jobs under a concurrency cap and a credit budget,
recording every step in the ledger so an interrupted run resumes.

    runner       the wiring: one task group, tasks named        context    what every loop shares
    options      how a run behaves                               outcomes   enums: stop reasons, exit codes
    feeder       claims, leases, heartbeats, reaping             submission the paid step (never pay twice)
    polling      following a job to the end of its render        downloads  videos fetched, checked, published
    startup      outputs verified, the live schema checked       reporting  progress, budget outlook, report
    writer       the group writer   pacer  the request pacer
    threads      the run's I/O threads   failpoints  crash tests   downloads_queue  soonest expiry first
    webhooks     per-job webhook URLs and tokens   listener  the poke listener   pokes  the poke board
    hooks        the listener started, the URL in each submission   control  pause, resume, cancel obeyed
    uploads      local images into the store   records  what the API did, for the answer journal   pauses  shared pauses
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..faces import lazy

if TYPE_CHECKING:
    from .failpoints import failpoint
    from .options import RunOptions
    from .outcomes import ExitCode, Followed, StopReason, Submitted
    from .pacer import RequestPacer
    from .reporting import BudgetOutlook, Progress, RunReport, budget_outlook
    from .runner import Runner

__getattr__ = lazy(__name__)

__all__ = ["BudgetOutlook", "ExitCode", "Followed", "Progress", "RequestPacer", "RunOptions", "RunReport", "Runner",
           "StopReason", "Submitted", "budget_outlook", "failpoint"]
