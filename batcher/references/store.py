"""Reference stores: where local reference images are uploaded so the API can fetch them by URL
(an S3-compatible bucket through boto3, or the built-in simulator's own store), each image once,
under a name made of its content; and the URL a job's request carries, made when it is sent.

Credentials come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
or whatever boto3 finds: a profile, an instance role) and are never stored or printed: a store's
identity names its endpoint, bucket and prefix only, and its `secrets` are given to the client to
redact from every answer the API brings back (a presigned URL carries the access key id). The
store's own answers are no more trusted: the little of an error it shows (its code) is redacted
of the same secrets, in any encoding, before it becomes a message; the store asks its client for
the credentials it signs with now each time (a session token is refreshed during a run), and
redacts every one it has seen.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol
from urllib.parse import quote

import anyio

from ..errors import ReferenceStoreError, UsageError
from ..redaction import Secrets
from .local import LOCAL_PREFIX, StoreSettings, is_local_address

CONTENT_TYPES = {"JPEG": ("jpg", "image/jpeg"), "PNG": ("png", "image/png"), "WEBP": ("webp", "image/webp")}
# What an S3 error code looks like (NoSuchBucket, SlowDown, AccessDenied): anything else the store
# puts there (a message, a credential it echoes) is not shown at all.
ERROR_CODE = re.compile(r"[A-Za-z][A-Za-z0-9.]{0,63}")


def object_name(address: str, kind: str) -> str:
    """An image's object name inside a store's prefix: its SHA-256 and its type's extension."""
    return f"{address[len(LOCAL_PREFIX):]}.{CONTENT_TYPES[kind][0]}"


class ReferenceStore(Protocol):
    """Where local images are uploaded, and the URLs that fetch them."""

    identity: str

    @property
    def secrets(self) -> tuple[str, ...]:
        """The credentials to redact wherever text from outside may quote them."""

    async def holds(self, name: str, size: int, sha256: str) -> bool:
        """Whether the store already has object `name` with these bytes (HEAD, never a download):
        its size, and the sha256 recorded with it when there is one."""

    async def upload(self, name: str, data: bytes, kind: str, sha256: str) -> None:
        """Put `data` (the very bytes whose hash names it) under `name`."""

    def url_for(self, name: str) -> str:
        """A URL the API can fetch `name` from, made now (a signed one lives `url_lifetime`)."""


class S3Store:
    """An S3-compatible bucket (AWS S3, Cloudflare R2, Backblaze B2, MinIO, GCS interoperability)
    through boto3, which signs every request and URL (SigV4); its calls run in worker threads."""

    def __init__(self, settings: StoreSettings, client: Any | None = None):
        self.settings = settings
        self.identity = settings.identity(os.environ)
        self._client, found = (client, _credentials(client)) if client is not None else _boto3_client(settings)
        self._seen: tuple[str, ...] = ()
        self._secrets: Secrets | None = None
        self._learn(found)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every credential this store has signed with so far (the ones it signs with now first)."""
        return self._seen

    def _learn(self, credentials: tuple[str, ...]) -> None:
        new = tuple(s for s in credentials if s not in self._seen)
        if new:
            self._seen = new + self._seen
            self._secrets = Secrets.of(self._seen)

    def _redact(self, text: str) -> str:
        """`text` redacted of every credential seen, those the client signs with now included (a
        refreshed session token): asked for each time, in the worker thread (a refresh may block)."""
        self._learn(_credentials(self._client))
        return self._secrets.redact(text) if self._secrets is not None else text

    def _key(self, name: str) -> str:
        return f"{self.settings.prefix}/{name}" if self.settings.prefix else name

    async def holds(self, name: str, size: int, sha256: str) -> bool:
        def head() -> bool:
            try:
                found = self._client.head_object(Bucket=self.settings.bucket, Key=self._key(name))
            except Exception as e:
                # 403: a policy that may write but not list answers HEAD of a missing object so.
                if _status_of(e) in (403, 404):
                    return False
                raise
            recorded = (found.get("Metadata") or {}).get("sha256")
            return int(found.get("ContentLength", -1)) == size and recorded in (None, sha256)
        return await _mapped(head, f"cannot look up {name} in {self.identity}", self._redact)

    async def upload(self, name: str, data: bytes, kind: str, sha256: str) -> None:
        def put() -> None:
            self._client.put_object(Bucket=self.settings.bucket, Key=self._key(name), Body=data,
                                    ContentType=CONTENT_TYPES[kind][1], Metadata={"sha256": sha256})
        await _mapped(put, f"cannot upload {name} to {self.identity}", self._redact)

    def url_for(self, name: str) -> str:
        if self.settings.public_url:
            return f"{self.settings.public_url.rstrip('/')}/{quote(name)}"
        try:
            url: str = self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.settings.bucket, "Key": self._key(name)},
                ExpiresIn=int(self.settings.url_lifetime))
        except Exception as e:  # credentials that expired and cannot be refreshed, ...
            raise ReferenceStoreError(f"cannot sign a URL for {name} in {self.identity}: {type(e).__name__}"
                                      ) from None
        return url


def _boto3_client(settings: StoreSettings) -> tuple[Any, tuple[str, ...]]:
    """A boto3 S3 client for `settings`, and the credentials it found (to redact everywhere)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise UsageError("a reference store needs boto3: pip install 'batcher[s3]'") from None
    endpoint = settings.resolved_endpoint(os.environ)
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
        raise ReferenceStoreError(f"cannot open the reference store {settings.identity(os.environ)}: "
                                  f"{type(e).__name__}") from None
    if found is None:
        raise ReferenceStoreError(f"no credentials for the reference store {settings.identity(os.environ)}: set "
                                  "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or an AWS profile)")
    return client, _frozen(found)


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


