"""What batcher shows: lines for people, records for other tools, a gallery. Pure where it can
be: values in, text out (the CLI decides where it goes).

    commands    a plan, a batch's status, its rows, one job's history, the models
    watch       a fleet snapshot for `batcher watch`, as lines and as JSON
    progress    a run's progress lines and summary; logging set up
    exports     one record per job, written as JSONL or CSV, or as a VideoFolder dataset
    report      a self-contained HTML gallery of a batch
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..faces import lazy

if TYPE_CHECKING:
    from .commands import (
        ModelShares,
        by_model_info,
        figures_info,
        history_lines,
        model_lines,
        model_list_lines,
        plan_lines,
        row_lines,
        status_lines,
    )
    from .exports import check_model, export, export_videofolder, job_record, records
    from .progress import ProgressPrinter, progress_line, setup_logging, summary, summary_json
    from .report import build_report
    from .watch import eta_seconds, rate_per_minute, screen, snapshot_json

_WHERE = {
    "ModelShares": "commands", "by_model_info": "commands", "figures_info": "commands", "history_lines": "commands",
    "model_lines": "commands", "model_list_lines": "commands", "plan_lines": "commands", "row_lines": "commands",
    "status_lines": "commands",
    "eta_seconds": "watch", "rate_per_minute": "watch", "screen": "watch", "snapshot_json": "watch",
    "ProgressPrinter": "progress", "progress_line": "progress", "setup_logging": "progress", "summary": "progress",
    "summary_json": "progress",
    "check_model": "exports", "export": "exports", "export_videofolder": "exports", "job_record": "exports",
    "records": "exports",
    "build_report": "report",
}
__getattr__ = lazy(__name__, _WHERE)

__all__ = [
    "ModelShares", "ProgressPrinter", "build_report", "by_model_info", "check_model", "eta_seconds", "export",
    "export_videofolder", "figures_info", "history_lines", "job_record", "model_lines", "model_list_lines",
    "plan_lines", "progress_line", "rate_per_minute", "records", "row_lines", "screen", "setup_logging",
    "snapshot_json", "status_lines", "summary", "summary_json",
]
