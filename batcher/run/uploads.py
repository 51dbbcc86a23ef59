"""Local reference images made ready before the first submission, and their URLs at each one.

Before anything is spent, every distinct local image of the batch's jobs that may be sent this run
(pending, or submitted and so perhaps sent again after a refunded failure) is read again from where
this host last saw it (it must still hold the content its address names), held to the model's rules
(preflight), and put in the reference store unless the store has it already (a HEAD, not the
ledger's word: objects may be deleted by a lifecycle rule). The bytes uploaded are the bytes just
hashed, never a file read twice. Every problem is reported at once and nothing is submitted. At
each submission the addresses in the request become URLs made then, so an overnight batch never
sends an expired one; an image this run has not seen yet (another runner added its job) is made
ready then, the same way. What the store says when it fails is the store's text: it goes through
the client's redaction (the key, the store's credentials, in any encoding) before it becomes a
message, a log line or a job's event."""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from ..client import Outcome, check_local_file, check_url
from ..errors import PreflightFailed, ReferenceStoreError
from ..ledger import LocalImage, StoredImage
from ..references import (
    LOCAL_PREFIX,
    MAX_BYTES,
    ReferenceStore,
    image_kind,
    local_addresses,
    object_name,
    refuse_without_store,
    with_urls,
)
from .context import RunContext

log = logging.getLogger("batcher.uploads")
PARALLEL_UPLOADS = 8


@dataclass
class UploadReport:
    """What the start of a run did with the batch's local images."""

    images: int = 0
    uploaded: int = 0
    uploaded_bytes: int = 0
    already_stored: int = 0
    names: dict[str, str] = field(default_factory=dict)  # address -> object name in the store

    def summary(self) -> str | None:
        if not self.images:
            return None
        return (f"{self.images} local reference image(s): {self.uploaded} uploaded "
                f"({self.uploaded_bytes / 1024 / 1024:.1f} MB), {self.already_stored} already in the store")


