"""Export: one record per job, built in one place, written as JSONL or CSV (every CSV cell a
spreadsheet would take for a formula neutralised)."""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..errors import UsageError
from ..ledger import Job, Ledger
from ..money import json_safe
from ..outputs import file_sha256
from ..run.polling import RenderTiming
from ..text import iso

FIELDS = ["id", "batch", "origin", "prompt", "reference_urls", "duration", "resolution", "aspect_ratio",
          "negative_prompt", "seed", "state", "remote_job_id", "credit_cost", "output_url", "file", "sha256",
          "error"]
EXTRA_FIELDS = ["model", "size", "attempts", "render_seconds", "render_seconds_bounds", "submitted_at",
                "finished_at", "label", "take", "created_at", "simulated"]


def job_record(job: Job, model: str | None = None, simulated: bool = False, timing: RenderTiming | None = None
               ) -> dict[str, Any]:
    """A job's provenance: the request, where it came from, what it cost and where its video is.

    The one record builder behind JSONL, CSV, dataset folders and the HTML report. `model` is the
    job's batch's model: it names the job's model only for a job an older ledger wrote without one
    (a batch may mix models, so each job says its own). `timing`: what its run found of its
    render's time (`render_timing`): `render_seconds` is the API's own (None when the API gave no
    times), `render_seconds_bounds` what the polls saw; never when a poll happened to find it done.
    """
    params = job.parameters()
    return {
        "id": job.key, "batch": job.batch, "origin": job.origin, "prompt": params.get("prompt"),
        "reference_urls": params.get("references", []), "duration": params.get("duration"),
        "resolution": params.get("resolution"), "aspect_ratio": params.get("aspect_ratio"),
        "negative_prompt": params.get("negative_prompt"), "seed": params.get("seed"), "state": job.state,
        "remote_job_id": job.remote_job_id, "credit_cost": job.credit_cost, "output_url": job.output_url,
        "file": job.file_path, "sha256": job.sha256, "error": job.error,
        "model": job.model or model, "size": job.size, "attempts": job.attempts,
        "render_seconds": timing.api if timing is not None else None,
        "render_seconds_bounds": [timing.low, timing.high] if timing is not None else None,
        "submitted_at": iso(job.submitted_at), "finished_at": iso(job.finished_at), "label": job.label,
        "take": job.take, "created_at": iso(job.created_at),
        # Rendered by batcher's built-in simulator: the clip is a stand-in, not a real render.
        "simulated": simulated,
        # Every parameter of the request as the manifest names them (a model described by the API
        # has its own, beyond the columns above); JSONL and dataset metadata carry it, CSV does not.
        "parameters": params,
    }


def records(ledger: Ledger, batch: str | None, model: str | None = None, *,
            orphans: bool = False) -> Iterator[dict[str, Any]]:
    """Every job's record (of a batch, or of the ledger); only `model`'s jobs when it is given;
    jobs no row of the current manifest produces only with `orphans`."""
    batches = {b.name: b for b in ledger.batches()}
    for job in ledger.iter_batch(batch, orphans=orphans):
        info = batches.get(job.batch)
        simulated = bool(info and info.simulated)
        record = job_record(job, info.model if info else None, simulated, render_timing(ledger, job))
        if model is None or record["model"] == model:
            yield record


def render_timing(ledger: Ledger, job: Job) -> RenderTiming | None:
    """What the run that found a job's render ended kept of its time (in its `rendered` event)."""
    if job.state not in ("rendered", "completed"):
        return None
    found = [e.detail for e in ledger.events(job.id) if e.kind == "rendered"]
    return RenderTiming.read(found[-1]) if found else None


def check_model(ledger: Ledger, batch: str | None, model: str | None) -> None:
    """Refuse a `--model` no job of the batch (or of the ledger) renders with, naming those that do."""
    if model is None:
        return
    have = ledger.models_of(batch)
    if model not in have:
        where = f"batch {batch!r}" if batch else f"the ledger {ledger.display}"
        raise UsageError(f"--model {model}: no job of {where} renders with it (its models: "
                         f"{', '.join(have) or 'none'})")


