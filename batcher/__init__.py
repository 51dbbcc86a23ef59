"""batcher: render large batches of reference-to-video clips through PixelDojo's API, safely.

The supported Python API is what `__all__` names: the operations of `batcher.api` (`load`, `stage`,
`run_async`, `status`, `export_records`, `export_dataset`, `report`, `target`, ...; `api.plan` and
`api.run` keep their module's name, since `batcher.plan` and `batcher.run` are packages), the
values they take and give (`RunOptions`, `RunReport`, `Ledger`, `Manifest`, `JobState`,
`SimConfig`, `Simulator`) and the errors they raise. Each is imported when first used, so
`import batcher` stays light (no database package).

The packages, upstream first (tests/test_layers.py holds the order):

    models      what batcher knows of each model (tables, live descriptions, schema rules)
    policy      pure decisions: retries, polls, the budget, render times learned
    references  reference images: their rules, local files, the stores they go to
    manifest    the YAML document and its row files, read with diagnostics
    plan        a manifest expanded into jobs: keys, estimates, stored parameters
    outputs     the videos folder: file names, publishing, what a video really is
    ledger      batches, jobs, attempts and runners in SQLite or PostgreSQL
    client      the PixelDojo API: the HTTP client, its answers, the catalog, preflight
    simulator   a faithful fake of the API, in-process or over HTTP
    run         running a batch: submit, poll, download, under a budget and a cap
    views       what batcher shows: command views, progress, watch, export, the gallery
    bench       benchmarks against the simulator
    cli         the command line (click)

Beside them: errors, states, text, money, redaction, defaults and faces (shared by all), and api
(the Python API).
"""

from __future__ import annotations

import logging as _logging
from typing import TYPE_CHECKING

from .faces import lazy as _lazy

__version__ = "0.1.0"

# A library stays quiet unless the application configures logging.
_logging.getLogger("batcher").addHandler(_logging.NullHandler())

if TYPE_CHECKING:
    from . import api
    from .api import (
        Target,
        check_references,
        describe_model,
        export_dataset,
        export_records,
        list_models,
        load,
        report,
        run_async,
        stage,
        status,
        target,
    )
    from .errors import (
        ApiError,
        BatcherError,
        BudgetExceeded,
        ExitCode,
        LedgerError,
        ManifestError,
        MissingKeyError,
        PreflightFailed,
        SchemaMismatch,
        UsageError,
    )
    from .ledger import Ledger
    from .manifest import Manifest
    from .run import RunOptions, RunReport
    from .simulator import SimConfig, Simulator
    from .states import JobState

__getattr__ = _lazy(__name__)

__all__ = [
    "ApiError", "BatcherError", "BudgetExceeded", "ExitCode", "JobState", "Ledger", "LedgerError", "Manifest",
    "ManifestError", "MissingKeyError", "PreflightFailed", "RunOptions", "RunReport", "SchemaMismatch", "SimConfig",
    "Simulator", "Target", "UsageError", "__version__", "api", "check_references", "describe_model",
    "export_dataset", "export_records", "list_models", "load", "report", "run_async", "stage", "status", "target",
]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
