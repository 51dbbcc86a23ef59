"""Clips in a bucket the user owns (`--out s3://BUCKET/PREFIX`): the output store, on the same
client, credentials rule and redaction as the reference store (`storage.s3.Bucket`).

Each clip is streamed from the API's URL into the bucket under the name it would have on disk
(`files.video_name`), with its sha256 and size in the object's metadata; it counts only once a
HEAD finds that object with the size and hash the download measured. A rerun checks completed
clips with one listing of the prefix (sizes), or with a HEAD each (`--verify full`: sizes and
recorded hashes). The ledger records a clip as its `s3://` URI, so any host that reaches the
ledger and the bucket can export it, presign it or fetch it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from ..errors import OutputStoreError, UsageError
from ..references.local import StoreSettings
from ..storage import Bucket, ObjectFacts
from ..storage.s3 import Upload
from .files import Found

# How old an unfinished upload must be before a run removes it: a live one of a clip takes
# minutes; one this old belongs to a process that died (kill -9, a lost host).
STALE_UPLOAD_SECONDS = 6 * 3600.0
HEADS_AT_ONCE = 16  # a full check's HEADs in flight (each in a worker thread: boto3 blocks)


def is_bucket_address(out: str | Path) -> bool:
    """Whether `--out` names a bucket (s3://...) rather than a folder."""
    return str(out).startswith("s3://")


def names_clip(location: str, key: str) -> bool:
    """Whether `location` (from the ledger: hostile until checked) is an s3:// URI of job `key`'s
    clip as a run names it (`label_tN_KEY.mp4`, or `.N.mp4` beside another's): exports sign and
    fetch nothing else with the user's credentials."""
    name = location.rsplit("/", 1)[-1]
    stem = name.removesuffix(".mp4")
    stem = stem.rsplit(".", 1)[0] if stem.rsplit(".", 1)[-1].isdigit() else stem
    return (is_bucket_address(location) and name.endswith(".mp4") and bool(key) and stem.endswith(f"_{key}")
            and ".." not in location and "/." not in location)


@dataclass(frozen=True)
class Checked:
    """A completed clip found again: there as recorded, or why not."""

    location: str
    found: Found

    @property
    def ok(self) -> bool:
        return self.found is Found.THERE

    @property
    def why(self) -> str:
        return self.found.value


class BucketOutputs:
    """The output store of one batch: a bucket and prefix."""

    def __init__(self, url: str, endpoint: str | None = None, client: Any | None = None):
        self.settings = StoreSettings.of(url, endpoint=endpoint, what="output store")
        self.identity = self.settings.identity(os.environ)
        self.bucket = Bucket(self.settings.bucket, self.settings.prefix, self.identity,
                             endpoint=None if client is not None else self.settings.resolved_endpoint(os.environ),
                             what="output store", error=OutputStoreError, client=client)

    @property
    def secrets(self) -> tuple[str, ...]:
        return self.bucket.secrets

    def location(self, name: str) -> str:
        """What the ledger records for the clip `name`: its s3:// URI."""
        return self.bucket.uri(name)

    def name_of(self, location: str) -> str | None:
        """The clip's name below the prefix for a location this store made (None: not one of ours)."""
        start = self.bucket.uri("")
        if not location.startswith(start) or location == start:
            return None
        name = location[len(start):]
        return name if "/" not in name and not name.startswith(".") else None

    async def sink(self, name: str, started: float | None = None, own: str | None = None,
                   remote_job_id: str | None = None) -> Upload:
        """Where a download streams to: an atomic upload to `name` (or beside it: `Upload.name` says
        where it went); `own`: the location this job recorded before, which it may replace; the
        object records the API's job id it is the clip of (`stored_clip` finds it by that)."""
        return await self.bucket.upload(name, "video/mp4", started,
                                        may_replace=lambda n: own is not None and self.location(n) == own,
                                        tags={"remote-job-id": remote_job_id} if remote_job_id else None)

    async def stored_clip(self, name: str, remote_job_id: str) -> tuple[str, ObjectFacts] | None:
        """The clip of the API's job `remote_job_id` if an upload already put it under `name` (or a
        `NAME.N.mp4` beside it) with its hash: a run killed after the upload and before its ledger
        write finds it here, rather than downloading it again (or, its URL lapsed, losing it)."""
        stem = name.removesuffix(".mp4")
        for candidate in (name, *(f"{stem}.{n}.mp4" for n in range(2, 10))):
            found = await self.bucket.head(candidate)
            if found is None:
                return None
            if found.sha256 and ("remote-job-id", remote_job_id) in found.tags:
                return candidate, found
        return None

    async def holds(self, name: str, size: int, sha256: str) -> bool:
        """Whether the object is in place with exactly this size and recorded sha256 (a HEAD)."""
        found = await self.bucket.head(name)
        return found is not None and found.size == size and found.sha256 == sha256

    async def check(self, completed: list[tuple[str, int | None, str | None]], full: bool) -> list[Checked]:
        """Completed clips as the ledger has them (location, size, sha256), found again: by one
        listing (sizes) or, `full`, by a HEAD each (sizes and recorded hashes; HEADS_AT_ONCE at a
        time)."""
        listed: dict[str, ObjectFacts] = {} if full else await self.bucket.listing()
        heads: dict[str, ObjectFacts | None] = {}
        if full:
            limiter = anyio.CapacityLimiter(HEADS_AT_ONCE)

            async def head(name: str) -> None:
                async with limiter:
                    heads[name] = await self.bucket.head(name)
            async with anyio.create_task_group() as tasks:
                for wanted in {n for n in (self.name_of(c[0]) for c in completed) if n is not None}:
                    tasks.start_soon(head, wanted)
        out = []
        for location, size, sha256 in completed:
            name = self.name_of(location)
            if name is None:
                out.append(Checked(location, Found.FOREIGN))
                continue
            facts = heads.get(name) if full else listed.get(name)
            if facts is None:
                out.append(Checked(location, Found.GONE))
            elif facts.size != size or (full and facts.sha256 != sha256):
                out.append(Checked(location, Found.CHANGED))
            else:
                out.append(Checked(location, Found.THERE))
        return out

    async def clean(self, now: float) -> int:
        """Before a run: the bucket is there (else OutputStoreError, before anything is sent), and
        what killed uploads left is removed (`storage.s3.Bucket.clean_partial`)."""
        await self.bucket.reachable()
        return await self.bucket.clean_partial(STALE_UPLOAD_SECONDS, now)

    async def fetch(self, location: str, path: Path) -> None:
        """The clip at `location` copied to the file `path` (for a dataset folder on another host)."""
        await self.bucket.download(self._ours(location), path)

    def _ours(self, location: str) -> str:
        """The name of a clip this store holds (OutputStoreError for any other location)."""
        name = self.name_of(location)
        if name is None:
            raise OutputStoreError(f"{location[:80]} is not a clip of the output store {self.identity}")
        return name

    def presign(self, location: str, lifetime: float) -> str:
        """An HTTPS URL that plays the clip for `lifetime` seconds. It names the access key id (as
        every presigned URL does) but never a secret: a URL that would carry a session token
        (temporary credentials, AWS_SESSION_TOKEN) is refused, since it would go into files."""
        url = self.bucket.presign(self._ours(location), lifetime)
        if "x-amz-security-token=" in url.lower():
            raise OutputStoreError(f"cannot presign clips of {self.identity} with temporary credentials: the URL "
                                   "would carry the session token (AWS_SESSION_TOKEN); use long-lived keys, or "
                                   "export s3:// URIs without presigning")
        return url


class ClipStores:
    """The output stores a ledger's clips are in, each opened once, from the clips' own locations
    (`s3://BUCKET/PREFIX/NAME`): an export or a gallery on any host finds them with the
    environment's credentials and endpoint (AWS_*), as the run did."""

    def __init__(self) -> None:
        self._stores: dict[str, BucketOutputs] = {}

    def of(self, location: str) -> BucketOutputs:
        """The output store holding the clip at `location` (an s3:// URI)."""
        home = location.rsplit("/", 1)[0]
        if home not in self._stores:
            try:
                self._stores[home] = BucketOutputs(home)
            except UsageError as e:  # a location the ledger holds that names no bucket we can open
                raise OutputStoreError(str(e)) from None
        return self._stores[home]

    def presign(self, location: str, lifetime: float) -> str:
        return self.of(location).presign(location, lifetime)

    async def fetch(self, location: str, path: Path) -> None:
        await self.of(location).fetch(location, path)
