"""Local reference images: a file, a folder (its images, sorted by name) or a glob, written in a
manifest beside URLs and set names, resolved relative to the manifest's folder.

A local image enters a job's request as its content address, `local:sha256:<hex>`, never as its
path: renaming or moving a file changes no job key, editing it changes the keys of the jobs
that use it and no others. Each file is read once per process for a given (path, size,
modification time): its SHA-256 is cached.
"""

from __future__ import annotations

import glob
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import LocalReferencesNeedStore
from .text import short

LOCAL_PREFIX = "local:sha256:"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
_ACCEPTED = ", ".join(IMAGE_SUFFIXES)
_GLOB_CHARS = ("*", "?", "[")
# Anything that reads as a path rather than a set name (a set name never needs a slash).
_PATHLIKE_SUFFIXES = (*IMAGE_SUFFIXES, ".gif", ".bmp", ".tif", ".tiff", ".avif", ".heic")

_hashes: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256 hex


@dataclass(frozen=True)
class LocalFile:
    """One local reference image: its content address and where it was found and written."""

    address: str  # local:sha256:<hex>
    path: Path  # absolute
    written: str  # the reference as the manifest wrote it (a file, folder or glob)
    size: int
    origin: str  # FILE:LINE where it was written
    shown: str  # the file as a person names it: as written, or relative to the manifest's folder


def is_local_address(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(LOCAL_PREFIX)


def looks_like_local(text: str) -> bool:
    """Whether a reference that is no URL reads as a path on this machine (./a.png, ~/b.jpg,
    c.webp, chars/knight, chars/*.png, file:///d.png)."""
    if text.lower().startswith("file:"):
        return True
    if "://" in text:
        return False
    return (text.startswith(("~", ".")) or "/" in text or "\\" in text or any(c in text for c in _GLOB_CHARS)
            or text.lower().endswith(_PATHLIKE_SUFFIXES))


def _sha256(path: Path, st: os.stat_result) -> str:
    cache_key = (str(path), st.st_size, st.st_mtime_ns)
    digest = _hashes.get(cache_key)
    if digest is None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = _hashes[cache_key] = h.hexdigest()
    return digest


def _shown(path: Path, spec: str, base: Path, single: bool) -> str:
    if single:
        return spec
    try:
        return path.relative_to(base.absolute()).as_posix()
    except ValueError:
        return str(path)


def _one_file(path: Path, spec: str, origin: str, shown: str) -> LocalFile | str:
    """The LocalFile of one path, or why it cannot be one."""
    try:
        st = path.stat()
    except OSError as e:
        return f"reference {short(spec)}: {path} cannot be read ({e.strerror or e})"
    if not stat.S_ISREG(st.st_mode):
        return f"reference {short(spec)}: {path} is not a regular file"
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return (f"reference {short(spec)}: {path.name} is not an accepted image type "
                f"(the file name must end in {_ACCEPTED})")
    try:
        digest = _sha256(path, st)
    except OSError as e:
        return f"reference {short(spec)}: {path} cannot be read ({e.strerror or e})"
    return LocalFile(LOCAL_PREFIX + digest, path, spec, st.st_size, origin, shown)


def _images_in(paths: list[Path]) -> list[Path]:
    """The images among `paths` (by their name's ending), sorted by name."""
    return sorted((p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()), key=lambda p: p.name)


def resolve_local(spec: str, base: Path, origin: str) -> tuple[list[LocalFile], list[str]]:
    """The images a local reference names (a file, a folder's images, a glob's images), relative
    to `base` unless absolute or under `~`; and every problem, each one line."""
    try:
        return _resolve(spec, base, origin)
    except (OSError, ValueError) as e:  # a NUL in the path, a folder that cannot be listed, ...
        return [], [f"reference {short(spec)} cannot be read ({getattr(e, 'strerror', None) or e})"]


def _resolve(spec: str, base: Path, origin: str) -> tuple[list[LocalFile], list[str]]:
    written = spec[len("file://"):] if spec.lower().startswith("file://") else spec
    written = written[len("file:"):] if written.lower().startswith("file:") else written
    expanded = os.path.expanduser(written)
    single = False
    if any(c in expanded for c in _GLOB_CHARS):
        pattern = expanded if os.path.isabs(expanded) else os.path.join(glob.escape(str(base)), expanded)
        matches = [Path(m) for m in glob.glob(pattern)]
        paths = sorted(_images_in(matches), key=str)
        if not paths:
            what = "matches no file" if not matches else f"matches no {_ACCEPTED} image"
            return [], [f"reference {short(spec)} {what}"]
    else:
        single = True
        path = Path(expanded) if os.path.isabs(expanded) else base / expanded
        if not path.exists():
            return [], [f"reference {short(spec)}: no such file or folder ({path})"]
        if path.is_dir():
            single = False
            paths = _images_in(list(path.iterdir()))
            if not paths:
                return [], [f"reference folder {short(spec)} holds no {_ACCEPTED} image"]
        else:
            paths = [path]
    files: list[LocalFile] = []
    problems: list[str] = []
    for p in paths:
        found = _one_file(p.absolute(), spec, origin, _shown(p.absolute(), spec, base, single))
        if isinstance(found, str):
            problems.append(found)
        else:
            files.append(found)
    return files, problems


def rule_view(references: list[Any]) -> list[Any]:
    """A reference list as the URL rule sees it: each local image stands as a URL (it becomes
    one when it is uploaded), so the count rule still applies."""
    return [f"https://local.invalid/{v[len(LOCAL_PREFIX):]}" if is_local_address(v) else v for v in references]


def local_addresses(references: Any) -> list[str]:
    """The content addresses among a job's references."""
    return [v for v in references or () if is_local_address(v)]


def refuse_local(files: dict[str, LocalFile]) -> None:
    """Refuse to run a batch that uses local images (`files`, by address), before anything is
    spent: uploading them needs a reference store, which is not available yet."""
    if not files:
        return
    first = next(iter(files.values()))
    more = f" ({len(files)} local images in all)" if len(files) > 1 else ""
    raise LocalReferencesNeedStore(
        f"{first.origin}: reference {first.shown} is a local file{more}: running with local references needs a "
        "reference store (--reference-store s3://..., coming next); plan and validate work today")
