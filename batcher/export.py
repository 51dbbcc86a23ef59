"""Export: one record per job, built in one place, written as JSONL or CSV."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from .ledger import Job, Ledger

FIELDS = ["id", "batch", "origin", "prompt", "reference_urls", "duration", "resolution", "aspect_ratio",
          "negative_prompt", "seed", "state", "remote_job_id", "credit_cost", "output_url", "file", "sha256",
          "error"]
EXTRA_FIELDS = ["model", "size", "attempts", "render_seconds", "submitted_at", "finished_at", "label", "take"]


def iso(epoch: float | None) -> str | None:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat() if epoch else None


def job_record(job: Job, model: str | None = None) -> dict[str, Any]:
    """A job's provenance: the request, where it came from, what it cost and where its video is."""
    params = job.parameters()
    return {
        "id": job.key, "batch": job.batch, "origin": job.origin, "prompt": params.get("prompt"),
        "reference_urls": params.get("references", []), "duration": params.get("duration"),
        "resolution": params.get("resolution"), "aspect_ratio": params.get("aspect_ratio"),
        "negative_prompt": params.get("negative_prompt"), "seed": params.get("seed"), "state": job.state,
        "remote_job_id": job.remote_job_id, "credit_cost": job.credit_cost, "output_url": job.output_url,
        "file": job.file_path, "sha256": job.sha256, "error": job.error,
        "model": model, "size": job.size, "attempts": job.attempts, "render_seconds": job.render_seconds,
        "submitted_at": iso(job.submitted_at), "finished_at": iso(job.finished_at), "label": job.label,
        "take": job.take,
    }


def records(ledger: Ledger, batch: str | None) -> Iterator[dict[str, Any]]:
    models = {b.name: b.model for b in ledger.batches()}
    for job in ledger.iter_batch(batch):
        yield job_record(job, models.get(job.batch))


def write_jsonl(rows: Iterator[dict[str, Any]], out: IO[str]) -> int:
    n = 0
    for row in rows:
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
        n += 1
    return n


def write_csv(rows: Iterator[dict[str, Any]], out: IO[str]) -> int:
    writer = csv.DictWriter(out, fieldnames=FIELDS + EXTRA_FIELDS, extrasaction="ignore")
    writer.writeheader()
    n = 0
    for row in rows:
        flat = dict(row)
        flat["reference_urls"] = " ".join(row["reference_urls"] or [])
        writer.writerow({k: "" if v is None else v for k, v in flat.items()})
        n += 1
    return n


def export(ledger: Ledger, batch: str | None, fmt: str, out: IO[str]) -> int:
    """Write every job of `batch` (or of the ledger) to `out`; returns the number of records."""
    rows = records(ledger, batch)
    if fmt == "jsonl":
        return write_jsonl(rows, out)
    if fmt == "csv":
        return write_csv(rows, out)
    raise ValueError(fmt)


def default_path(batch: str, fmt: str) -> Path:
    return Path(f"{batch}.{fmt}")
