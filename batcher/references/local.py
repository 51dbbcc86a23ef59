"""Local reference images: a file, a folder (its images, sorted by name) or a glob, written in a
manifest beside URLs and set names, resolved relative to the manifest's folder; and the settings
of the store they are uploaded to (`StoreSettings`).

A local image enters a job's request as its content address, `local:sha256:<hex>`, never as its
path: renaming or moving a file changes no job key, editing it changes the keys of the jobs
that use it and no others. Each file is read once per process for a given (path, size,
modification time): its SHA-256 is cached.
"""

from __future__ import annotations

import glob
import hashlib
import math
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import LocalReferencesNeedStore, UsageError
from ..text import short
from .facts import HEAD_BYTES, judge_image

LOCAL_PREFIX = "local:sha256:"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
_ACCEPTED = ", ".join(IMAGE_SUFFIXES)
_GLOB_CHARS = ("*", "?", "[")
# Anything that reads as a path rather than a set name (a set name never needs a slash).
_PATHLIKE_SUFFIXES = (*IMAGE_SUFFIXES, ".gif", ".bmp", ".tif", ".tiff", ".avif", ".heic")

_hashes: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256 hex
_refusals: dict[tuple[str, int, int], str | None] = {}  # (path, size, mtime_ns) -> why the rules refuse it


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
        refused = _refusal(path, st)
        if refused is not None:
            return f"reference {shown}: {refused}"
        digest = _sha256(path, st)
    except OSError as e:
        return f"reference {short(spec)}: {path} cannot be read ({e.strerror or e})"
    return LocalFile(LOCAL_PREFIX + digest, path, spec, st.st_size, origin, shown)


def _refusal(path: Path, st: os.stat_result) -> str | None:
    """Why the model would refuse this image (type by its bytes, size, pixels: references.facts),
    or None: read here, offline, so `validate` and a run refuse it before anything is staged."""
    cache_key = (str(path), st.st_size, st.st_mtime_ns)
    if cache_key not in _refusals:
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
        acceptable, detail = judge_image(head, st.st_size)
        _refusals[cache_key] = None if acceptable else detail
    return _refusals[cache_key]


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


def refuse_without_store(origin: str, shown: str, count: int) -> None:
    """Refuse, before anything is spent, a run whose local images (`count`, the first named
    `shown` at `origin`) have no reference store to be uploaded to."""
    more = f" ({count} local images in all)" if count > 1 else ""
    raise LocalReferencesNeedStore(
        f"{origin}: reference {shown} is a local file{more}: the API takes only URLs, so a run needs a reference "
        "store to upload it to: --reference-store s3://BUCKET/PREFIX or reference_store: in the manifest "
        "(plan and validate need none)")


# --- where local images are uploaded --------------------------------------------------------

DEFAULT_URL_LIFETIME = 6 * 3600.0  # long enough for a job queued at the API for hours; a leaked URL dies that day
MAX_URL_LIFETIME = 7 * 24 * 3600.0  # the longest a SigV4 presigned URL may live
MIN_URL_LIFETIME = 60.0
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", re.IGNORECASE)
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_lifetime(text: str | float, what: str = "reference URL lifetime") -> float:
    """A URL lifetime: seconds, or a number with s, m, h or d (`90m`, `6h`, `2d`); `what` names it
    in the UsageError."""
    try:
        if isinstance(text, (int, float)) and not isinstance(text, bool):
            seconds = float(text)
        else:
            found = _DURATION.fullmatch(str(text)[:40])
            if found is None:
                raise UsageError(f"{what} {short(text)} is not a duration (for example 6h, 90m, 3600)")
            seconds = float(found.group(1)) * _UNITS[found.group(2).lower()]
    except OverflowError:
        seconds = math.inf
    if not MIN_URL_LIFETIME <= seconds <= MAX_URL_LIFETIME:
        raise UsageError(f"{what} must be between 1 minute and 7 days, got {short(text)}")
    return seconds


def without_userinfo(url: str) -> str:
    """A URL as it may be shown: no user name or password, no query."""
    scheme, _, rest = url.partition("://")
    netloc, _, path = rest.partition("/")
    return f"{scheme}://{netloc.rpartition('@')[2]}/{path.split('?')[0]}".rstrip("/")


def check_http_url(url: str, what: str) -> str:
    """`url` if it is a plain http(s) URL with a host and a valid port and no credentials in it;
    else UsageError naming `what`."""
    try:
        parts = urlsplit(url.strip())
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # a port out of range, a broken IPv6 address
        parts, port_ok = urlsplit(""), False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise UsageError(f"{what} {short(without_userinfo(url))} is not an http(s) URL with a host")
    if "@" in parts.netloc:
        raise UsageError(f"{what} {short(without_userinfo(url))} carries a user name or password: credentials "
                         "belong in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, never in a URL")
    return url.strip()


@dataclass(frozen=True)
class StoreSettings:
    """Where local images go (or clips: `what` names the store in messages): `s3://bucket/prefix`,
    an endpoint for stores other than AWS, an optional public base URL (the bucket is public: no
    signing) and how long a signed URL lives."""

    url: str
    endpoint: str | None = None
    public_url: str | None = None
    url_lifetime: float = DEFAULT_URL_LIFETIME
    what: str = "reference store"

    @classmethod
    def of(cls, url: str, endpoint: str | None = None, public_url: str | None = None,
           url_lifetime: str | float | None = None, what: str = "reference store") -> StoreSettings:
        """Checked settings (UsageError names what is wrong). Without an endpoint the store's client
        takes AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL from the environment when it opens."""
        parts = urlsplit(url.strip())
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise UsageError(f"{what} {short(url)} is not an s3://BUCKET/PREFIX address")
        if not _BUCKET.fullmatch(parts.netloc) or ".." in parts.netloc:
            raise UsageError(f"{what} bucket {short(parts.netloc)} is not a valid bucket name")
        prefix = parts.path.strip("/")
        if any(p in ("", ".", "..") for p in prefix.split("/")) and prefix:
            raise UsageError(f"{what} prefix {short(prefix)} has an empty, '.' or '..' part")
        if endpoint is not None:
            endpoint = check_http_url(endpoint, f"{what} endpoint")
        if public_url is not None:
            public_url = check_http_url(public_url, "reference public URL")
        lifetime = DEFAULT_URL_LIFETIME if url_lifetime is None else parse_lifetime(url_lifetime)
        return cls(f"s3://{parts.netloc}/{prefix}".rstrip("/"), endpoint, public_url, lifetime, what)

    @property
    def bucket(self) -> str:
        return urlsplit(self.url).netloc

    @property
    def prefix(self) -> str:
        return urlsplit(self.url).path.strip("/")

    def resolved_endpoint(self, environ: Mapping[str, str]) -> str | None:
        """The endpoint given, else the environment's (AWS_ENDPOINT_URL_S3, then AWS_ENDPOINT_URL),
        checked as one given would be."""
        found = self.endpoint or environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL") or None
        return check_http_url(found, f"{self.what} endpoint") if found else None

    def identity(self, environ: Mapping[str, str]) -> str:
        """What the ledger calls this store: endpoint (no credentials), bucket and prefix."""
        endpoint = self.resolved_endpoint(environ)
        return f"{without_userinfo(endpoint) if endpoint else 'aws'} {self.url}"