def _status_of(error: Exception) -> int | None:
    response = getattr(error, "response", None)
    if isinstance(response, Mapping):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return status if isinstance(status, int) else None
    return None


def _code_of(error: Exception) -> str | None:
    """An S3 error's code, when it has the shape of one."""
    response = getattr(error, "response", None)
    found = response.get("Error", {}) if isinstance(response, Mapping) else None
    code = found.get("Code") if isinstance(found, Mapping) else None
    return code if isinstance(code, str) and ERROR_CODE.fullmatch(code) else None


async def _mapped(call: Callable[[], Any], what: str, redact: Callable[[str], str]) -> Any:
    """Run a boto3 call in a thread; any failure of it becomes one ReferenceStoreError, named by
    its kind, HTTP status and code only (botocore's messages may quote request details), and even
    those `redact`ed, in the same thread: a store may echo a credential in its error code."""
    def guarded() -> tuple[bool, Any]:
        try:
            return True, call()
        except OSError as e:
            return False, redact(f"{what}: {e.strerror or type(e).__name__}")
        except Exception as e:
            status = _status_of(e)
            code = _code_of(e) if status is not None else None
            detail = f"HTTP {status} {code or ''}".strip() if status is not None else type(e).__name__
            return False, redact(f"{what}: {detail}")

    ok, value = await anyio.to_thread.run_sync(guarded)
    if not ok:
        raise ReferenceStoreError(value)
    return value


class SimulatedStore:
    """The built-in simulator's own store, for simulated runs: objects kept by the simulator and
    served at `/_sim/uploads/<name>` of the API's base URL."""

    secrets: tuple[str, ...] = ()

    def __init__(self, simulator: Any, base_url: str):
        self.simulator = simulator
        self.base_url = base_url.rstrip("/")
        self.identity = "simulator"

    async def holds(self, name: str, size: int, sha256: str) -> bool:
        found: int | None = self.simulator.upload_size(name)
        return found == size

    async def upload(self, name: str, data: bytes, kind: str, sha256: str) -> None:
        await anyio.to_thread.run_sync(self.simulator.put_upload, name, data)  # it may write a file

    def url_for(self, name: str) -> str:
        return f"{self.base_url}/_sim/uploads/{name}"


def with_urls(value: Any, url_of: Callable[[str], str]) -> Any:
    """A request body with every local image's address replaced by its URL (`url_of`)."""
    if is_local_address(value):
        return url_of(value)
    if isinstance(value, list):
        return [with_urls(v, url_of) for v in value]
    if isinstance(value, dict):
        return {k: with_urls(v, url_of) for k, v in value.items()}
    return value


def placeholder_url(address: str) -> str:
    """A stand-in URL for a local image where only its shape matters (a schema's rules)."""
    return f"https://local.invalid/{address[len(LOCAL_PREFIX):]}"
