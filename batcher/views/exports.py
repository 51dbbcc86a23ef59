"""Export: one record per job, built in one place (the request, the dataset's columns, its
references by name and content, the video's facts, provenance, its split), written as JSONL, CSV
(every cell a spreadsheet would take for a formula neutralised) or a VideoFolder dataset."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Any

from ..errors import UsageError
from ..ledger import Job, Ledger, LocalImage
from ..money import json_safe
from ..outputs import file_sha256, probe
from ..run.polling import RenderTiming
from ..text import iso

FIELDS = ["id", "batch", "origin", "prompt", "reference_urls", "duration", "resolution", "aspect_ratio",
          "negative_prompt", "seed", "state", "remote_job_id", "credit_cost", "output_url", "file", "sha256",
          "error"]
EXTRA_FIELDS = ["model", "size", "attempts", "render_seconds", "render_seconds_bounds", "submitted_at",
                "finished_at", "label", "take", "created_at", "simulated", "split", "vars", "meta", "references",
                "video_seconds", "width", "height", "rejected", "reroll_of"]
LOCAL_PREFIX = "local:sha256:"


# --- splits -------------------------------------------------------------------------------------

Splits = tuple[tuple[str, Decimal], ...]
_SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_HASH_SPAN = 2 ** 64


def parse_splits(spec: str) -> Splits:
    """`train=0.9,validation=0.1` as (name, share) pairs; shares above 0 that sum to exactly 1."""
    found: list[tuple[str, Decimal]] = []
    for part in spec.split(","):
        name, eq, share = part.strip().partition("=")
        try:
            value = Decimal(share.strip()) if eq else Decimal("NaN")
        except InvalidOperation:
            value = Decimal("NaN")
        if not _SPLIT_NAME.fullmatch(name.strip()) or not value.is_finite() or value <= 0:
            raise UsageError(f"--split {spec}: write NAME=SHARE,... with shares above 0 (train=0.9,validation=0.1)")
        if name.strip() in dict(found):
            raise UsageError(f"--split {spec}: {name.strip()} is named twice")
        found.append((name.strip(), value))
    if sum(v for _, v in found) != 1:
        raise UsageError(f"--split {spec}: the shares sum to {sum(v for _, v in found)}, not 1")
    return tuple(found)


def split_of(key: str, splits: Splits) -> str:
    """The split a job's key falls in: where the first 64 bits of its SHA-256 lie among the shares
    (by the key alone, so a rerun, or a job added later, never moves a clip to another split)."""
    point = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    bound = Decimal(0)
    for name, share in splits:
        bound += share * _HASH_SPAN
        if point < bound:
            return name
    return splits[-1][0]


# --- the record -------------------------------------------------------------------------------

def reference_entries(urls: list[str], local: Mapping[str, LocalImage]) -> list[dict[str, Any]]:
    """A job's references by name (a local file's path, relative to the manifest that named it;
    else its URL) and by content hash (a local file's; None for a URL, whose content is the server's)."""
    entries = []
    for url in urls:
        if not url.startswith(LOCAL_PREFIX):
            entries.append({"name": url, "sha256": None})
            continue
        image = local.get(url)
        entries.append({"name": _relative_name(image) if image else None, "sha256": url[len(LOCAL_PREFIX):]})
    return entries


def _relative_name(image: LocalImage) -> str:
    manifest_file = image.origin.rpartition(":")[0] or image.origin
    try:
        return os.path.relpath(image.path, Path(manifest_file).resolve().parent)
    except ValueError:  # another drive (Windows): no relative path
        return image.path


def video_facts(job: Job) -> dict[str, Any] | None:
    """What the MP4 header of a completed job's file says: its seconds and frame size."""
    if job.state != "completed" or not job.file_path:
        return None
    info = probe(Path(job.file_path))
    return {"seconds": info.seconds, "width": info.width, "height": info.height} if info else None


def job_record(job: Job, model: str | None = None, simulated: bool = False, timing: RenderTiming | None = None,
               local: Mapping[str, LocalImage] | None = None, facts: bool = False) -> dict[str, Any]:
    """A job's provenance: the request, where it came from, what it cost and where its video is.

    The one record builder behind JSONL, CSV, dataset folders and the HTML report. `model` is the
    job's batch's model: it names the job's model only for a job an older ledger wrote without one
    (a batch may mix models, so each job says its own). `timing`: what its run found of its
    render's time (`render_timing`): `render_seconds` is the API's own (None when the API gave no
    times), `render_seconds_bounds` what the polls saw; never when a poll happened to find it done.
    `local`: where each local reference was found (content address -> image), for its name;
    `facts`: read the video's facts from its file's header.
    """
    params = job.parameters()
    video = video_facts(job) if facts else None
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
        # The dataset: the row's template variables and `meta:`, the references by name and content,
        # the clip's facts (not `video`: VideoFolder names the clip's file so).
        **job.dataset_columns(),
        "references": reference_entries(params.get("references", []), local or {}),
        "video_info": video, "rejected": job.rejected_at is not None, "reroll_of": job.reroll_of,
    }


