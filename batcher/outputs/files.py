"""The videos folder: file names, temporary files, publishing without replacing, verification.

A video's name holds its job's whole key, so two jobs of a batch can never be given one name; a
publish links the verified temporary file to its final name, which never replaces a file that
is already there (another job's clip, or the same clip from an earlier run). Temporary names
carry the host and process that wrote them, so a runner removes only the leftovers of
processes that no longer exist, never the downloads of a runner working beside it.
"""

from __future__ import annotations

import enum
import errno
import hashlib
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path

from ..errors import DiskFullError, UsageError

OUTPUTS = Path("outputs")  # where videos go by default, one folder per batch
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "host"
# .NAME.mp4.HOST.PID-RANDOM.part (files from before host names were added lack HOST.)
_TEMP = re.compile(r"^\.(?P<final>.+\.mp4)\.(?:(?P<host>[A-Za-z0-9-]+)\.)?(?P<pid>\d+)-[0-9a-f]+\.part$")


class Found(enum.Enum):
    """What a rerun's check of a completed clip found (its value: why it no longer counts)."""

    THERE = ""
    GONE = "is gone"
    CHANGED = "does not match its recorded size and sha256"
    FOREIGN = "is not in this output store"  # kept elsewhere (an earlier --out): left where it is


def video_name(label: str, take: int, key: str) -> str:
    """`<row label>_t<take>_<job key>.mp4`: unique per job of a batch by construction (keys are)."""
    return f"{label}_t{take}_{key}.mp4"


def temp_name(final_name: str, nonce: int) -> str:
    """A hidden temporary name for a download in progress, naming this host and process."""
    return f".{final_name}.{_HOST}.{os.getpid()}-{nonce:x}.part"


def process_alive(pid: int) -> bool:
    """True while process `pid` exists on this host and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped by its parent) is dead for our purposes
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def sweep_temp_files(folder: Path) -> int:
    """Remove temporary downloads left by processes of this host that no longer exist; returns
    how many. Files of live processes, and of other hosts sharing the folder, are left alone."""
    removed = 0
    for path in folder.glob(".*.part"):
        m = _TEMP.match(path.name)
        if m is None:
            continue
        host, pid = m.group("host"), int(m.group("pid"))
        if (host is not None and host != _HOST) or pid == os.getpid() or process_alive(pid):
            continue
        try:
            path.unlink()
            removed += 1
        except OSError:
            pass
    return removed


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def matches(path: Path, size: int | None, sha256: str | None) -> bool:
    """True when `path` is there with exactly this size and sha256 (size first: it is cheap)."""
    try:
        if size is not None and path.stat().st_size != size:
            return False
        return sha256 is not None and file_sha256(path) == sha256
    except OSError:
        return False


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: Path, final: Path, sha256: str, may_replace: Callable[[Path], bool]) -> Path:
    """Give a verified download its final name, durably, and return the name used.

    The content is on disk before the name, and the name before the caller records it. An
    existing file is never replaced unless `may_replace(path)` says it belongs to nobody else
    (a stale copy of this very job); a file with the same content is simply kept. If the name is
    another job's, the clip goes to `<name>.2.mp4`, `.3`, ... Raises FileNotFoundError when the
    temporary file vanished (the caller downloads again) and DiskFullError when the disk is full.
    """
    try:
        _fsync(tmp)
        candidate = final
        for n in range(2, 1000):
            try:
                os.link(tmp, candidate)  # fails if the name exists: never replaces
                break
            except FileExistsError:
                if matches(candidate, None, sha256):
                    break
                if may_replace(candidate):
                    os.replace(tmp, candidate)
                    break
                candidate = final.with_name(f"{final.stem}.{n}{final.suffix}")
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                    raise
                # No hard links here (some network and FUSE file systems): check, then rename.
                if candidate.exists() and not may_replace(candidate) and not matches(candidate, None, sha256):
                    candidate = final.with_name(f"{final.stem}.{n}{final.suffix}")
                    continue
                os.replace(tmp, candidate)
                break
        else:
            raise FileExistsError(f"no free name for {final}")
        tmp.unlink(missing_ok=True)  # missing: renamed, not linked
        _fsync(final.parent)
        return candidate
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DiskFullError(f"no space left on the disk while saving {final.name}") from None
        raise


def default_out_dir(batch: str, simulated: bool = False, base: Path = OUTPUTS) -> Path:
    """Where a batch's videos go unless --out says otherwise: ./outputs/<batch>/, or
    ./outputs/simulated/<batch>/ for simulated runs. The folder never leaves `base`, whatever the
    batch name says (manifests check names too; this is the last word)."""
    root = base / "simulated" if simulated else base
    if not simulated and batch == "simulated":
        raise UsageError("a batch named 'simulated' would put real clips in ./outputs/simulated/, beside simulated "
                         "runs: rename the batch ('batch:' in the manifest) or give --out")
    folder = root / batch
    if not batch or folder.resolve().parent != root.resolve() or folder.name != batch:
        raise UsageError(f"batch name {batch!r} cannot be a folder name under {root}/")
    return folder
