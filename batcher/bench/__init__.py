"""Benchmarks against the built-in simulator (`batcher bench`): figures printed, never asserted.

    oracle      the yardstick: an oracle poller, told the true render times (its own process)
    breakdown   where a whole-process run's slot-seconds go
    whole       whole-process efficiency beside the oracle; the runs the sections share
    priors      a right, a wrong or no guess of the render time, whole process
    hooks       webhooks against polling, whole process (a wrong guess too)
    shared      what a shared ledger costs
    stage       staging a large manifest and the commands around it; start-up; a rerun's start-up
    suite       the sections, their settings, and the in-process runs
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..faces import lazy

if TYPE_CHECKING:
    from .breakdown import PARTS, Breakdown, clock_offset, describe_side_by_side, idle_slot_seconds
    from .oracle import bench_body, best_schedule, expected, manifest_text, run_oracle
    from .shared import HOW
    from .stage import RERUN_TARGET, RUN_TARGET, STARTUP_TARGET
    from .suite import DEFAULT_SECTIONS, SECTIONS, BenchSettings, run_all

__getattr__ = lazy(__name__)

__all__ = [
    "DEFAULT_SECTIONS",
    "HOW",
    "PARTS",
    "RERUN_TARGET",
    "RUN_TARGET",
    "SECTIONS",
    "STARTUP_TARGET",
    "BenchSettings",
    "Breakdown",
    "bench_body",
    "best_schedule",
    "clock_offset",
    "describe_side_by_side",
    "expected",
    "idle_slot_seconds",
    "manifest_text",
    "run_all",
    "run_oracle",
]
