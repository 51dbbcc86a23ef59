"""One S3-compatible bucket and prefix through boto3 (AWS S3, Cloudflare R2, Backblaze B2, MinIO,
GCS interoperability): the one client both stores use, its credentials, and its failures.

Credentials come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
or whatever boto3 finds: a profile, an instance role) and are never stored or printed: the client
is asked for the credentials it signs with now each time (a session token is refreshed during a
run), and every one seen is redacted from the little of an error that is shown (its code).

A streamed upload is atomic: the bytes go to a temporary key under `.partial/` (a multipart upload
for large files, one part held in memory at a time) while their SHA-256 is computed, then the
finished object is copied into place with its sha256 and size in its metadata, and checked there.
A process killed mid-way leaves no object under the final name; `clean_partial` removes what it
left (incomplete multipart uploads, temporary objects) once it is old enough to be dead.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from ..errors import StoreError, UsageError
from ..redaction import Secrets

# What an S3 error code looks like (NoSuchBucket, SlowDown, AccessDenied): anything else the store
# puts there (a message, a credential it echoes) is not shown at all.
ERROR_CODE = re.compile(r"[A-Za-z][A-Za-z0-9.]{0,63}")
PART_SIZE = 8 * 1024 * 1024  # S3's smallest part is 5 MiB (but the last)
PARTIAL = ".partial"  # where unfinished uploads live, under the prefix


@dataclass(frozen=True)
class ObjectFacts:
    """What a HEAD or a listing says of one object."""

    size: int
    sha256: str | None  # from its metadata (None: not recorded, or a listing)
    tags: tuple[tuple[str, str], ...] = ()  # the rest of its metadata (a HEAD's), as the upload gave it


class Bucket:
    """A bucket and prefix; `what` names it in messages ("reference store", "output store"), and
    every failure raises `error` (a StoreError), never with a credential in it."""

    def __init__(self, bucket: str, prefix: str, identity: str, *, endpoint: str | None = None,
                 what: str = "store", error: type[StoreError] = StoreError, client: Any | None = None):
        self.bucket, self.prefix, self.identity, self.what, self.error = bucket, prefix, identity, what, error
        self._client, found = (client, _credentials(client)) if client is not None else self._open(endpoint)
        self._seen: tuple[str, ...] = ()
        self._secrets: Secrets | None = None
        self._learn(found)

    # --- credentials -----------------------------------------------------------------------------

    def _open(self, endpoint: str | None) -> tuple[Any, tuple[str, ...]]:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise UsageError(f"the {self.what} needs boto3: pip install 'batcher[s3]'") from None
        # Path-style addresses for endpoints other than AWS: MinIO, R2 and moto expect them.
        config = Config(signature_version="s3v4", retries={"max_attempts": 5, "mode": "standard"},
                        s3={"addressing_style": "path" if endpoint else "auto"})
        try:
            session = boto3.session.Session()
            # The region signs presigned URLs, which AWS refuses for another region: the profile's
            # region counts as it does for the user's other AWS tools.
            region = os.environ.get("AWS_REGION") or session.region_name or "us-east-1"
            client = session.client("s3", endpoint_url=endpoint, region_name=region, config=config)
            found = session.get_credentials()
        except Exception as e:  # a malformed endpoint, an unknown region, a broken profile
            raise self.error(f"cannot open the {self.what} {self.identity}: {type(e).__name__}") from None
        if found is None:
            raise self.error(f"no credentials for the {self.what} {self.identity}: set AWS_ACCESS_KEY_ID and "
                             "AWS_SECRET_ACCESS_KEY (or an AWS profile)")
        return client, _frozen(found)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every credential this bucket has signed with so far (the ones it signs with now first)."""
        return self._seen

    def _learn(self, credentials: tuple[str, ...]) -> None:
        new = tuple(s for s in credentials if s not in self._seen)
        if new:
            self._seen = new + self._seen
            self._secrets = Secrets.of(self._seen)

    def redact(self, text: str) -> str:
        """`text` redacted of every credential seen, those the client signs with now included (a
        refreshed session token): asked for each time, in the worker thread (a refresh may block)."""
        self._learn(_credentials(self._client))
        return self._secrets.redact(text) if self._secrets is not None else text

    # --- objects ---------------------------------------------------------------------------------

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def uri(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.key(name)}"

    async def call(self, fn: Callable[[], Any], what: str) -> Any:
        """Run a boto3 call in a worker thread; any failure becomes one `error`, named by its kind,
        HTTP status and S3 code only (botocore's messages may quote request details), redacted."""
        def guarded() -> tuple[bool, Any]:
            try:
                return True, fn()
            except OSError as e:
                return False, self.redact(f"{what}: {e.strerror or type(e).__name__}")
            except Exception as e:
                status = status_of(e)
                code = code_of(e) if status is not None else None
                detail = f"HTTP {status} {code or ''}".strip() if status is not None else type(e).__name__
                return False, self.redact(f"{what}: {detail}")

        ok, value = await anyio.to_thread.run_sync(guarded)
        if not ok:
            raise self.error(value)
        return value

    async def head(self, name: str) -> ObjectFacts | None:
        """The object's size and recorded sha256, or None when there is none (HEAD, never a GET)."""
        def head() -> ObjectFacts | None:
            try:
                found = self._client.head_object(Bucket=self.bucket, Key=self.key(name))
            except Exception as e:
                # 403: a policy that may write but not list answers HEAD of a missing object so.
                if status_of(e) in (403, 404):
                    return None
                raise
            meta = found.get("Metadata") or {}
            recorded = meta.get("sha256")
            tags = tuple(sorted((str(k), str(v)) for k, v in meta.items() if k not in ("sha256", "size")))
            return ObjectFacts(int(found.get("ContentLength", -1)), recorded if isinstance(recorded, str) else None,
                               tags)
        result: ObjectFacts | None = await self.call(head, f"cannot look up {name} in {self.identity}")
        return result

    async def put(self, name: str, data: bytes, content_type: str, sha256: str) -> None:
        """Put `data` (the very bytes whose hash is `sha256`) under `name`, in one request."""
        def put() -> None:
            self._client.put_object(Bucket=self.bucket, Key=self.key(name), Body=data, ContentType=content_type,
                                    Metadata={"sha256": sha256})
        await self.call(put, f"cannot upload {name} to {self.identity}")

    async def upload(self, name: str, content_type: str, started: float | None = None,
                     may_replace: Callable[[str], bool] | None = None, tags: dict[str, str] | None = None
                     ) -> Upload:
        """An atomic upload to `name`, fed by `Upload.write` (see the module's docstring). The
        temporary key carries `started` (epoch seconds; default now), which `clean_partial` ages.
        An object already under `name` with other bytes is replaced only if `may_replace(name)`
        says so; else the upload goes to `NAME.2.EXT` (the first name free or holding these bytes)."""
        when = int(time.time() if started is None else started)
        temp = f"{PARTIAL}/{name}.{when}.{secrets.token_hex(4)}"
        failed = f"cannot upload {name} to {self.identity}"
        answer = await self.call(lambda: self._client.create_multipart_upload(
            Bucket=self.bucket, Key=self.key(temp), ContentType=content_type), failed)
        upload = Upload(self, name, temp, str(answer["UploadId"]), content_type)
        upload.may_replace = may_replace or (lambda _: False)
        upload.tags = dict(tags or {})
        return upload

    async def stream(self, name: str, chunks: AsyncIterator[bytes], content_type: str,
                     started: float | None = None) -> tuple[int, str]:
        """Upload what `chunks` yields under `name`; the size and sha256 of what was stored.
        Whatever fails, nothing is left under `name`."""
        upload = await self.upload(name, content_type, started)
        try:
            async for chunk in chunks:
                await upload.write(chunk)
        except BaseException:
            await upload.abort()
            raise
        return await upload.finish()

    async def quietly(self, fn: Callable[[], Any]) -> None:
        """A clean-up call whose failure changes nothing (the next run's `clean_partial` retries it)."""
        def call() -> None:
            with contextlib.suppress(Exception):
                fn()
        await anyio.to_thread.run_sync(call)

    async def listing(self, under: str = "") -> dict[str, ObjectFacts]:
        """Name (below the prefix) -> facts of every object under `under` (sizes only: a listing
        carries no metadata), unfinished uploads left out."""
        def walk() -> dict[str, ObjectFacts]:
            found: dict[str, ObjectFacts] = {}
            start = self.key(under) if under else (f"{self.prefix}/" if self.prefix else "")
            strip = len(f"{self.prefix}/") if self.prefix else 0
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
                for item in page.get("Contents") or ():
                    name = str(item["Key"])[strip:]
                    if not name.startswith(f"{PARTIAL}/"):
                        found[name] = ObjectFacts(int(item.get("Size", -1)), None)
            return found
        result: dict[str, ObjectFacts] = await self.call(walk, f"cannot list {self.identity}")
        return result

    def presign(self, name: str, lifetime: float) -> str:
        """A URL that fetches `name` for `lifetime` seconds (signed here: no request is made)."""
        try:
            url: str = self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self.key(name)}, ExpiresIn=int(lifetime))
        except Exception as e:  # credentials that expired and cannot be refreshed, ...
            raise self.error(f"cannot sign a URL for {name} in {self.identity}: {type(e).__name__}") from None
        return url

    async def download(self, name: str, path: Path) -> None:
        """Copy object `name` to the file `path` (boto3 streams it; the caller renames into place)."""
        await self.call(lambda: self._client.download_file(self.bucket, self.key(name), str(path)),
                        f"cannot download {name} from {self.identity}")

    async def reachable(self) -> None:
        """Raise (`error`) unless the bucket is there and answers to these credentials."""
        await self.call(lambda: self._client.head_bucket(Bucket=self.bucket), f"cannot reach the {self.what} "
                                                                              f"{self.identity}")

    async def clean_partial(self, older_than: float, now: float) -> int:
        """Abort the multipart uploads and delete the temporary objects under `.partial/` started
        more than `older_than` seconds before `now` (their process is dead: a live upload of a clip
        takes minutes, not hours); how many were removed."""
        def clean() -> int:
            removed = 0
            start = self.key(PARTIAL) + "/"
            for page in self._client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket,
                                                                                     Prefix=start):
                for item in page.get("Uploads") or ():
                    if now - _started(item["Key"], item["Initiated"]) > older_than:
                        self._client.abort_multipart_upload(Bucket=self.bucket, Key=item["Key"],
                                                            UploadId=item["UploadId"])
                        removed += 1
            for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
                for item in page.get("Contents") or ():
                    if now - _started(item["Key"], item["LastModified"]) > older_than:
                        self._client.delete_object(Bucket=self.bucket, Key=item["Key"])
                        removed += 1
            return removed
        result: int = await self.call(clean, f"cannot clean up unfinished uploads in {self.identity}")
        return result


