"""What batcher shows: lines for people, records for other tools, a gallery. Pure where it can
be: values in, text out (the CLI decides where it goes).

    commands    a plan, a batch's status, its rows, one job's history, the models
    watch       a fleet snapshot for `batcher watch`, as lines and as JSON
    progress    a run's progress lines and summary; logging set up
    record      one record per job (request, dataset columns, references, video facts, provenance,
                split), and which jobs an export takes
    exports     records written as JSONL or CSV (presigned URLs on request), or a VideoFolder
                dataset from this host's files or an output store
    shards      WebDataset tar shards (resumable) and a Parquet index of the records
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
        status_info,
        status_lines,
    )
    from .exports import export, export_videofolder
    from .progress import ProgressPrinter, progress_line, setup_logging, summary, summary_json
    from .record import Selection, check_model, job_record, parse_splits, records
    from .report import build_report
    from .shards import export_parquet, export_webdataset, parse_size
    from .watch import eta_seconds, rate_per_minute, screen, snapshot_json

__getattr__ = lazy(__name__)

__all__ = [
    "ModelShares", "ProgressPrinter", "Selection", "build_report", "by_model_info", "check_model", "eta_seconds",
    "export", "export_parquet", "export_videofolder", "export_webdataset", "figures_info", "history_lines",
    "job_record", "model_lines", "model_list_lines", "parse_size", "parse_splits", "plan_lines", "progress_line",
    "rate_per_minute", "records", "row_lines", "screen", "setup_logging",
    "snapshot_json", "status_info", "status_lines", "summary", "summary_json",
]