def write_jsonl(rows: Iterator[dict[str, Any]], out: IO[str]) -> int:
    n = 0
    for row in rows:
        out.write(json.dumps(json_safe(row), ensure_ascii=False, allow_nan=False) + "\n")
        n += 1
    return n


# What a spreadsheet reads as the start of a formula (OWASP's list): a prompt or an API's error
# text that starts so could run as one when the CSV is opened (`=HYPERLINK(...)`, `@SUM(...)`).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A value as a CSV cell: nothing as empty, text that could start a formula prefixed with `'`
    (which spreadsheets show as text, not evaluate). Numbers are written as they are."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def write_csv(rows: Iterator[dict[str, Any]], out: IO[str]) -> int:
    """Records as CSV, one line each; cells through `csv_cell` (JSONL keeps the raw text)."""
    writer = csv.DictWriter(out, fieldnames=FIELDS + EXTRA_FIELDS, extrasaction="ignore")
    writer.writeheader()
    n = 0
    for row in rows:
        flat = dict(row)
        flat["reference_urls"] = " ".join(row["reference_urls"] or [])
        flat["render_seconds_bounds"] = " ".join(f"{b:g}" for b in row["render_seconds_bounds"] or [])
        writer.writerow({k: csv_cell(v) for k, v in flat.items()})
        n += 1
    return n


def export(ledger: Ledger, batch: str | None, fmt: str, out: IO[str], model: str | None = None, *,
           orphans: bool = False) -> int:
    """Write every job of `batch` (or of the ledger; of `model` only, if given; orphans only with
    `orphans`) to `out`; returns the number of records."""
    rows = records(ledger, batch, model, orphans=orphans)
    if fmt == "jsonl":
        return write_jsonl(rows, out)
    if fmt == "csv":
        return write_csv(rows, out)
    raise ValueError(fmt)


# --- dataset folders --------------------------------------------------------------------------

@dataclass
class FolderExport:
    videos: int = 0
    linked: int = 0
    copied: int = 0
    unchanged: int = 0
    unverified: list[str] = field(default_factory=list)
    others: int = 0


def _place(source: Path, target: Path, sha256: str, result: FolderExport) -> None:
    """Hard-link (else copy) a verified video into the folder; leave it if already there."""
    if target.exists():
        try:
            if os.path.samefile(source, target) or file_sha256(target) == sha256:
                result.unchanged += 1
                return
        except OSError:
            pass
    tmp = target.with_name(f".{target.name}.tmp")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(source, tmp)
        result.linked += 1
    except OSError:
        shutil.copy2(source, tmp)
        result.copied += 1
    os.replace(tmp, target)


def export_videofolder(ledger: Ledger, batch: str | None, out_dir: Path, include_failed: bool = False,
                       model: str | None = None, *, orphans: bool = False) -> FolderExport:
    """A folder Hugging Face datasets' VideoFolder loads as it is: the videos and metadata.jsonl.

    Only completed clips whose file is present and matches its recorded sha256 go in. Exporting
    again into the same folder updates it: records are keyed by file name, never duplicated.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    meta_path = out_dir / "metadata.jsonl"
    existing: dict[str, dict[str, Any]] = {}
    if meta_path.exists():
        for line in meta_path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    row = json.loads(line)
                    existing[row["file_name"]] = row
                except (ValueError, KeyError, TypeError):
                    continue
    result = FolderExport()
    failed: list[dict[str, Any]] = []
    for record in records(ledger, batch, model, orphans=orphans):
        if record["state"] != "completed" or not record["file"]:
            result.others += 1
            if include_failed:
                failed.append(record)
            continue
        source = Path(record["file"])
        if not source.exists() or file_sha256(source) != record["sha256"]:
            result.unverified.append(record["id"])
            continue
        name = source.name
        _place(source, out_dir / name, record["sha256"], result)
        row = {"file_name": name, **{k: v for k, v in record.items() if k != "file"}}
        existing[name] = row
        result.videos += 1
    _write_jsonl_atomically(meta_path, existing.values())
    if include_failed:
        _write_jsonl_atomically(out_dir / "not_completed.jsonl", failed)
    return result


def _write_jsonl_atomically(path: Path, rows: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(json_safe(row), ensure_ascii=False, allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