class Upload:
    """One atomic upload under way: `write` the bytes in order, then `finish` (the object is in
    place, with its sha256 and size) or `abort` (nothing is left). One part is held in memory."""

    # Called once the first bytes are written (the multipart upload is open): where crash tests
    # stop a process mid-upload (`run.failpoints`, step "mid-upload"); nothing otherwise.
    under_way: Callable[[], None] = staticmethod(lambda: None)

    def __init__(self, bucket: Bucket, name: str, temp: str, upload_id: str, content_type: str):
        self.bucket, self.name, self.temp, self.upload_id = bucket, name, temp, upload_id
        self.content_type = content_type
        self.may_replace: Callable[[str], bool] = lambda _: False
        self.tags: dict[str, str] = {}  # more metadata for the object (what it is a clip of)
        self.size = 0
        self._digest = hashlib.sha256()
        self._buffer = bytearray()
        self._parts: list[dict[str, Any]] = []
        self._failed = f"cannot upload {name} to {bucket.identity}"

    async def write(self, chunk: bytes) -> None:
        first = self.size == 0
        self._digest.update(chunk)
        self.size += len(chunk)
        self._buffer += chunk
        if len(self._buffer) >= PART_SIZE:
            await self._part()
        if first and chunk:
            self.under_way()

    async def _part(self) -> None:
        b, number, data = self.bucket, len(self._parts) + 1, bytes(self._buffer)
        answer = await b.call(lambda: b._client.upload_part(
            Bucket=b.bucket, Key=b.key(self.temp), UploadId=self.upload_id, PartNumber=number, Body=data), self._failed)
        self._parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        self._buffer.clear()

    async def finish(self) -> tuple[int, str]:
        """Put the object in place; its size and sha256. On failure nothing is left under its name."""
        b, sha256 = self.bucket, self._digest.hexdigest()
        try:
            if self._buffer or not self._parts:
                await self._part()
            await b.call(lambda: b._client.complete_multipart_upload(
                Bucket=b.bucket, Key=b.key(self.temp), UploadId=self.upload_id,
                MultipartUpload={"Parts": self._parts}), self._failed)
        except BaseException:
            await self.abort()
            raise
        try:
            if await self._placed(sha256):
                return self.size, sha256  # these very bytes are there already: no second copy
            await b.call(lambda: b._client.copy_object(
                Bucket=b.bucket, Key=b.key(self.name), CopySource={"Bucket": b.bucket, "Key": b.key(self.temp)},
                Metadata={**self.tags, "sha256": sha256, "size": str(self.size)}, MetadataDirective="REPLACE",
                ContentType=self.content_type), self._failed)
        finally:
            with anyio.CancelScope(shield=True):
                await b.quietly(lambda: b._client.delete_object(Bucket=b.bucket, Key=b.key(self.temp)))
        return self.size, sha256

    async def _placed(self, sha256: str) -> bool:
        """Settle the final name (`self.name`): the one asked for, unless another object with other
        bytes is there that may not be replaced (another batch's clip sharing the prefix, say):
        then `NAME.2.EXT`, `NAME.3.EXT`, ... Whether the name already holds these bytes."""
        stem, dot, ext = self.name.rpartition(".")
        stem, ext = (stem, f".{ext}") if dot else (self.name, "")
        for n in range(1, 100):
            name = self.name if n == 1 else f"{stem}.{n}{ext}"
            found = await self.bucket.head(name)
            if found is not None and found.size == self.size and found.sha256 == sha256:
                self.name = name
                return True
            if found is None or self.may_replace(name):
                self.name = name
                return False
        raise self.bucket.error(f"{self._failed}: 99 other objects already hold its name's variants")

    async def abort(self) -> None:
        """Drop the upload (shielded: a cancelled download still cleans up after itself)."""
        b = self.bucket
        with anyio.CancelScope(shield=True):
            await b.quietly(lambda: b._client.abort_multipart_upload(
                Bucket=b.bucket, Key=b.key(self.temp), UploadId=self.upload_id))


