"""Exports written: JSONL and CSV records (every CSV cell a spreadsheet would take for a formula
neutralised; presigned URLs on request), and VideoFolder datasets whose clips come from this host's
files or from an output store (downloaded, or named by their location)."""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import anyio

from ..errors import OutputStoreError, UsageError
from ..ledger import Ledger
from ..money import json_safe
from ..outputs import file_sha256
from ..outputs.bucket import ClipStores, is_bucket_address, names_clip
from ..references.local import parse_lifetime
from .record import EXTRA_FIELDS, FIELDS, Selection, records


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


def write_csv(rows: Iterator[dict[str, Any]], out: IO[str], urls: bool = False) -> int:
    """Records as CSV, one line each; cells through `csv_cell` (JSONL keeps the raw text). `urls`:
    the records carry presigned URLs (`with_urls`), in a last column."""
    writer = csv.DictWriter(out, fieldnames=FIELDS + EXTRA_FIELDS + (["url"] if urls else []), extrasaction="ignore")
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
           selection: Selection | None = None, presign: float | None = None) -> int:
    """Write every job of `batch` (or of the ledger; of `model` only, if given; as `selection`
    chooses) to `out`; returns the number of records. Each record's `file` is where its clip is (a
    path, or an s3:// URI); with `presign` (seconds) each also carries `url`, an HTTPS URL of its
    clip in an output store."""
    rows = records(ledger, batch, model, selection)
    if presign is not None:
        rows = with_urls(rows, presign)
    if fmt == "jsonl":
        return write_jsonl(rows, out)
    if fmt == "csv":
        return write_csv(rows, out, urls=presign is not None)
    raise ValueError(fmt)


def presign_lifetime(text: str) -> float:
    """`--presign DURATION` in seconds: a number with s, m, h or d (`90m`, `1h`, `7d`), from a
    minute to 7 days (the longest a presigned S3 URL lives)."""
    return parse_lifetime(text, "--presign")


def with_urls(rows: Iterator[dict[str, Any]], lifetime: float, stores: ClipStores | None = None
              ) -> Iterator[dict[str, Any]]:
    """Records with `url`: an HTTPS URL that fetches the clip for `lifetime` seconds when it is in
    an output store (signed here, with the environment's credentials; it names their access key
    id, never a secret), else None."""
    stores = stores or ClipStores()
    for row in rows:
        location = row.get("file")
        url = None
        if isinstance(location, str) and names_clip(location, str(row.get("id") or "")):
            try:
                url = stores.presign(location, lifetime)
            except OutputStoreError:
                url = None  # a location no bucket of this host's credentials answers for: no URL
        yield {**row, "url": url}


# --- dataset folders --------------------------------------------------------------------------

# Clips downloaded from an output store at once by a dataset export (each streamed to its file).
FETCHES_AT_ONCE = 8


@dataclass
class FolderExport:
    videos: int = 0
    linked: int = 0
    copied: int = 0
    unchanged: int = 0
    unverified: list[str] = field(default_factory=list)
    others: int = 0
    downloaded: int = 0  # from the output store
    listed: int = 0  # `link`: named in metadata.jsonl by their location, no file written
    missing: list[str] = field(default_factory=list)  # "KEY LOCATION: why" of clips this host cannot reach


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


@dataclass
class _Clips:
    """How a dataset export takes its clips: copies (local files placed, stored ones downloaded)
    or, `link`, their locations only (presigned URLs too when `presign` is a lifetime)."""

    link: bool
    presign: float | None
    stores: ClipStores = field(default_factory=ClipStores)
    # (row, location, folder) of the clips to download from an output store
    fetches: list[tuple[dict[str, Any], str, Path]] = field(default_factory=list)