def read_image(path: Path) -> bytes:
    """A local image's bytes, read once: a regular file (never a FIFO or device, which could block
    or never end), at most what the model accepts plus one byte. Raises OSError or ValueError."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_BYTES + 1)
    finally:
        os.close(fd)
    return data


def _checked(address: str, image: LocalImage | None, check_rules: bool) -> tuple[str, bytes] | str:
    """(kind, bytes) of a local image, read again from where it was last seen; or why not."""
    if image is None:
        return "the ledger does not know where this local image is on this host: run from its manifest again"
    try:
        data = read_image(Path(image.path))
    except (OSError, ValueError) as e:
        return f"cannot be read ({getattr(e, 'strerror', None) or e})"
    if len(data) > MAX_BYTES:
        return f"over the {MAX_BYTES // 1024 // 1024} MB the model accepts"
    if LOCAL_PREFIX + hashlib.sha256(data).hexdigest() != address:
        return "changed since the batch was planned: run from its manifest again to plan the new content"
    kind = image_kind(data[:64])
    if kind is None:
        return "not a JPEG, PNG or WEBP image"
    if check_rules:
        verdict = check_local_file(Path(image.path))
        if verdict.outcome is not Outcome.OK:
            return verdict.detail or "refused"
    return kind, data


def _redacted(ctx: RunContext, error: ReferenceStoreError) -> ReferenceStoreError:
    return ReferenceStoreError(ctx.client.redact(str(error)))


async def _ensure(ctx: RunContext, store: ReferenceStore, address: str, kind: str, data: bytes,
                  report: UploadReport) -> StoredImage:
    """Put one checked image in the store unless it holds it already."""
    name = object_name(address, kind)
    sha256 = address[len(LOCAL_PREFIX):]
    try:
        present = await store.holds(name, len(data), sha256)
        if not present:
            await store.upload(name, data, kind, sha256)
    except ReferenceStoreError as e:
        raise _redacted(ctx, e) from None
    if not present:
        report.uploaded += 1
        report.uploaded_bytes += len(data)
    else:
        report.already_stored += 1
    report.names[address] = name
    return StoredImage(store.identity, address, name, len(data), not present, ctx.wall())


async def upload_local_images(ctx: RunContext, store: ReferenceStore | None, uses: dict[str, str]
                              ) -> UploadReport:
    """Make every local image of the jobs that may be sent (`uses`: address -> where it is
    written; see `startup.survey`) fetchable by the API (see the module's words). Raises
    LocalReferencesNeedStore (no store), PreflightFailed (every unreadable, changed or refused
    image, FILE:LINE each) or ReferenceStoreError (the store failed us)."""
    report = UploadReport()
    if not uses:
        return report
    if store is None:
        address, origin = next(iter(uses.items()))
        refuse_without_store(origin, f"sha256:{address[len(LOCAL_PREFIX):][:12]}...", len(uses))
    assert store is not None
    report.images = len(uses)
    known = await ctx.threads.run(ctx.ledger.local_images, list(uses))
    limiter = anyio.CapacityLimiter(PARALLEL_UPLOADS)
    errors: list[str] = []
    records: list[StoredImage] = []

    async def check(address: str, origin: str) -> None:
        image = known.get(address)
        async with limiter:  # (the bytes are dropped: a thousand images are not held at once)
            found = await anyio.to_thread.run_sync(_checked, address, image, ctx.options.preflight)
        if isinstance(found, str):
            shown = image.path if image else f"sha256:{address[len(LOCAL_PREFIX):][:12]}..."
            errors.append(f"{image.origin if image else origin}: reference {shown}: {found}")

    async def upload(address: str) -> None:
        async with limiter:
            found = await anyio.to_thread.run_sync(_checked, address, known.get(address), False)
            if isinstance(found, str):  # changed in the last seconds: nothing of it is sent
                raise ReferenceStoreError(f"{known[address].path}: {found}")
            records.append(await _ensure(ctx, store, address, *found, report))

    # Every image is checked before any is uploaded: a refused one costs no upload either.
    async with anyio.create_task_group() as tg:
        for address, origin in uses.items():
            tg.start_soon(check, address, origin, name=f"check-{address[-8:]}")
    if errors:
        raise PreflightFailed(sorted(errors))
    try:
        async with anyio.create_task_group() as tg:
            for address in uses:
                tg.start_soon(upload, address, name=f"upload-{address[-8:]}")
    finally:
        with anyio.CancelScope(shield=True):
            await ctx.threads.run(ctx.ledger.write, ctx.ledger.remember_stored(records))  # what landed is known
    await _check_public_urls(ctx, store, report, known)
    return report


async def _check_public_urls(ctx: RunContext, store: ReferenceStore, report: UploadReport,
                             known: dict[str, LocalImage]) -> None:
    """A public bucket's URLs are fetched as the API will fetch them: a wrong public base URL is
    found before anything is spent, not job by job."""
    if not getattr(getattr(store, "settings", None), "public_url", None):
        return
    errors: list[str] = []
    for address, name in report.names.items():
        url = store.url_for(name)
        verdict = await check_url(ctx.client, url, None)
        if verdict.outcome is Outcome.ERROR:
            image = known.get(address)
            errors.append(f"{image.origin if image else ctx.batch}: reference {url}: {verdict.detail} (the public "
                          f"URL of {image.path if image else address})")
    if errors:
        raise PreflightFailed(errors)


async def with_local_urls(ctx: RunContext, store: ReferenceStore | None, wire: dict[str, Any]) -> dict[str, Any]:
    """A request body with each local image's address replaced by a URL made now. An image the
    start of this run did not make ready (another runner added its job since) is made ready
    first. Raises ReferenceStoreError when it cannot be."""
    addresses = [a for v in wire.values() if isinstance(v, list) for a in local_addresses(v)]
    if not addresses:
        return wire
    if store is None:
        raise ReferenceStoreError("this job's local images have no reference store to be uploaded to")
    missing = [a for a in addresses if a not in ctx.image_names]
    if missing:
        known = await ctx.threads.run(ctx.ledger.local_images, missing)
        report = UploadReport()
        records = []
        for address in missing:
            found = await ctx.threads.run(_checked, address, known.get(address), ctx.options.preflight)
            if isinstance(found, str):
                raise ReferenceStoreError(f"local reference sha256:{address[len(LOCAL_PREFIX):][:12]}...: {found}")
            records.append(await _ensure(ctx, store, address, *found, report))
        await ctx.threads.run(ctx.ledger.write, ctx.ledger.remember_stored(records))
        ctx.image_names.update(report.names)
    try:
        body: dict[str, Any] = with_urls(wire, lambda a: store.url_for(ctx.image_names[a]))
        return body
    except ReferenceStoreError as e:
        raise _redacted(ctx, e) from None