def _started(key: str, stated: Any) -> float:
    """When a temporary object's upload started: the time its name carries (ours: `stream`), else
    the date the store states (some stores, moto among them, state a fixed one for uploads)."""
    parts = key.rsplit(".", 2)
    if len(parts) == 3 and parts[1].isdigit():
        return float(parts[1])
    return float(stated.timestamp())


def _frozen(credentials: Any) -> tuple[str, ...]:
    frozen = credentials.get_frozen_credentials()
    return tuple(s for s in (frozen.access_key, frozen.secret_key, frozen.token) if isinstance(s, str) and s)


def _credentials(client: Any) -> tuple[str, ...]:
    """The credentials a boto3 client given to us signs with (to redact): none if it cannot say."""
    try:
        found = client._get_credentials()  # botocore's; a stand-in client may have none
        return _frozen(found) if found is not None else ()
    except Exception:
        return ()


def status_of(error: Exception) -> int | None:
    """The HTTP status of a botocore error, when it carries one."""
    response = getattr(error, "response", None)
    if isinstance(response, Mapping):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return status if isinstance(status, int) else None
    return None


def code_of(error: Exception) -> str | None:
    """An S3 error's code, when it has the shape of one."""
    response = getattr(error, "response", None)
    found = response.get("Error", {}) if isinstance(response, Mapping) else None
    code = found.get("Code") if isinstance(found, Mapping) else None
    return code if isinstance(code, str) and ERROR_CODE.fullmatch(code) else None
