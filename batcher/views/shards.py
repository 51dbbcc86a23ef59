"""WebDataset shards and a Parquet index of the export records.

Shards are tar files of `KEY.mp4`, `KEY.json` (the record) and `KEY.jpg` (when a poster lies
beside the clip), in the ledger's order. Each is written under a temporary name, synced and
renamed: a shard that has its name is whole. `index.json` in the folder says which keys each
finished shard holds; a rerun writes only the clips no shard holds yet, into new shards, and
never opens a finished one again.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..ledger import Ledger
from ..money import json_safe
from .exports import FolderExport, verified_clips
from .record import Selection, records

INDEX = "index.json"
DEFAULT_SHARD_BYTES = 1_000_000_000
_UNITS = {"": 1, "B": 1, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "TB": 10 ** 12,
          "KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30}


def parse_size(text: str) -> int:
    """`1GB`, `500MB`, `64MiB` or a number of bytes, as bytes (above 0)."""
    cleaned = text.strip().upper().replace(" ", "")
    digits = cleaned.rstrip("KMGTIB")
    unit = cleaned[len(digits):]
    try:
        value = float(digits) * _UNITS[unit]
    except (ValueError, KeyError):
        raise UsageError(f"--shard-size {text}: write a size such as 1GB, 500MB or 64MiB") from None
    if value < 1:
        raise UsageError(f"--shard-size {text}: a shard holds at least one byte")
    return int(value)


@dataclass
class ShardExport(FolderExport):
    shards: list[str] = field(default_factory=list)  # the shards this export wrote
    already: int = 0  # clips a finished shard held before


def _read_index(out_dir: Path) -> dict[str, list[str]]:
    path = out_dir / INDEX
    if not path.exists():
        return {}
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
        return {str(name): [str(k) for k in keys] for name, keys in found["shards"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UsageError(f"{path} is not an index batcher wrote: export into an empty folder") from None


def _write_synced(path: Path, data: bytes | None = None, write: Any = None) -> None:
    """Write `path` under a temporary name, sync it and rename it: whole or not there."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        if write is not None:
            write(f)
        else:
            f.write(data or b"")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _member(tar: tarfile.TarFile, name: str, content: Path | bytes) -> None:
    """One file of a sample, streamed from disk; no times or owners: the same clips make the same shard."""
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    if isinstance(content, bytes):
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
        return
    with open(content, "rb") as f:
        info.size = os.fstat(f.fileno()).st_size
        tar.addfile(info, f)


def _sample(record: dict[str, Any], source: Path) -> list[tuple[str, Path | bytes]]:
    key = record["id"]
    text = json.dumps(json_safe({k: v for k, v in record.items() if k != "file"}), ensure_ascii=False,
                      allow_nan=False, sort_keys=True)
    parts: list[tuple[str, Path | bytes]] = [(f"{key}.mp4", source), (f"{key}.json", text.encode())]
    poster = source.with_suffix(".jpg")
    if poster.exists():
        parts.append((f"{key}.jpg", poster))
    return parts


def _write_shard(path: Path, samples: list[list[tuple[str, Path | bytes]]]) -> None:
    def write(f: Any) -> None:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for parts in samples:
                for name, content in parts:
                    _member(tar, name, content)
    _write_synced(path, write=write)


@dataclass
class _OpenShard:
    samples: list[list[tuple[str, Path | bytes]]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    size: int = 0


def _grouped(rows: Iterator[tuple[dict[str, Any], Path]], limit: int) -> Iterator[tuple[str, _OpenShard]]:
    """Samples in shards of at most `limit` bytes (a larger clip alone), per split, in order."""
    filling: dict[str, _OpenShard] = {}
    for record, source in rows:
        split = record.get("split", "")
        parts = _sample(record, source)
        size = sum(len(c) if isinstance(c, bytes) else c.stat().st_size for _, c in parts)
        shard = filling.setdefault(split, _OpenShard())
        if shard.samples and shard.size + size > limit:
            yield split, shard
            shard = filling[split] = _OpenShard()
        shard.samples.append(parts)
        shard.keys.append(record["id"])
        shard.size += size
    yield from filling.items()


def export_webdataset(ledger: Ledger, batch: str | None, out_dir: Path, selection: Selection | None = None,
                      shard_bytes: int = DEFAULT_SHARD_BYTES) -> ShardExport:
    """Verified clips as WebDataset tar shards (`PREFIX-000000.tar`, PREFIX the split or `shard`),
    with `index.json`; a rerun adds the clips no finished shard holds, in new shards."""
    out_dir.mkdir(parents=True, exist_ok=True)
    index = _read_index(out_dir)
    done = {key for keys in index.values() for key in keys}
    result = ShardExport()
    fresh = []
    for record, source in verified_clips(records(ledger, batch, None, selection), result):
        if record["id"] in done:
            result.already += 1
        else:
            fresh.append((record, source))
    for split, shard in _grouped(iter(fresh), shard_bytes):
        prefix = split or "shard"
        number = sum(1 for name in index if name.rsplit("-", 1)[0] == prefix)
        name = f"{prefix}-{number:06d}.tar"
        _write_shard(out_dir / name, shard.samples)
        index[name] = shard.keys
        # The index names a shard only once it is whole: a crash between leaves a shard no index
        # names, written again (whole, the same clips) by the next export.
        _write_synced(out_dir / INDEX, json.dumps({"shards": index}, indent=1).encode())
        result.shards.append(name)
        result.videos += len(shard.keys)
    return result


def export_parquet(ledger: Ledger, batch: str | None, out: Path, selection: Selection | None = None) -> int:
    """The records as one Parquet file (what the Hub's viewer shows); needs pyarrow."""
    try:
        import pyarrow as pa  # type: ignore[import-untyped]
        import pyarrow.parquet as pq  # type: ignore[import-untyped]
    except ImportError:
        raise UsageError("--format parquet needs pyarrow: pip install 'batcher[parquet]'") from None
    rows = []
    for record in records(ledger, batch, None, selection):
        flat = json_safe(record)
        # Free-form columns as JSON text: their names and types differ from row to row.
        for name in ("vars", "meta", "parameters"):
            flat[name] = json.dumps(flat[name], ensure_ascii=False)
        rows.append(flat)
    table = pa.Table.from_pylist(rows)
    _write_synced(out, write=lambda f: pq.write_table(table, f))
    return len(rows)
