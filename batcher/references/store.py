"""Reference stores: where local reference images are uploaded so the API can fetch them by URL
(an S3-compatible bucket through boto3, or the built-in simulator's own store), each image once,
under a name made of its content; and the URL a job's request carries, made when it is sent.

Credentials follow `storage.s3`'s rule (from the environment, never stored or printed): a store's
identity names its endpoint, bucket and prefix only, and its `secrets` are given to the client to
redact from every answer the API brings back (a presigned URL carries the access key id).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import quote

import anyio

from ..errors import ReferenceStoreError
from ..storage import Bucket
from .local import LOCAL_PREFIX, StoreSettings, is_local_address

CONTENT_TYPES = {"JPEG": ("jpg", "image/jpeg"), "PNG": ("png", "image/png"), "WEBP": ("webp", "image/webp")}


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
    """An S3-compatible bucket (`storage.Bucket`, through boto3, which signs every request and URL)."""

    def __init__(self, settings: StoreSettings, client: Any | None = None):
        self.settings = settings
        self.identity = settings.identity(os.environ)
        self.bucket = Bucket(settings.bucket, settings.prefix, self.identity,
                             endpoint=None if client is not None else settings.resolved_endpoint(os.environ),
                             what="reference store", error=ReferenceStoreError, client=client)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every credential this store has signed with so far (the ones it signs with now first)."""
        return self.bucket.secrets

    async def holds(self, name: str, size: int, sha256: str) -> bool:
        found = await self.bucket.head(name)
        return found is not None and found.size == size and found.sha256 in (None, sha256)

    async def upload(self, name: str, data: bytes, kind: str, sha256: str) -> None:
        await self.bucket.put(name, data, CONTENT_TYPES[kind][1], sha256)

    def url_for(self, name: str) -> str:
        if self.settings.public_url:
            return f"{self.settings.public_url.rstrip('/')}/{quote(name)}"
        return self.bucket.presign(name, self.settings.url_lifetime)


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
