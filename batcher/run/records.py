"""What the API did, as the answer journal keeps it when the ledger cannot record it: one builder per
kind of write that records an act of the API (see batcher/ledger/journal.py)."""

from __future__ import annotations

from pathlib import Path

from ..ledger import Job
from ..ledger.journal import Record, Recorded
from .context import RunContext


def accepted(ctx: RunContext, job: Job, attempt_id: int, remote_job_id: str, status_url: str, charge: object,
             submitted_at: float) -> Record:
    """A submission answered with a job id: the charge it was counted at, exactly (as text)."""
    return Record(Recorded.ACCEPTED, ctx.batch, job.id, job.key, remote_job_id, ctx.wall(), attempt_id=attempt_id,
                  status_url=status_url, credit_cost=str(charge), submitted_at=submitted_at,
                  api_base=ctx.client.base_url)


def rendered(ctx: RunContext, job: Job) -> Record:
    """A render found done, with its output URL (`job` as the poll left it)."""
    return Record(Recorded.RENDERED, ctx.batch, job.id, job.key, job.remote_job_id or "", ctx.wall(),
                  status_url=job.status_url, output_url=job.output_url, output_expires_at=job.output_expires_at,
                  render_seconds=job.render_seconds, finished_at=job.finished_at)


def downloaded(ctx: RunContext, job: Job, path: Path | str, size: int, sha256: str) -> Record:
    """A video saved under its final name (a file, or an s3:// object), verified."""
    return Record(Recorded.DOWNLOADED, ctx.batch, job.id, job.key, job.remote_job_id or "", ctx.wall(),
                  status_url=job.status_url, file_path=str(path), size=size, sha256=sha256)
