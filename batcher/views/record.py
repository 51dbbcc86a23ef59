"""The one record of a job that every export writes: the request, the dataset's columns (the row's
variables and meta), its references by name and content, the video's facts, provenance, and its
split; and which jobs an export takes (`Selection`)."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..ledger import Job, Ledger, LocalImage
from ..outputs import probe
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
    if any(v > 1 for _, v in found):  # (a sum of huge shares would overflow)
        raise UsageError(f"--split {spec}: a share is above 1; the shares must sum to exactly 1")
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
    orphans: bool = False  # jobs no row of the current manifest produces (`--include-orphans`)


def records(ledger: Ledger, batch: str | None, model: str | None = None, selection: Selection | None = None
            ) -> Iterator[dict[str, Any]]:
    """Every job's record (of a batch, or of the ledger); only `model`'s jobs when it is given;
    rejected clips left out unless `selection` includes them; each with its split, if asked."""
    chosen = selection or Selection(model=model)
    model = chosen.model or model
    batches = {b.name: b for b in ledger.batches()}
    local = ledger.local_images(any_host=True)
    rendered = ledger.last_event_details(batch, "rendered")
    for job in ledger.iter_batch(batch, orphans=chosen.orphans):
        if job.rejected_at is not None and not chosen.include_rejected:
            continue
        info = batches.get(job.batch)
        if model is not None and (job.model or (info.model if info else None)) != model:
            continue
        simulated = bool(info and info.simulated)
        record = job_record(job, info.model if info else None, simulated, _timing(job, rendered.get(job.id)),
                            local, chosen.facts)
        if chosen.splits is not None:
            record["split"] = split_of(job.key, chosen.splits)
        yield record


def render_timing(ledger: Ledger, job: Job) -> RenderTiming | None:
    """What the run that found a job's render ended kept of its time (in its `rendered` event)."""
    found = [e.detail for e in ledger.events(job.id) if e.kind == "rendered"]
    return _timing(job, found[-1]) if found else None


def _timing(job: Job, detail: str | None) -> RenderTiming | None:
    """A finished job's render time as its `rendered` event's `detail` keeps it."""
    if job.state not in ("rendered", "completed") or detail is None:
        return None
    return RenderTiming.read(detail)


def check_model(ledger: Ledger, batch: str | None, model: str | None) -> None:
    """Refuse a `--model` no job of the batch (or of the ledger) renders with, naming those that do."""
    if model is None:
        return
    have = ledger.models_of(batch)
    if model not in have:
        where = f"batch {batch!r}" if batch else f"the ledger {ledger.display}"
        raise UsageError(f"--model {model}: no job of {where} renders with it (its models: "
                         f"{', '.join(have) or 'none'})")
