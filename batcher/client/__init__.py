"""Talking to the PixelDojo API: the HTTP client, its answers read without trusting them, the model
catalog and preflight.

    answers     an answer's shape, error texts and codes, Retry-After, redaction of the key
    transfers   reading a body without trusting its length or its pace
    http        the client (httpx): one method per endpoint, every answer classified
    catalog     which models a batch may name (tables, or live descriptions cached in the ledger)
    preflight   every reference URL of a batch checked before anything is spent
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..faces import lazy

if TYPE_CHECKING:
    from .answers import (
        DEFAULT_MAX_RETRY_AFTER,
        OUTPUT_SHAPES,
        SIGNED_QUERY,
        JobStatus,
        OutputURL,
        ReferenceFetch,
        Submission,
        describe,
        output_url,
        redact_json,
    )
    from .catalog import ModelCatalog, UnusableDescription, list_models, spec_of
    from .http import DEFAULT_BASE, PixelDojoClient
    from .preflight import (
        Outcome,
        PreflightReport,
        check_local_file,
        check_local_files,
        check_url,
        judge,
        references_of,
    )
    from .transfers import MAX_ANSWER_BYTES, FileSink, VideoSink

__getattr__ = lazy(__name__)

__all__ = [
    "DEFAULT_BASE",
    "DEFAULT_MAX_RETRY_AFTER",
    "MAX_ANSWER_BYTES",
    "OUTPUT_SHAPES",
    "SIGNED_QUERY",
    "FileSink",
    "JobStatus",
    "ModelCatalog",
    "Outcome",
    "OutputURL",
    "PixelDojoClient",
    "PreflightReport",
    "ReferenceFetch",
    "Submission",
    "UnusableDescription",
    "VideoSink",
    "check_local_file",
    "check_local_files",
    "check_url",
    "describe",
    "judge",
    "list_models",
    "output_url",
    "redact_json",
    "references_of",
    "spec_of",
]