def export_videofolder(ledger: Ledger, batch: str | None, out_dir: Path, include_failed: bool = False,
                       model: str | None = None, selection: Selection | None = None, link: bool = False,
                       presign: float | None = None) -> FolderExport:
    """A folder Hugging Face datasets' VideoFolder loads as it is: the videos and metadata.jsonl
    (with splits, a folder of them per split, which VideoFolder reads as its splits).

    Only completed clips whose file is present and matches its recorded sha256 go in: a local file
    hard-linked or copied, a clip in an output store downloaded (checked against its sha256). With
    `link`, no video is written: metadata.jsonl names each clip by its location (`file`: an s3://
    URI or a path) and, with `presign` (seconds), a presigned HTTPS URL (`url`). A clip whose file
    is not on this host (recorded by a runner on another) is reported in `missing`. Exporting
    again into the same folder updates it: records are keyed by file name, never duplicated.
    """
    if presign is not None and not link:
        raise UsageError("presign needs link (otherwise the clips are copied or downloaded, not linked)")
    out_dir.mkdir(parents=True, exist_ok=True)
    folders: dict[Path, dict[str, dict[str, Any]]] = {}
    if selection is None or selection.splits is None:
        folders[out_dir] = _read_metadata(out_dir / "metadata.jsonl")
    result = FolderExport()
    failed: list[dict[str, Any]] = []
    how = _Clips(link, presign)
    for record in records(ledger, batch, model, selection):
        if record["state"] != "completed" or not record["file"]:
            result.others += 1
            if include_failed:
                failed.append(record)
            continue
        folder = out_dir / record["split"] if "split" in record else out_dir
        if folder not in folders:
            folder.mkdir(exist_ok=True)
            folders[folder] = _read_metadata(folder / "metadata.jsonl")
        row = _clip_row(record, folder, how, result)
        if row is not None:
            folders[folder][row["file_name"]] = row
            result.videos += 1
    if how.fetches:
        anyio.run(_fetch_all, how, result, folders)
    for folder, rows in folders.items():
        _write_jsonl_atomically(folder / "metadata.jsonl", rows.values())
    if include_failed:
        _write_jsonl_atomically(out_dir / "not_completed.jsonl", failed)
    return result


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
    """An earlier export's records by file name (none when there is no folder yet)."""
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


def _clip_row(record: dict[str, Any], folder: Path, how: _Clips, result: FolderExport) -> dict[str, Any] | None:
    """A completed clip's metadata row once its video is in the folder (or, `link`, once it is
    known to be reachable); None when it is not (counted in `result`), or while it waits to be
    downloaded (`how.fetches`)."""
    location, in_store = str(record["file"]), is_bucket_address(str(record["file"]))
    row = {"file_name": location.rsplit("/", 1)[-1], **{k: v for k, v in record.items() if k != "file"}}
    if in_store and not names_clip(location, str(record["id"])):
        result.unverified.append(record["id"])
        result.missing.append(f"{record['id']} {location[:120]}: not a clip of this job (never fetched)")
        return None
    if not in_store and not Path(location).exists():
        result.unverified.append(record["id"])
        result.missing.append(f"{record['id']} {location}: not on this host")
        return None
    if how.link:
        try:
            url = how.stores.presign(location, how.presign) if in_store and how.presign is not None else None
        except OutputStoreError as e:
            result.missing.append(f"{record['id']} {location[:120]}: {e}")
            url = None
        result.listed += 1
        return {**row, "file": location, **({"url": url} if url else {})}
    if in_store:
        how.fetches.append((row, location, folder))
        return None
    source = Path(location)
    if file_sha256(source) != record["sha256"]:
        result.unverified.append(record["id"])
        return None
    _place(source, folder / row["file_name"], record["sha256"], result)
    return row


async def _fetch_all(how: _Clips, result: FolderExport, folders: dict[Path, dict[str, dict[str, Any]]]) -> None:
    """Download the clips `how.fetches` names into their folders, a few at once; each goes in (its
    row into its folder's rows) only once its bytes match its recorded sha256."""
    limiter = anyio.CapacityLimiter(FETCHES_AT_ONCE)

    async def fetch(row: dict[str, Any], location: str, folder: Path) -> None:
        target = folder / row["file_name"]
        async with limiter:
            if target.exists() and await anyio.to_thread.run_sync(file_sha256, target) == row["sha256"]:
                result.unchanged += 1
            else:
                tmp = target.with_name(f".{target.name}.tmp")
                try:
                    await how.stores.fetch(location, tmp)
                except (OutputStoreError, OSError) as e:
                    result.unverified.append(row["id"])
                    result.missing.append(f"{row['id']} {location}: {e}")
                    return
                if await anyio.to_thread.run_sync(file_sha256, tmp) != row["sha256"]:
                    tmp.unlink(missing_ok=True)
                    result.unverified.append(row["id"])
                    return
                os.replace(tmp, target)
                result.downloaded += 1
        folders[folder][row["file_name"]] = row
        result.videos += 1

    async with anyio.create_task_group() as tasks:
        for row, location, folder in how.fetches:
            tasks.start_soon(fetch, row, location, folder)


def _write_jsonl_atomically(path: Path, rows: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(json_safe(row), ensure_ascii=False, allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