@dataclass(frozen=True)
class Selection:
    """Which records an export writes, and the split each is in."""

    model: str | None = None  # only this model's jobs
    splits: Splits | None = None  # each record's `split` (None: no split field)
    include_rejected: bool = False  # clips `batcher reject` left out
    facts: bool = True  # read each video's facts from its file (the gallery needs none)


def records(ledger: Ledger, batch: str | None, model: str | None = None, selection: Selection | None = None
            ) -> Iterator[dict[str, Any]]:
    """Every job's record (of a batch, or of the ledger); only `model`'s jobs when it is given;
    rejected clips left out unless `selection` includes them; each with its split, if asked."""
    chosen = selection or Selection(model=model)
    model = chosen.model or model
    batches = {b.name: b for b in ledger.batches()}
    local = ledger.local_images(any_host=True)
    for job in ledger.iter_batch(batch):
        if job.rejected_at is not None and not chosen.include_rejected:
            continue
        info = batches.get(job.batch)
        if model is not None and (job.model or (info.model if info else None)) != model:
            continue
        simulated = bool(info and info.simulated)
        record = job_record(job, info.model if info else None, simulated, render_timing(ledger, job), local,
                            chosen.facts)
        if chosen.splits is not None:
            record["split"] = split_of(job.key, chosen.splits)
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


def _csv_dataset(row: dict[str, Any]) -> dict[str, Any]:
    """The dataset's columns as CSV cells: variables and meta as JSON text, references by name."""
    video = row.get("video_info") or {}
    return {"vars": json.dumps(json_safe(row["vars"]), ensure_ascii=False),
            "meta": json.dumps(json_safe(row["meta"]), ensure_ascii=False),
            "references": " ".join(r["name"] or r["sha256"] for r in row["references"]),
            "video_seconds": video.get("seconds"), "width": video.get("width"), "height": video.get("height")}


def write_csv(rows: Iterator[dict[str, Any]], out: IO[str]) -> int:
    """Records as CSV, one line each; cells through `csv_cell` (JSONL keeps the raw text)."""
    writer = csv.DictWriter(out, fieldnames=FIELDS + EXTRA_FIELDS, extrasaction="ignore")
    writer.writeheader()
    n = 0
    for row in rows:
        flat = dict(row)
        flat["reference_urls"] = " ".join(row["reference_urls"] or [])
        flat["render_seconds_bounds"] = " ".join(f"{b:g}" for b in row["render_seconds_bounds"] or [])
        flat.update(_csv_dataset(row))
        writer.writerow({k: csv_cell(v) for k, v in flat.items()})
        n += 1
    return n


def export(ledger: Ledger, batch: str | None, fmt: str, out: IO[str], model: str | None = None,
           selection: Selection | None = None) -> int:
    """Write every job of `batch` (or of the ledger; of `model` only, if given; as `selection`
    chooses) to `out`; returns the number of records."""
    rows = records(ledger, batch, model, selection)
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


def verified_clips(rows: Iterator[dict[str, Any]], result: FolderExport, failed: list[dict[str, Any]] | None = None
                   ) -> Iterator[tuple[dict[str, Any], Path]]:
    """The completed records whose file is present and matches its recorded sha256, with the file;
    the others counted in `result` (and kept in `failed`, when given)."""
    for record in rows:
        if record["state"] != "completed" or not record["file"]:
            result.others += 1
            if failed is not None:
                failed.append(record)
            continue
        source = Path(record["file"])
        if not source.exists() or file_sha256(source) != record["sha256"]:
            result.unverified.append(record["id"])
            continue
        yield record, source


def _read_metadata(meta_path: Path) -> dict[str, dict[str, Any]]:
    """A folder's metadata.jsonl by file name (lines that are not records skipped)."""
    existing: dict[str, dict[str, Any]] = {}
    if meta_path.exists():
        for line in meta_path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    row = json.loads(line)
                    existing[row["file_name"]] = row
                except (ValueError, KeyError, TypeError):
                    continue
    return existing


def export_videofolder(ledger: Ledger, batch: str | None, out_dir: Path, include_failed: bool = False,
                       model: str | None = None, selection: Selection | None = None) -> FolderExport:
    """A folder Hugging Face datasets' VideoFolder loads as it is: the videos and metadata.jsonl
    (with splits, a folder of them per split, which VideoFolder reads as its splits).

    Only completed clips whose file is present and matches its recorded sha256 go in. Exporting
    again into the same folder updates it: records are keyed by file name, never duplicated.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    folders: dict[Path, dict[str, dict[str, Any]]] = {}
    if selection is None or selection.splits is None:
        folders[out_dir] = _read_metadata(out_dir / "metadata.jsonl")
    result = FolderExport()
    failed: list[dict[str, Any]] = []
    for record, source in verified_clips(records(ledger, batch, model, selection), result,
                                         failed if include_failed else None):
        folder = out_dir / record["split"] if "split" in record else out_dir
        if folder not in folders:
            folder.mkdir(exist_ok=True)
            folders[folder] = _read_metadata(folder / "metadata.jsonl")
        name = source.name
        _place(source, folder / name, record["sha256"], result)
        folders[folder][name] = {"file_name": name, **{k: v for k, v in record.items() if k != "file"}}
        result.videos += 1
    for folder, rows in folders.items():
        _write_jsonl_atomically(folder / "metadata.jsonl", rows.values())
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
