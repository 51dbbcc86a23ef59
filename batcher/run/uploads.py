"""Local reference images made ready before the first submission, and their URLs at each one.

Before anything is spent, every distinct local image of the batch's pending jobs is read again
from where the ledger last saw it (it must still hold the content its address names), held to the
model's rules (preflight), and put in the reference store unless the store has it already (a
HEAD, not the ledger's word: objects may be deleted by a lifecycle rule). Every problem is
reported at once and nothing is submitted. At each submission the addresses in the request
become URLs made then, so an overnight batch never sends an expired one."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from ..errors import PreflightFailed, ReferenceStoreError
from ..ledger import LocalImage, StoredImage
from ..localrefs import LOCAL_PREFIX, local_addresses, refuse_without_store
from ..preflight import HEAD_BYTES, Outcome, check_local_file, image_kind
from ..refstore import ReferenceStore, object_name
from .context import RunContext
from .startup import pending_pages

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


async def _addresses_in_use(ctx: RunContext) -> dict[str, str]:
    """Each local address of the batch's pending jobs, with the FILE:LINE of its first job."""
    uses: dict[str, str] = {}
    async for page in pending_pages(ctx):
        for job in page:
            for value in job.parameters().values():
                if isinstance(value, list):
                    for address in local_addresses(value):
                        uses.setdefault(address, job.origin)
    return uses


def _read_again(address: str, image: LocalImage | None, check_rules: bool) -> tuple[str, str] | str:
    """(kind, sha256) of a local image, read again from where it was last seen; or why not."""
    if image is None:
        return "the ledger does not know where this local image is on this host: run from its manifest again"
    path = Path(image.path)
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
            digest.update(head)
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if LOCAL_PREFIX + digest.hexdigest() != address:
        return "changed since the batch was planned: run from its manifest again to plan the new content"
    kind = image_kind(head)
    if kind is None:
        return "not a JPEG, PNG or WEBP image"
    if check_rules:
        verdict = check_local_file(path)
        if verdict.outcome is not Outcome.OK:
            return verdict.detail or "refused"
    return kind, digest.hexdigest()


async def upload_local_images(ctx: RunContext, store: ReferenceStore | None) -> UploadReport:
    """Make every local image of the pending jobs fetchable by the API (see the module's words).
    Raises LocalReferencesNeedStore (no store), PreflightFailed (every unreadable, changed or
    refused image, FILE:LINE each) or ReferenceStoreError (the store failed us)."""
    report = UploadReport()
    uses = await _addresses_in_use(ctx)
    if not uses:
        return report
    if store is None:
        address, origin = next(iter(uses.items()))
        refuse_without_store(origin, f"sha256:{address[len(LOCAL_PREFIX):][:12]}...", len(uses))
    report.images = len(uses)
    known = await ctx.threads.run(ctx.ledger.local_images, list(uses))
    ready: dict[str, tuple[LocalImage, str, str]] = {}
    errors: list[str] = []
    for address, origin in uses.items():
        image = known.get(address)
        found = await ctx.threads.run(_read_again, address, image, ctx.options.preflight)
        if isinstance(found, str):
            shown = image.path if image else f"sha256:{address[len(LOCAL_PREFIX):][:12]}..."
            errors.append(f"{image.origin if image else origin}: reference {shown}: {found}")
        else:
            assert image is not None
            ready[address] = (image, *found)
    if errors:
        raise PreflightFailed(errors)
    assert store is not None
    records: list[StoredImage] = []

    async def one(address: str, image: LocalImage, kind: str, sha256: str, limiter: anyio.CapacityLimiter) -> None:
        name = object_name(address, kind)
        async with limiter:
            present = await store.holds(name, image.size)
            if not present:
                await store.upload(name, Path(image.path), kind, sha256)
                report.uploaded += 1
                report.uploaded_bytes += image.size
            else:
                report.already_stored += 1
        report.names[address] = name
        records.append(StoredImage(store.identity, address, name, image.size, not present, ctx.wall()))

    limiter = anyio.CapacityLimiter(PARALLEL_UPLOADS)
    try:
        async with anyio.create_task_group() as tg:
            for address, (image, kind, sha256) in ready.items():
                tg.start_soon(one, address, image, kind, sha256, limiter, name=f"upload-{address[-8:]}")
    finally:
        with anyio.CancelScope(shield=True):
            await ctx.threads.run(ctx.ledger.remember_stored, records)  # what did land is known, even on failure
    return report


def url_of(ctx: RunContext, store: ReferenceStore | None, address: str) -> str:
    """The URL of a local image for a request sent now. An image the start of this run did not
    see (another runner added its job since) is looked up in the ledger."""
    name = ctx.image_names.get(address)
    if name is None and store is not None:
        stored = ctx.ledger.stored_images(store.identity, [address]).get(address)
        if stored is not None:
            name = ctx.image_names[address] = stored.object_key
    if name is None or store is None:
        raise ReferenceStoreError(f"local reference image {address[len(LOCAL_PREFIX):][:12]}... is not in the "
                                  "reference store (its job was added after this run started): run again")
    return store.url_for(name)
